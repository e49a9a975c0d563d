import numpy as np
import pytest

from risloc.io.faults import FAULTS, damaged


def arrays():
    rng = np.random.default_rng(0)
    return {"y": rng.standard_normal((3, 4, 2)) + 1j * rng.standard_normal((3, 4, 2)),
            "K": np.array([1, 2, 3]), "system": np.array('{"L": 4}')}


def test_each_fault_does_what_it_says_and_leaves_the_input_alone():
    a = arrays()
    y = a["y"].copy()
    assert "y" not in damaged(a, "y", "drop")
    assert damaged(a, "y", "transpose")["y"].shape == (3, 2, 4)
    assert damaged(a, "y", "real")["y"].dtype.kind == "f"
    assert damaged(a, "y", "string")["y"].dtype.kind == "U"
    assert damaged(a, "system", "string")["system"][()] == "{not json"
    assert damaged(a, "y", "truncate")["y"].shape == (1, 4, 2)
    assert np.isnan(damaged(a, "y", "nan")["y"]).all()
    np.testing.assert_array_equal(a["y"], y)  # a copy is damaged, not the caller's arrays
    assert set(a) == {"y", "K", "system"}


def test_a_fault_that_does_not_apply_leaves_the_dataset_intact():
    a = arrays()
    for fault in ("transpose", "real", "nan"):
        np.testing.assert_array_equal(damaged(a, "K", fault)["K"], a["K"])


def test_unknown_faults_and_fields_are_named():
    with pytest.raises(ValueError, match="unknown fault 'melt'"):
        damaged(arrays(), "y", "melt")
    with pytest.raises(KeyError, match="no dataset 'H'"):
        damaged(arrays(), "H", FAULTS[0])


def test_faults_on_scalars_empty_and_real_datasets():
    # a mutation review: a 0-d dataset truncated (IndexError), an empty one made "text" (a
    # float array) and NaN in a real array (left intact) all passed the tests above
    a = {"system": np.array('{"L": 4}'), "snr_db": np.array([10.0, 20.0]),
         "K": np.zeros(0, dtype=np.int64)}
    assert damaged(a, "system", "truncate")["system"][()] == '{"L": 4}'
    assert damaged(a, "K", "string")["K"].dtype.kind == "U"
    assert np.isnan(damaged(a, "snr_db", "nan")["snr_db"]).all()

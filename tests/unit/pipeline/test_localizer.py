import codecs
import json
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from risloc.config import SceneConfig
from risloc.core.params import Estimates
from risloc.evaluation.metrics import match_sources
from risloc.pipeline import Localizer, read_estimates, write_estimates
from risloc.pipeline.estimates_file import estimate_rows
from risloc.simulation import simulate_range


@pytest.fixture(scope="module")
def scenes(system):
    return simulate_range(0, 4, system, SceneConfig(snr_db=(25.0, 25.0)), seed=1,
                          split="test", K=1)


def test_classical_localizer_finds_sources_and_skips_bad_scenes(system, scenes, caplog):
    y = scenes.y.clone()
    y[2, 3, 1] = complex(math.nan, 0.0)
    H = scenes.H.clone()
    H[3] = 0
    loc = Localizer(system, "classical")
    with caplog.at_level(logging.WARNING, logger="risloc.pipeline.localizer"):
        res = loc.localize(y, H, scenes.codes, scenes.snr_db, K=1)
    # each skipped scene is warned of, by index and reason (a mutation review: the warning
    # dropped passed)
    assert "scene 2 skipped: non-finite values in y" in caplog.text
    assert "scene 3 skipped: " in caplog.text and "all-zero channel" in caplog.text
    assert [i for i, _ in res.bad] == [2, 3]
    assert "non-finite values in y" in res.bad[0][1] and "all-zero channel" in res.bad[1][1]
    est = res.estimates
    assert est.K.tolist() == [1, 1, 0, 0]
    assert bool(torch.isnan(est.azimuth[2:]).all())
    m = match_sources(est[:2], scenes.azimuth[:2], scenes.elevation[:2], scenes.range_m[:2],
                      scenes.K[:2])
    assert float(m.angle_error[m.paired].abs().max()) < math.radians(0.5)


def test_localizer_rejects_bad_shapes_and_methods(system, scenes):
    loc = Localizer(system, "classical")
    with pytest.raises(ValueError, match="M=4"):
        loc.localize(scenes.y[:, :, :4], scenes.H, scenes.codes)
    with pytest.raises(ValueError, match="codes"):
        loc.localize(scenes.y, scenes.H, scenes.codes[:2])
    with pytest.raises(TypeError, match="y must be complex .*got torch.float32"):
        loc.localize(scenes.y.real, scenes.H, scenes.codes)
    with pytest.raises(TypeError, match="y must be complex .*got float32$"):  # NumPy's name
        loc.localize(scenes.y.real.numpy(), scenes.H.numpy(), scenes.codes.numpy())
    # real and imaginary parts stacked on a last axis of 2 are named, as the file reader
    # names them (a new user's review)
    with pytest.raises(TypeError, match=r"got float32 of shape \(\d+, \d+, \d+, 2\): real and "
                                        r"imaginary parts .* y\[\.\.\., 0\] \+ 1j \* y"):
        loc.localize(torch.view_as_real(scenes.y).numpy(), scenes.H, scenes.codes)
    with pytest.raises(TypeError, match=r"y must be complex \(complex64 or complex128\), got "
                                        "torch.complex32"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch: "ComplexHalf support is experimental")
        loc.localize(*(t.to(torch.complex32) for t in (scenes.y, scenes.H, scenes.codes)))
    with pytest.raises(TypeError, match="H is required"):
        loc.localize(scenes.y, None, scenes.codes)
    with pytest.raises(ValueError, match="method"):
        Localizer(system, "magic")
    with pytest.raises(ValueError, match="needs a pipeline"):
        Localizer(system, "learned")
    # the field of view as a dict, as the system may be (a review: AttributeError)
    from risloc.config import FieldOfView

    narrow = {"azimuth_deg": (-30.0, 30.0), "elevation_deg": (-10.0, 10.0), "range_m": (1, 5)}
    assert Localizer(system, "classical", fov=narrow).fov == FieldOfView(**narrow)
    with pytest.raises(ValueError, match=r"fov: unknown field\(s\) \['azimuth'\]"):
        Localizer(system, "classical", fov={"azimuth": (-30, 30)})
    with pytest.raises(TypeError, match="fov must be a FieldOfView, a dict"):
        Localizer(system, "classical", fov=(-30, 30))


def test_numpy_single_scene_and_complex128_give_the_batched_torch_answer(system, scenes):
    loc = Localizer(system, "classical", workers=1)
    ref = loc.localize(scenes.y, scenes.H, scenes.codes, K=1).estimates
    one = loc.localize(scenes.y[1].numpy().astype("complex128"), scenes.H[1].numpy(),
                       scenes.codes[1].numpy(), K=1)
    assert len(one) == 1 and int(one.estimates.K[0]) == 1
    assert abs(float(one.estimates.azimuth[0, 0] - ref.azimuth[1, 0])) < 1e-5
    rec = one.records()
    assert rec[0]["scene"] == 0 and rec[0]["source"] == 0
    # the columns of the estimates CSV, in its order (records' docstring)
    assert list(rec[0]) == ["scene", "source", "azimuth_deg", "elevation_deg", "range_m",
                            "score"]
    assert rec[0]["azimuth_deg"] == pytest.approx(math.degrees(float(ref.azimuth[1, 0])),
                                                  abs=1e-3)
    xyz = one.xyz()
    r = float(ref.range_m[1, 0])
    assert xyz.shape == (1, system.K_max, 3) and math.isclose(
        float((xyz[0, 0] ** 2).sum()) ** 0.5, r, rel_tol=1e-5)
    arr = one.to_numpy()
    assert arr["K"].tolist() == [1] and math.isnan(arr["range_m"][0, 1])


def test_system_is_checked_with_a_tolerance_and_names_the_field(system, scenes):
    loc = Localizer(system, "classical", workers=1)
    c = 299_792_458.0
    same = system.model_copy(update={"wavelength": c / (c / system.wavelength)})
    loc.localize(scenes.y[:1], scenes.H[:1], scenes.codes[:1], system=same)
    near = system.model_copy(update={"wavelength": system.wavelength * (1 + 1e-9)})
    assert near.wavelength != system.wavelength  # (rounding, as 0.1 * 3 for 0.3: passes)
    loc.localize(scenes.y[:1], scenes.H[:1], scenes.codes[:1], system=near)
    other = system.model_dump() | {"wavelength": 0.25}
    with pytest.raises(ValueError, match="wavelength 0.25"):
        loc.localize(scenes.y[:1], scenes.H[:1], scenes.codes[:1], system=other)
    fewer = system.model_copy(update={"K_max": 2})
    res = loc.localize(scenes.y, scenes.H, scenes.codes, system=fewer)
    assert int(res.estimates.K.max()) <= 2
    arrays = res.to_numpy()  # [S, K_max] of the scenes' system, as documented
    assert arrays["azimuth_deg"].shape == (len(scenes.y), 2) and res.xyz().shape[1] == 2
    with pytest.raises(ValueError, match="1..K_max=2"):
        loc.localize(scenes.y, scenes.H, scenes.codes, K=3, system=fewer)
    # a whole-number field (not a float: compared exactly) names itself too, though the
    # scenes' shapes fit the localizer's system (a mutation review: the comparison of
    # non-float fields dropped passed, the scenes localized as of the other system)
    taller = system.model_dump() | {"N_V": system.N_V + 1}
    with pytest.raises(ValueError, match=f"N_V {system.N_V + 1} .localizer: {system.N_V}"):
        loc.localize(scenes.y[:1], scenes.H[:1], scenes.codes[:1], system=taller)


def test_system_in_any_form_a_file_stores_it_and_a_clear_error_otherwise(system, scenes):
    import json

    text = json.dumps(system.model_dump())
    a = Localizer(system, "classical", workers=1)
    ref = a.localize(scenes.y[:1], scenes.H[:1], scenes.codes[:1], K=1).estimates
    for form in (text, text.encode(), np.array(text), system.model_dump()):  # np.load: 0-d
        got = a.localize(scenes.y[:1], scenes.H[:1], scenes.codes[:1], K=1, system=form)
        assert torch.equal(got.estimates.azimuth.nan_to_num(), ref.azimuth.nan_to_num())
    b = Localizer(system.model_dump(), "classical", workers=1)  # a dict: the same localizer
    assert b.system == system
    with pytest.raises(TypeError, match="system must be a SystemConfig, a dict"):
        Localizer(42, "classical")
    with pytest.raises(TypeError, match="must be a SystemConfig, a dict of its fields"):
        a.localize(scenes.y[:1], scenes.H[:1], scenes.codes[:1], system=[1, 2])
    with pytest.raises(ValueError, match="invalid system: M: "):
        a.localize(scenes.y[:1], scenes.H[:1], scenes.codes[:1], system={"M": -1})


def test_a_single_scene_mixed_with_a_batch_is_named(system, scenes):
    loc = Localizer(system, "classical", workers=1)
    with pytest.raises(ValueError, match="have 2, 3 and 3 dimensions: give one scene"):
        loc.localize(scenes.y[0], scenes.H, scenes.codes)


def test_results_handed_out_are_copies(system, scenes):
    y = scenes.y.clone()
    y[1] = math.nan
    res = Localizer(system, "classical", workers=1).localize(y[:2], scenes.H[:2],
                                                            scenes.codes[:2], K=1)
    before = res.records()
    arr = res.to_numpy()
    for name in arr:
        arr[name][...] = 0
    assert res.records() == before and int(res.estimates.K[0]) == 1
    dead = Localizer(system, "classical", workers=1).localize(y[1:2], scenes.H[1:2],
                                                              scenes.codes[1:2])
    assert [i for i, _ in dead.bad] == [0] and "non-finite values in y" in dead.bad[0][1]
    dead.estimates.range_m[0, 0] = 5.0  # every scene bad: the fields are separate tensors
    assert math.isnan(float(dead.estimates.azimuth[0, 0]))


def test_K_and_snr_inputs_are_validated(system, scenes):
    loc = Localizer(system, "classical", workers=1)
    for K, err in ((2.5, ValueError), (7, ValueError), ([1, 2], ValueError), (0, ValueError)):
        with pytest.raises(err):
            loc.localize(scenes.y, scenes.H, scenes.codes, K=K)
    for dtype in (np.uint16, np.uint32, np.uint64, np.int8):  # counts as files store them
        known = loc.localize(scenes.y, scenes.H, scenes.codes, K=np.ones(4, dtype))
        assert known.estimates.K.tolist() == [1, 1, 1, 1]
    with pytest.raises(TypeError, match="integer"):
        loc.localize(scenes.y, scenes.H, scenes.codes, K=np.ones(4, bool))
    with pytest.raises(ValueError, match="one value per scene"):
        loc.localize(scenes.y, scenes.H, scenes.codes, snr_db=[10.0, 20.0])
    # MATLAB's vectors as scipy.io.loadmat returns them, (1, S) or (S, 1): the vector (a
    # review: refused, where the README says loadmat's arrays go in as they come)
    as_vector = loc.localize(scenes.y, scenes.H, scenes.codes, K=np.ones(4)[None, :],
                             snr_db=np.full((4, 1), 10.0))
    plain = loc.localize(scenes.y, scenes.H, scenes.codes, K=1, snr_db=10.0)
    assert as_vector.records() == plain.records()
    with pytest.raises(ValueError, match=r"one value per scene \(4\), got shape \(2, 2\)"):
        loc.localize(scenes.y, scenes.H, scenes.codes, K=np.ones((2, 2)))
    with pytest.raises(TypeError, match="numeric"):
        loc.localize(scenes.y, scenes.H, scenes.codes, snr_db="20")
    for K, says in ((1e20, r"got 1e\+20"), (math.inf, r"got inf"),
                    (math.nan, "whole numbers")):  # named as given, not as an int64 wrap
        with pytest.raises(ValueError, match=says):
            loc.localize(scenes.y, scenes.H, scenes.codes, K=K)
    # K and the SNR as a big-endian file stores them, or from an autograd graph; inputs
    # that require grad (the classical localizer's out= matmuls refused them)
    ref = loc.localize(scenes.y, scenes.H, scenes.codes, K=np.full(4, 2),
                       snr_db=scenes.snr_db.numpy()).estimates
    got = loc.localize(scenes.y.clone().requires_grad_(True), scenes.H, scenes.codes,
                       K=np.full(4, 2, ">i4"), snr_db=scenes.snr_db.numpy().astype(">f4")
                       ).estimates
    assert torch.equal(got.K, ref.K)
    torch.testing.assert_close(got.azimuth, ref.azimuth, rtol=0, atol=0, equal_nan=True)
    got = loc.localize(scenes.y, scenes.H, scenes.codes,
                       K=torch.full((4,), 2.0, requires_grad=True),
                       snr_db=scenes.snr_db.clone().requires_grad_(True)).estimates
    torch.testing.assert_close(got.azimuth, ref.azimuth, rtol=0, atol=0, equal_nan=True)
    # a NaN SNR in one scene leaves the others' SNR in use
    part = scenes.snr_db.clone()
    part[0] = math.nan
    a = loc.localize(scenes.y, scenes.H, scenes.codes, snr_db=part).estimates
    b = loc.localize(scenes.y[1:], scenes.H[1:], scenes.codes[1:], snr_db=scenes.snr_db[1:])
    assert torch.equal(a.K[1:], b.estimates.K)


def test_units_of_y_and_H_do_not_matter_even_at_float32_extremes(system, scenes):
    loc = Localizer(system, "classical", workers=1)
    ref = loc.localize(scenes.y, scenes.H, scenes.codes).estimates
    for y, H in ((scenes.y * 1e-30, scenes.H), (scenes.y, scenes.H * 1e18)):
        est = loc.localize(y, H, scenes.codes).estimates
        assert torch.equal(est.K, ref.K)
        torch.testing.assert_close(est.azimuth, ref.azimuth, atol=1e-4, rtol=0,
                                   equal_nan=True)


def test_one_run_at_a_time_writes_an_estimates_stream(tmp_path, monkeypatch):
    """A second `risloc localize` into a running one's --out (with --resume, it appended the
    same chunks again) is refused while the first holds its .part file; once the first
    stops, --resume continues it."""
    import os

    from risloc.pipeline import estimates_file
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    out, settings = tmp_path / "est.csv", {"inputs": ["a.h5"]}
    first = EstimatesStream(out, settings, COLUMNS)
    first.append("0", 4, [(0, 0, 1.0, 2.0, 3.0, 0.5)])
    for resume in (True, False):
        with pytest.raises(ValueError, match=r"est.csv is being written by another run "
                                             r"\(est.csv.part is locked\)"):
            EstimatesStream(out, settings, COLUMNS, resume=resume)
    first.close()  # e.g. killed, part-way through its next chunk's rows: they are cut off
    with open(out.with_name("est.csv.part"), "a") as torn:  # (a mutation review)
        torn.write("9,0,1.0")
    with EstimatesStream(out, settings, COLUMNS, resume=True) as again:
        assert again.resumed and again.done == {"0": 4}
        again.append("0", 8, [(5, 0, 1.0, 2.0, 3.0, 0.5)])
        part_inode = again.part.stat().st_ino
        real_replace, renamed = os.replace, []  # (and whether the record is there then)
        monkeypatch.setattr(estimates_file.os, "replace", lambda src, dst: renamed.append((
            os.path.basename(src), os.path.basename(dst), again.record.exists()))
            or real_replace(src, dst))
        again.finish()
        monkeypatch.undo()
    # the .part file itself became the output (a rename, atomic; a mutation review: a copy
    # passed) and its record went after it (a mutation review: removed first, a crash
    # between left a .part that the next run started afresh over)
    assert out.stat().st_ino == part_inode and not again.record.exists()
    assert renamed == [("est.csv.part", "est.csv", True)], renamed
    assert [r.split(",")[0] for r in out.read_text().splitlines()[1:]] == ["0", "5"]
    EstimatesStream(out, settings, COLUMNS).finish()  # released: the next run may start
    # --restart killed between cutting the .part file and its new record: a --resume then
    # starts afresh (a review: the old record's counts skipped scenes over NUL bytes)
    first = EstimatesStream(out, settings, COLUMNS)
    first.append("0", 4, [(0, 0, 1.0, 2.0, 3.0, 0.5)])
    first.close()

    def killed(self):
        raise KeyboardInterrupt

    real, EstimatesStream._commit = EstimatesStream._commit, killed
    try:
        with pytest.raises(KeyboardInterrupt):
            EstimatesStream(out, settings, COLUMNS, restart=True)
    finally:
        EstimatesStream._commit = real
    with EstimatesStream(out, settings, COLUMNS, resume=True) as again:
        assert not again.resumed and again.done == {}
        again.finish()
    assert out.read_text().splitlines() == [",".join(COLUMNS)]


def test_an_estimates_stream_starting_as_another_finishes(tmp_path, monkeypatch):
    """Two runs into one --out at once (a review): the second opens .part just after the
    first renamed it to out and before it removed its record. The second then must not
    resume that finished run's record over its own empty .part (it padded it with NUL
    bytes and skipped the counted scenes), nor lock the renamed file instead of .part."""
    import os

    from risloc.pipeline import estimates_file
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    out, settings = tmp_path / "est.csv", {"inputs": ["a.h5"]}
    first = EstimatesStream(out, settings, COLUMNS)
    first.append("0", 4, [(0, 0, 1.0, 2.0, 3.0, 0.5)])
    os.replace(first.part, out)  # finished, but its record not yet removed, when
    first.close()
    first.part.touch()  # the second run's open created .part afresh
    with EstimatesStream(out, settings, COLUMNS, resume=True) as second:
        assert not second.resumed and second.done == {}
        second.append("0", 2, [(1, 0, 1.0, 2.0, 3.0, 0.5)])
        second.close()
    assert b"\0" not in second.part.read_bytes()
    assert second.part.read_text().splitlines()[1:] == ["1,0,1.0,2.0,3.0,0.5"]
    # a .part shorter than its record counts (cut by hand, or another run's) is not
    # padded either: --resume is refused, naming --restart
    with open(second.part, "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match=r"est.csv.part is shorter than its progress "
                                         r"record .*pass --restart"):
        EstimatesStream(out, settings, COLUMNS, resume=True)
    EstimatesStream(out, settings, COLUMNS, restart=True).finish()
    # the first run renames its .part to out between the second's open and its lock: the
    # second locks the new .part, not the file that became out
    real_lock, calls = estimates_file.try_lock, []

    def finishing(fh):
        if not calls:
            os.replace(fh.name, tmp_path / "finished.csv")
            open(fh.name, "a").close()  # a next run's .part at the path
        calls.append(fh.name)
        return real_lock(fh)

    out.with_name("est.csv.progress.json").unlink(missing_ok=True)
    monkeypatch.setattr(estimates_file, "try_lock", finishing)
    with EstimatesStream(out, settings, COLUMNS, restart=True) as third:
        assert len(calls) >= 2
        assert os.fstat(third._held.fileno()).st_ino == third.part.stat().st_ino
        third.finish()


def test_a_file_index_without_rows_is_said(tmp_path, caplog):
    (tmp_path / "m.csv").write_text("scene,source,azimuth_deg,elevation_deg,range_m,file\n"
                                    "0,0,1,1,2,0\n0,0,1,1,2,1\n")
    assert read_estimates(tmp_path / "m.csv", 2, 1, file=1).K.tolist() == [1, 0]
    assert not caplog.records
    assert read_estimates(tmp_path / "m.csv", 2, 1, file=5).K.tolist() == [0, 0]
    assert "has no row of file 5 (its files with rows: 0, 1)" in caplog.text
    # rows of one file, not file 0 (one file's rows kept, as evaluate advises; or every
    # scene of file 0 failed): the caller says which (a review: read silently as the
    # file's); evaluate --estimates reads the rows, saying so
    head = "scene,source,azimuth_deg,elevation_deg,range_m,score,file\n"
    (tmp_path / "one.csv").write_text(head + "0,0,10,0,1,1, 1.0\n")  # (a spreadsheet's)
    with pytest.raises(ValueError, match="rows of file 1 alone: pass file=1 to read them"):
        read_estimates(tmp_path / "one.csv", 2)
    caplog.clear()
    assert read_estimates(tmp_path / "one.csv", 2, file=1).K.tolist() == [1, 0]
    assert not caplog.records  # " 1.0" is file 1 (" 1" was warned missing, then read)
    (tmp_path / "none.csv").write_text(head)  # a file column, no rows: no file is "wrong"
    assert read_estimates(tmp_path / "none.csv", 2, file=1).K.tolist() == [0, 0]
    # a CSV of one input file (no file column) without rows, read as file 0: no warning,
    # the warning is a several-file CSV's (a mutation review: warned for any file)
    caplog.clear()
    (tmp_path / "empty.csv").write_text(head.replace(",file", ""))
    assert read_estimates(tmp_path / "empty.csv", 2, file=0).K.tolist() == [0, 0]
    assert not caplog.records, caplog.text
    for bad in (True, -1, 1.5):
        with pytest.raises(ValueError, match=f"file must be the index .*got {bad!r}"):
            read_estimates(tmp_path / "m.csv", 2, file=bad)
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match=f"slots must be a whole number >= 1 or None, "
                                             f"got {bad!r}"):
            read_estimates(tmp_path / "m.csv", 2, bad, file=0)
    for bad in ("b", "1.5", "-1"):
        (tmp_path / "x.csv").write_text(head + f"0,0,10,0,1,1,{bad}\n")
        with pytest.raises(ValueError, match=f"line 2: file must be the index .* got '{bad}'"):
            read_estimates(tmp_path / "x.csv", 2)


def test_a_one_based_csv_is_named_wherever_it_fails_and_only_where_it_can_be_one(tmp_path):
    """A CSV numbered from 1 is named also where slots= is what it exceeds first (the
    message alone said "give slots >= 4", a fix that reads every scene one off); and a CSV
    whose scenes lie beyond the file even counted from 1 is not called 1-based."""
    head = "scene,source,azimuth_deg,elevation_deg,range_m\n"
    path = tmp_path / "u.csv"
    path.write_text(head + "1,1,10,0,2\n1,2,20,0,3\n1,3,30,0,4\n")
    with pytest.raises(ValueError, match=r"beyond the 3 slot\(s\) .*from 1 "
                                         r"\(MATLAB's counting\?\)"):
        read_estimates(path, 2, 3)
    path.write_text(head + "5,1,10,0,2\n")  # scene 4 counted from 1: still past 2 scenes
    with pytest.raises(ValueError, match="scene 5, source 1; expected") as err:
        read_estimates(path, 2)
    assert "from 1" not in str(err.value)
    # scenes from 0 or sources from 0 is no CSV counted from 1: "subtract 1 from both"
    # would number a scene or a source -1 (a mutation review)
    for body, says in (("0,1,10,0,2\n", "scene 0 has source 1 but no source 0"),
                       ("1,0,10,0,2\n2,0,20,0,3\n", "scene 2, source 0; expected")):
        path.write_text(head + body)
        with pytest.raises(ValueError, match=says) as err:
            read_estimates(path, 2)
        assert "from 1" not in str(err.value)


def test_estimates_file_round_trip(tmp_path, scenes):
    from risloc.core.params import Estimates

    nan = math.nan
    est = Estimates(K=torch.tensor([2, 0, 1]),
                    azimuth=torch.tensor([[0.1, -0.2], [nan, nan], [0.3, nan]]),
                    elevation=torch.tensor([[0.05, 0.0], [nan, nan], [-0.1, nan]]),
                    range_m=torch.tensor([[1.5, 7.0], [nan, nan], [2.0, nan]]),
                    score=torch.tensor([[3.0, 2.0], [nan, nan], [1.0, nan]]))
    path = write_estimates(tmp_path / "e.csv", estimate_rows(est, offset=10))
    lines = path.read_text().splitlines()
    assert lines[0] == "scene,source,azimuth_deg,elevation_deg,range_m,score"
    assert lines[1].startswith("10,0,5.729578,2.864789,1.500000")
    back = read_estimates(path, 13, 2)
    assert back.K[10:].tolist() == [2, 0, 1]
    assert torch.allclose(back.azimuth[10:].nan_to_num(9), est.azimuth.nan_to_num(9), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["e.csv"]
    assert write_estimates(path, estimate_rows(est)) == path  # an estimates CSV: replaced
    # any other file is kept (a scene file given by a slip was overwritten with a CSV)
    (tmp_path / "scenes.h5").write_bytes(b"\x89HDF\r\n\x1a\n a scene file")
    for name, says in (("scenes.h5", "give a name ending in .csv"),
                       ("notes.csv", "exists and is not an estimates CSV")):
        (tmp_path / "notes.csv").write_text("my notes\n")
        before = (tmp_path / name).read_bytes()
        with pytest.raises(ValueError, match=f"the estimates file .*{name}.*{says}"):
            write_estimates(tmp_path / name, estimate_rows(est))
        assert (tmp_path / name).read_bytes() == before
    # a user's hand-made CSV: a repeated source, a gap in a scene's sources, a bad number,
    # a missing column are named, not read as something else
    head = "scene,source,azimuth_deg,elevation_deg,range_m\n"
    for body, says in (("0,0,10,0,2\n0,0,20,0,3\n", r"line 3: scene 0, source 0 again "
                                                       r"\(first on line 2\)"),
                       ("0,0,10,0,2\n0,2,20,0,3\n", "scene 0 has source 2 but no source 1 .* "
                                                     "renumber them where rows were dropped"),
                       ("0,0,ten,0,2\n", "line 2: scene and source must be whole numbers"),
                       ("0,0,nan,0,2\n", "line 2: positions must be finite numbers"),
                       ("0,0,10,0,inf\n", "line 2: positions must be finite numbers"),
                       ("0,0,10,0,-2\n", r"line 2: .*and the range > 0"),
                       ("0,0,10,95,2\n", r"line 2: elevation_deg 95 lies beyond \+-90 deg"),
                       ("0,3000000,10,0,2\n", r"line 2: scene 0 has a source 3000000, "
                                               r"beyond the 3 slot\(s\) asked for \(slots=\): "
                                               r"give slots >= 3000001"),
                       ("2,0,10,0,2\n", "scene 2, source 0; expected scenes "
                                         r"0..1 \(the 2 scenes of the scene file\)"),
                       # a MATLAB user's review: numbered from 1, named as such
                       ("1,1,10,0,2\n2,1,20,0,3\n", r"scene 2, source 1; expected .*from 1 "
                                                   r"\(MATLAB's counting\?\): they are 0-based"),
                       ("1,1,10,0,2\n", r"scene 1 has source 1 but no source 0 .*from 1 "
                                        r"\(MATLAB's counting\?\)"),
                       ("", None)):
        (tmp_path / "u.csv").write_text(head + body)
        if says is None:
            assert read_estimates(tmp_path / "u.csv", 2, 3).K.tolist() == [0, 0]
            continue
        with pytest.raises(ValueError, match=says):
            read_estimates(tmp_path / "u.csv", 2, 3)
    for n, says in ((np.int64(3), None), (3.0, r"whole number >= 0\), got 3.0"),
                    (None, "n_scenes must be the number of scenes"),
                    (-1, r"a whole number >= 0\), got -1")):  # (a review: torch's errors)
        if says is None:
            assert read_estimates(tmp_path / "u.csv", n, 3).K.tolist() == [0, 0, 0]
        else:
            with pytest.raises(ValueError, match=says):
                read_estimates(tmp_path / "u.csv", n, 3)
    # slots taken from the file: a stray source number is named before memory is taken
    (tmp_path / "u.csv").write_text(head + "0,1000000000000,10,0,2\n")  # (a list of the
    with pytest.raises(ValueError, match="scene 0 has source 1000000000000 but no source 0"):
        read_estimates(tmp_path / "u.csv", 2)  # sources missing would not fit in memory)
    # a spreadsheet's header: stray spaces and capitals forgiven; ';' separators named
    (tmp_path / "u.csv").write_text(" Scene,SOURCE ,azimuth_deg,elevation_deg,range_m ,note\n"
                                    "1,0,10,0,2,x\n1,1,20,0,3,y\n")
    assert read_estimates(tmp_path / "u.csv", 2).K.tolist() == [0, 2]  # slots: the widest
    (tmp_path / "u.csv").write_text("scene;source;azimuth_deg;elevation_deg;range_m\n")
    with pytest.raises(ValueError, match="separated by ';': an estimates CSV is comma-sep"):
        read_estimates(tmp_path / "u.csv", 2, 3)
    # a scene file by a slip, a folder: named, not a codec error or IsADirectoryError
    with pytest.raises(ValueError, match=r"scenes.h5 is not a text CSV in UTF-8 \(byte 0"):
        read_estimates(tmp_path / "scenes.h5", 2, 3)
    with pytest.raises(ValueError, match="is a folder, not an estimates CSV"):
        read_estimates(tmp_path, 2, 3)
    # Estimates (or a LocalizationResult) written as they are; anything else refused before
    # a file is written (a review: Estimates gave blank lines that read back as K = 0)
    from risloc.pipeline import LocalizationResult

    write_estimates(tmp_path / "w.csv", LocalizationResult(est))
    assert read_estimates(tmp_path / "w.csv", 3, 2).K.tolist() == est.K.tolist()
    with pytest.raises(TypeError, match="write_estimates takes Estimates or rows"):
        write_estimates(tmp_path / "w2.csv", est.K)
    assert not (tmp_path / "w2.csv").exists()
    # Estimates the CSV could not give back are refused, naming the scene (a review: NaN
    # written as 'nan', a range below 5e-7 m as 0.000000, K beyond the slots an IndexError)
    for field, value, says in (("azimuth", nan, "scene 2, source 0: its position must be "
                                                "finite"),
                               ("range_m", 1e-7, "scene 2, source 0: .*range at least 1e-6"),
                               ("elevation", 1.7, "scene 2, source 0: .*within \\+-pi / 2"),
                               ("K", 3, "scene 2: K = 3 sources but 2 slots")):
        bad = Estimates(**{f: getattr(est, f).clone() for f in ("K", "azimuth", "elevation",
                                                                "range_m", "score")})
        getattr(bad, field)[(2,) if field == "K" else (2, 0)] = value
        with pytest.raises(ValueError, match=says):
            write_estimates(tmp_path / "w3.csv", bad)
        assert not (tmp_path / "w3.csv").exists()
    # rows the CSV reader would refuse are refused before the file takes its name, named by
    # it (a review: written, then refused on reading)
    for rows, says in (([(0, 0, 10.0, 95.0, 3.0)], "elevation_deg 95 lies beyond"),
                       ([(0, 0, 10.0, 5.0, -3.0)], "range"),
                       ([(0, 1, 10.0, 5.0, 3.0)], "source 1 but no source 0"),
                       ([(0, 0, 10.0, 5.0, 3.0)] * 2, "source 0 again"),
                       ([("a", "b", "c", "d", "e")], "whole numbers")):
        with pytest.raises(ValueError, match=says) as err:
            write_estimates(tmp_path / "w4.csv", rows)
        assert str(tmp_path / "w4.csv") in str(err.value) and ".partial" not in str(err.value)
        assert not (tmp_path / "w4.csv").exists() and not list(tmp_path.glob(".w4.csv*"))
    with pytest.raises(ValueError, match="scene -1, source 0; expected scenes and sources "
                                         "numbered 0, 1"):
        write_estimates(tmp_path / "w4.csv", [(-1, 0, 10.0, 5.0, 3.0)])
    # checked without taking memory by the scene numbers: a row of scene 10^10, and cells
    # the reader takes (' 3'), are written (a review: 80 GB asked for)
    write_estimates(tmp_path / "w5.csv", [(10**10, 0, 1.0, 2.0, 3.0, 1.0),
                                          (" 3", 0, 1.0, 2.0, 3.0, 1.0)])
    assert (tmp_path / "w5.csv").read_text().splitlines()[1].startswith("10000000000,0,")
    # the zenith in float32 (90.0000025 deg) is written as 90, which reads back (a review)
    zenith = Estimates(**{f: getattr(est, f).clone() for f in ("K", "azimuth", "elevation",
                                                               "range_m", "score")})
    zenith.elevation[2, 0] = torch.tensor(math.pi / 2, dtype=torch.float32)
    write_estimates(tmp_path / "z.csv", zenith)
    assert ",90.000000," in (tmp_path / "z.csv").read_text()
    assert read_estimates(tmp_path / "z.csv", 3, 2).elevation[2, 0] == pytest.approx(
        math.pi / 2)
    for text in ("scene,source,azimuth_deg,range_m\n0,0,10,2\n",
                 "scene,source,azimuth_deg,range_m\n"):  # with rows or without
        (tmp_path / "u.csv").write_text(text)
        with pytest.raises(ValueError, match=r"no column \['elevation_deg'\]"):
            read_estimates(tmp_path / "u.csv", 2, 3)
    # saved from a spreadsheet: a UTF-8 byte-order mark before the header, CRLF line ends
    (tmp_path / "x.csv").write_bytes(codecs.BOM_UTF8 + b"scene,source,azimuth_deg,"
                                     b"elevation_deg,range_m\r\n1,0,10,-5,2.5\r\n")
    x = read_estimates(tmp_path / "x.csv", 2, 3)
    assert x.K.tolist() == [0, 1] and math.degrees(x.azimuth[1, 0]) == pytest.approx(10)
    assert write_estimates(tmp_path / "x.csv", estimate_rows(est)) == tmp_path / "x.csv"
    (tmp_path / "u.csv").write_text("")  # not "no source anywhere": an empty file
    with pytest.raises(ValueError, match="u.csv is empty: an estimates CSV starts with its "
                                         "header scene,source,"):
        read_estimates(tmp_path / "u.csv", 2, 3)


def test_real_codes_of_a_1_bit_ris_are_complex_codes(system, scenes):
    signs = torch.where(scenes.codes.real >= 0, 1.0, -1.0)  # +-1, float32
    loc = Localizer(system, "classical", workers=1)
    a = loc.localize(scenes.y[:2], scenes.H[:2], signs[:2].numpy(), K=1).estimates
    b = loc.localize(scenes.y[:2], scenes.H[:2], signs[:2].to(torch.complex64), K=1).estimates
    for name in ("azimuth", "elevation", "range_m"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0,
                                   equal_nan=True)
    with pytest.raises(TypeError, match="y must be complex"):  # y and H stay complex
        loc.localize(scenes.y.real, scenes.H, scenes.codes)
    # boolean codes are no +-1 signs (True/False would read as 1/0): refused, not cast (a
    # mutation review: cast to complex64, they were localized as codes of 0 and 1)
    with pytest.raises(TypeError, match="codes must be complex") as err:
        loc.localize(scenes.y[:2], scenes.H[:2], (signs[:2] > 0).numpy(), K=1)
    # the way to +-1 codes, as a file's reader gives it (a persona got no hint here)
    assert "got bool (bits? codes are unit-modulus phases: a 1-bit RIS's are +-1, pass " \
        "1 - 2 * codes.astype(np.int8) for NumPy's" in str(err.value)
    bits = (signs[:2] < 0).numpy()  # bit 1: -1
    c = loc.localize(scenes.y[:2], scenes.H[:2], 1 - 2 * bits.astype(np.int8), K=1).estimates
    torch.testing.assert_close(c.azimuth, a.azimuth, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("layout", ["fortran", "transposed view", "big-endian", "lazy conj"])
def test_any_memory_layout_or_byte_order_gives_the_same_answer(system, scenes, layout):
    """Arrays as users have them: scipy.io.loadmat returns Fortran order, a transposed
    torch view is not contiguous, a file from another machine may be big-endian."""
    def as_user(t):
        a = t[:2].numpy()
        if layout == "fortran":
            return np.asfortranarray(a)
        if layout == "big-endian":
            return a.astype(a.dtype.newbyteorder(">"))
        if layout == "lazy conj":  # a view with torch's conjugate bit (a review crashed it)
            return t[:2].conj().resolve_conj().conj()
        return t[:2].mT.contiguous().mT

    loc = Localizer(system, "classical", workers=1)
    ref = loc.localize(scenes.y[:2], scenes.H[:2], scenes.codes[:2], K=1).estimates
    got = loc.localize(*(as_user(t) for t in (scenes.y, scenes.H, scenes.codes)),
                       K=1).estimates
    for name in ("azimuth", "elevation", "range_m"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=0, atol=0,
                                   equal_nan=True)


def test_inputs_on_two_devices_or_the_meta_device_are_named(system, scenes):
    loc = Localizer(system, "classical", workers=1)
    with pytest.raises(ValueError, match="one device, got y on meta, H on cpu, codes on cpu"):
        loc.localize(scenes.y.to("meta"), scenes.H, scenes.codes)
    with pytest.raises(ValueError, match="'meta' device, which holds shapes but no values"):
        loc.localize(*(t.to("meta") for t in (scenes.y, scenes.H, scenes.codes)))
    with pytest.raises(TypeError, match="y must be a dense array, got a torch.sparse_coo"):
        loc.localize(scenes.y.to_sparse(), scenes.H, scenes.codes)


def test_a_float64_default_dtype_changes_nothing(system, scenes):
    """A notebook's torch.set_default_dtype(torch.float64) broke the learned localizer (its
    constants were made float64 beside float32 weights; a review found it)."""
    ref = Localizer.from_checkpoint(workers=1).localize(scenes.y, scenes.H, scenes.codes)
    torch.set_default_dtype(torch.float64)
    try:
        loc = Localizer.from_checkpoint(workers=1)
        got = loc.localize(scenes.y, scenes.H, scenes.codes)
        assert torch.get_default_dtype() == torch.float64  # the caller's, given back
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.equal(got.estimates.K, ref.estimates.K)
    torch.testing.assert_close(got.estimates.azimuth, ref.estimates.azimuth, equal_nan=True)
    # from_checkpoint takes the constructor's chunk too (a review: a TypeError)
    # and its workers (a mutation review: dropped, None taken, passed)
    given = Localizer.from_checkpoint(workers=3, chunk=16)
    assert (given.chunk, given.workers) == (16, 3)


def test_graph_batch_reaches_the_learned_localizer_and_is_ignored_on_the_cpu(scenes):
    """from_checkpoint(graph_batch=...) makes the graphed call of that many scenes per
    pass; on the CPU it is ignored: eager calls (the class docstring; a mutation review:
    graph_batch dropped by from_checkpoint, or the graphed call used on the CPU, passed)."""
    loc = Localizer.from_checkpoint(workers=1, graph_batch=4)
    assert loc.graphed is not None and loc.graphed.batch == 4

    def not_on_the_cpu(*a, **k):
        raise AssertionError("the graphed call ran on the CPU")

    loc.graphed = not_on_the_cpu
    assert len(loc.localize(scenes.y[:1], scenes.H[:1], scenes.codes[:1], K=1)) == 1


def test_chunk_sets_the_scenes_per_pass_on_the_cpu(system, scenes, monkeypatch):
    """chunk: the scenes of a pass on CPU (the class docstring): 4 scenes in near-equal
    passes of at most 3 with chunk=3, one pass with chunk=None and one worker (a mutation
    review: the
    chunk never passed on, every batch one pass, passed)."""
    import risloc.pipeline.localizer as localizer

    real, passes = localizer.classical_localize, []
    monkeypatch.setattr(localizer, "classical_localize", lambda y, *a, **k: passes.append(
        y.shape[0]) or real(y, *a, **k))
    Localizer(system, "classical", workers=1, chunk=3).localize(scenes.y, scenes.H,
                                                                scenes.codes, K=1)
    assert passes == [2, 2]  # (chunk_bounds)
    passes.clear()
    Localizer(system, "classical", workers=1, chunk=None).localize(scenes.y, scenes.H,
                                                                   scenes.codes, K=1)
    assert passes == [4]
    # the passes split the good scenes only: 3 of 4 with chunk=3 in one pass of 3 (a
    # mutation review: passes cut from the whole batch, [2, 1], passed)
    y = scenes.y.clone()
    y[1] = math.nan
    passes.clear()
    Localizer(system, "classical", workers=1, chunk=3).localize(y, scenes.H, scenes.codes,
                                                                K=1)
    assert passes == [3]


def test_arguments_in_the_wrong_place_are_named(system, scenes):
    with pytest.raises(TypeError, match="system must be a SystemConfig.*got the string "
                                        "'classical'"):
        Localizer("classical")  # the method where the system goes
    for name in ("workers", "chunk"):  # (a mutation review: workers=0 accepted passed here)
        with pytest.raises(ValueError, match=f"{name} must be >= 1"):
            Localizer(system, "classical", **{name: 0})
    res = Localizer(system, "classical", workers=1).localize(scenes.y[:1], scenes.H[:1],
                                                             scenes.codes[:1], K=1)
    truth = (scenes.azimuth[:1], scenes.elevation[:1], scenes.range_m[:1], scenes.K[:1])
    with pytest.raises(TypeError, match=r"est must be Estimates, a LocalizationResult or a "
                                        r"dict of NaN-padded arrays in degrees"):
        match_sources(res.records(), *truth)  # a list of dicts
    # to_numpy()'s dict (degrees), as another estimator's arrays would come, pairs alike
    as_arrays, as_result = match_sources(res.to_numpy(), *truth), match_sources(res, *truth)
    assert torch.equal(as_arrays.est_index, as_result.est_index)
    assert torch.allclose(as_arrays.angle_error, as_result.angle_error, atol=1e-6,
                          equal_nan=True)


def test_the_classical_localizer_s_system_is_not_called_a_model_s(system, scenes):
    other = {**system.model_dump(), "wavelength": 0.25}
    with pytest.raises(ValueError, match=r"differs from the localizer's: wavelength 0.25 "
                                         r"\(localizer: 0.3\)"):
        Localizer(system, "classical", workers=1).localize(scenes.y, scenes.H, scenes.codes,
                                                           system=other)

    with pytest.raises(TypeError, match="chunk must be a whole number or None, got str '64'"):
        Localizer(system, "classical", chunk="64")


def test_elements_so_far_apart_that_an_alias_lies_in_the_field_of_view_are_warned_of(
        caplog, monkeypatch):
    """An exact-data review: with spacing = lambda, MUSIC on the true covariance and the
    classical localizer came back 48-65 deg off, at a grating-lobe alias of the truth's
    cost. Alias-free up to lambda / span of sin(az) cos(el) over the box: 0.577 lambda in x
    for the default field of view (+-60 deg), 1 lambda in y (+-30 deg)."""
    import logging

    import risloc.pipeline.localizer as localizer
    from risloc.config import FieldOfView
    from risloc.pipeline import Localizer

    monkeypatch.setattr(localizer, "_WARNED", [])
    said = {}
    for spacing, fov in ((0.3, None), (0.15, None), (0.18, None), (0.3, (-20.0, 20.0))):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="risloc.pipeline.localizer"):
            Localizer({"spacing": spacing}, "classical",
                      fov=None if fov is None else FieldOfView(azimuth_deg=fov))
        said[spacing, fov] = " ".join(caplog.text.split())
    assert "element spacing 1 lambda: a source and its grating-lobe alias" in said[0.3, None]
    assert "(alias-free up to lambda over the span of the direction cosine: x 0.577 " \
           "lambda)" in said[0.3, None]  # (y: 1 lambda exactly, not beyond)
    assert "x 0.577 lambda" in said[0.18, None]  # 0.6 lambda
    assert "grating" not in said[0.15, None] + said[0.3, (-20.0, 20.0)]  # 1.46 lambda there


def test_a_system_with_few_antennas_for_its_sources_or_a_linear_ris_is_warned_of(
        caplog, monkeypatch):
    """A review (stop 59): on noise-free scenes the classical localizer missed sources in
    10-15 of 16 scenes with K = M - 1 and about a third with K = M - 2 (M >= 6); 0-1 of 16
    with M - K >= 3 (docs/guide.md); a linear RIS gave arbitrary angles along a cone."""
    import logging

    import risloc.pipeline.localizer as localizer
    from risloc.pipeline import Localizer

    monkeypatch.setattr(localizer, "_WARNED", [])
    said = {}
    for system in ({"M": 4}, {"M": 6}, {"M": 8}, {"M": 8, "K_max": 6}, {"M": 16}):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="risloc.pipeline.localizer"):
            Localizer(system, "classical")
        said[tuple(system.values())] = " ".join(r.getMessage() for r in caplog.records)
    assert "most of the scenes with K = M - 1 = 3" in said[(4,)] and "M - 2" not in said[(4,)]
    assert "about a third of the scenes with K = M - 2 = 4 and most of the scenes with " \
           "K = M - 1 = 5" in said[(6,)]
    assert said[(8,)] == said[(16,)] == ""  # K_max 5: 3 or more below M
    assert "K = M - 2 = 6" in said[(8, 6)] and "M - 1" not in said[(8, 6)]
    caplog.clear()  # one source, M = 2: no greedy step to miss it (a user's review)
    with caplog.at_level(logging.WARNING, logger="risloc.pipeline.localizer"):
        Localizer({"M": 2, "K_max": 1}, "classical")
    assert "misses sources" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="risloc.pipeline.localizer"):
        Localizer({"N_H": 1, "N_V": 12}, "classical")  # azimuth arbitrary, in the review
    assert "a linear RIS (1 x 12 elements) tells one angle" in caplog.text
    caplog.clear()  # a line of columns as well as a column (a mutation review)
    with caplog.at_level(logging.WARNING, logger="risloc.pipeline.localizer"):
        Localizer({"N_H": 12, "N_V": 1}, "classical")
    assert "a linear RIS (12 x 1 elements) tells one angle" in caplog.text
    caplog.clear()  # one element tells nothing (a user's review: "tells one angle" was said)
    with caplog.at_level(logging.WARNING, logger="risloc.pipeline.localizer"):
        Localizer({"N_H": 1, "N_V": 1}, "classical")
    assert "a RIS of one element tells neither angle nor the range" in caplog.text
    assert "linear RIS" not in caplog.text
    caplog.clear()  # once per system (evaluate builds a Localizer per chunk: a review)
    with caplog.at_level(logging.WARNING, logger="risloc.pipeline.localizer"):
        Localizer({"N_H": 1, "N_V": 12}, "classical")
        Localizer({"M": 6}, "classical")
    assert caplog.text == ""


def test_the_classical_localizer_recovers_exact_scenes_of_a_small_array():
    """Exact recovery beyond the default system: 8 antennas, 8 x 6 elements, 4 sources
    (M - K = 4, where the guide says its search holds), noise-free."""
    import torch

    from risloc.config import SceneConfig, validate_system
    from risloc.physics import angular_separation
    from risloc.pipeline import Localizer
    from risloc.simulation import simulate_batch

    system = validate_system({"M": 8, "N_H": 8, "N_V": 6})
    sc = simulate_batch(4, system, SceneConfig(), torch.Generator().manual_seed(5),
                        snr_db=300.0, K=4)
    loc = Localizer(system, "classical", workers=1)
    for K in (4, None):
        est = loc.localize(sc.y, sc.H, sc.codes, K=K).estimates
        assert est.K.tolist() == [4] * 4
        sep = angular_separation(sc.azimuth[:, :4, None], sc.elevation[:, :4, None],
                                 est.azimuth[:, None, :4], est.elevation[:, None, :4])
        assert float(sep.amin(-1).rad2deg().max()) < 1e-2
        err = (sc.range_m[:, :4, None] - est.range_m[:, None, :4]).abs().amin(-1)
        assert float(err.max()) < 1e-2


def test_chunks_read_their_own_scenes_k_and_snr(system):
    """Per-scene K and SNR go with their scenes through chunks and past a bad scene: each
    scene's estimates equal those of localizing it alone (a mutation review: every chunk
    reading the first chunk's K, and the SNR left unaligned after a bad scene, passed)."""
    from risloc.pipeline.localizer import resolve_K

    sc = simulate_range(0, 5, system, SceneConfig(), seed=6, split="test", K=3)
    y = sc.y.clone()
    y[0, 0, 0] = float("inf")  # scene 0 bad: the others shift in the batch
    K = torch.tensor([1, 2, 3, 1, 2])
    snr = torch.tensor([5.0, 0.0, 20.0, -3.0, 12.0])
    loc = Localizer(system, "classical", workers=1, chunk=2)
    res = loc.localize(y, sc.H, sc.codes, snr_db=snr, K=K)
    assert res.estimates.K.tolist() == [0, 2, 3, 1, 2]
    alone = Localizer(system, "classical", workers=1)
    for i in range(1, 5):
        one = alone.localize(sc.y[i:i + 1], sc.H[i:i + 1], sc.codes[i:i + 1],
                             snr_db=snr[i:i + 1], K=K[i:i + 1]).estimates
        torch.testing.assert_close(res.estimates.azimuth[i], one.azimuth[0], equal_nan=True,
                                   rtol=0, atol=1e-4)
    # K unknown: the SNR sets the order test's noise level (told -20 dB, a 25 dB scene
    # would read as noise; told 40 dB, a 0 dB one as sources); the chunks [1, 2] and
    # [3, 4] told differently (a mutation review: with the same SNRs in both, every chunk
    # reading the first chunk's SNR passed)
    told = torch.tensor([0.0, -20.0, 40.0, 40.0, -20.0])
    res = loc.localize(y, sc.H, sc.codes, snr_db=told)
    for i in range(1, 5):
        one = alone.localize(sc.y[i:i + 1], sc.H[i:i + 1], sc.codes[i:i + 1],
                             snr_db=told[i:i + 1]).estimates
        assert int(res.estimates.K[i]) == int(one.K[0]), i
        torch.testing.assert_close(res.estimates.azimuth[i], one.azimuth[0], equal_nan=True,
                                   rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="K must lie in 1..K_max=2"):
        resolve_K(3, 4, 2)  # (the bound itself, before any estimator sees it)
    assert resolve_K(2, 3, 2).tolist() == [2, 2, 2]


def test_a_learned_localizer_searches_its_networks_field_of_view_only():
    """Another field of view is refused for the learned method, and its polish searches the
    network's (a mutation review: the check dropped, or the polish's field of view left at
    the default, passed with the default field of view; a float64 polish passed)."""
    from risloc.config import FieldOfView
    from risloc.pipeline.learned import default_polish

    narrow = FieldOfView(range_m=(1.0, 5.0))
    assert default_polish(narrow).fov == narrow
    # the benchmarked polish: 3 LM iterations in float32 (docstring; double=True passed)
    assert (default_polish(narrow).iterations, default_polish(narrow).double) == (3, False)
    loc = Localizer.from_checkpoint()
    with pytest.raises(ValueError, match="cannot search"):
        Localizer(loc.system, "learned", loc.pipeline, fov=narrow)


def test_music_proposes_its_k_max_peaks_and_the_slots_fill_only_empty_ones(monkeypatch):
    """The MUSIC proposal (an ablation of the learned pipeline): the candidates are the
    K_max MUSIC peaks on R_blend; a peak MUSIC leaves empty (NaN) is the network's slot
    (a mutation review: K_max - 1 peaks asked for, or slots preferred to the peaks,
    passed)."""
    from types import SimpleNamespace

    import risloc.pipeline.learned as learned
    from risloc.estimators.music import music
    from risloc.inference.forward import forward_blend

    pipe = learned.load_learned_pipeline()
    pipe.music = learned.inference_music_config(pipe.fov)
    sc = simulate_range(0, 3, pipe.system, SceneConfig(), split="test", seed=2, K=5,
                        snr_db=20.0)
    K_max = pipe.system.K_max
    with torch.no_grad():
        fwd = pipe.forward(sc.y, sc.H, sc.codes)
        peaks = music(fwd.R_blend, torch.full((3,), K_max), pipe.system, pipe.music).theta
        assert bool(torch.isfinite(peaks).all())
        blend = forward_blend(pipe.network, sc.y, sc.H, sc.codes, None,
                              pipe.recipe.blend.beta, pipe.recipe.blend, check=False)
        torch.testing.assert_close(fwd.R_blend, blend.R_blend, rtol=0, atol=0)
        torch.testing.assert_close(pipe.propose(fwd), peaks.float(), rtol=0, atol=0)

        def one_empty(*a, **k):
            theta = music(*a, **k).theta.clone()
            theta[:, 1] = float("nan")
            return SimpleNamespace(theta=theta)

        monkeypatch.setattr(learned, "music", one_empty)
        cand = pipe.propose(fwd)
    out = fwd.out
    slots = torch.stack([out.slot_azimuth, out.slot_elevation, 1.0 / out.slot_range], -1)
    torch.testing.assert_close(cand[:, 1], slots[:, 1], rtol=0, atol=0)
    keep = [0, 2, 3, 4]
    torch.testing.assert_close(cand[:, keep], peaks[:, keep].float(), rtol=0, atol=0)


def test_a_given_K_is_fitted_and_repaired_with_the_known_K_margin():
    """K given: the fit stage and the repair of the K chosen sources run with
    ``known_K_margin`` (0.5), not the head's margin (0), then NF-MLE and the cancelling-pair
    split (risloc.pipeline.learned, stage 5). At 0 dB with unequal powers the margin changes
    the fits, so a path that dropped it shows (a mutation review: the margin ignored in
    either the fit or the repair passed)."""
    from dataclasses import replace

    from risloc.core.params import Estimates
    from risloc.estimators.classical import separate_cancelling
    from risloc.estimators.mlfit import ml_fit, repair_chosen
    from risloc.estimators.nfmle import nfmle_fit
    from risloc.pipeline.learned import load_learned_pipeline

    pipe = load_learned_pipeline()
    sc = simulate_range(0, 2, pipe.system, SceneConfig(power_spread_db=(0.0, 12.0)),
                        split="test", seed=4, snr_db=0.0)
    y, H, codes, K, system = sc.y, sc.H, sc.codes, sc.K, pipe.system
    fc = replace(pipe.fit_config, repair_margin=pipe.known_K_margin)
    assert fc.repair_margin != pipe.fit_config.repair_margin
    with torch.no_grad():
        cand = pipe.propose(pipe.forward(y, H, codes))
        fit = ml_fit(y, H, codes, cand, system, fc)
        assert float((fit.theta - pipe.fit(y, H, codes, cand).theta).abs().max()) > 0.1
        theta = repair_chosen(y, H, codes, fit.theta, K, system, fc, pipe.chosen_repairs)
        init = Estimates.from_theta(K, theta)
        want = separate_cancelling(y, H, codes, nfmle_fit(y, H, codes, init, system,
                                                          pipe.polish_config, check=False),
                                   system, pipe.polish_config)
    got = pipe.localize(y, H, codes, K=K)
    assert torch.equal(got.K, K)
    torch.testing.assert_close(got.azimuth, want.azimuth.float(), rtol=0, atol=0,
                               equal_nan=True)
    torch.testing.assert_close(got.range_m, want.range_m.float(), rtol=0, atol=0,
                               equal_nan=True)


def test_the_learned_pipeline_s_documented_settings():
    """The settings the docstrings of risloc.pipeline.learned give (and the shipped model's
    estimates rest on): one repair round when K is given, none when decided, margin 0.5 for a
    given K, the low-SNR balance 0.0 below 0.5 dB; MUSIC 6 candidates x 3 steps; the fit
    stage's polish and search over the network's field of view (a mutation review: each
    default changed, and the fit stage's polish over the package's default field, passed)."""
    from risloc.config import FieldOfView
    from risloc.pipeline.learned import (
        default_fit_config,
        inference_music_config,
        load_learned_pipeline,
    )

    pipe = load_learned_pipeline()
    assert (pipe.chosen_repairs, pipe.repair_decided, pipe.known_K_margin, pipe.low_snr_db,
            pipe.low_snr_balance) == (1, False, 0.5, 0.5, 0.0)
    narrow = FieldOfView(azimuth_deg=(-20.0, 20.0))
    cfg = inference_music_config(narrow)
    assert (cfg.fov, cfg.n_candidates, cfg.refine_iterations) == (narrow, 6, 3)
    fit = default_fit_config(narrow)
    assert fit.polish.fov == narrow and fit.search.fov == narrow


def test_the_order_head_can_decide_k_max_sources():
    """Five strong, separated sources: the shipped model's order head decides K = K_max
    when no k_max is passed (a mutation review: a default cap of K_max - 1 passed)."""
    from risloc.pipeline.learned import load_learned_pipeline

    pipe = load_learned_pipeline()
    sc = simulate_range(0, 2, pipe.system, SceneConfig(), split="test", seed=4, K=5,
                        snr_db=30.0)
    with torch.no_grad():
        fwd = pipe.forward(sc.y, sc.H, sc.codes)
        fit = pipe.fit(sc.y, sc.H, sc.codes, pipe.propose(fwd))
        decision = pipe.decide_order(fwd, fit, sc.y)
    assert decision.K.tolist() == [5, 5]
    assert torch.equal(pipe.decide_order(fwd, fit, sc.y, k_max=3).K, torch.tensor([3, 3]))


def test_a_wavelength_of_the_physical_c_is_another_system(system, scenes):
    """The docstring's example: 1 GHz with the physical c (0.29979 m, 7e-4 from 0.3 m) is
    refused, naming the wavelength; only rounding (relative 1e-6) passes."""
    loc = Localizer(system, "classical", workers=1)
    physical = system.model_dump() | {"wavelength": 299_792_458.0 / 1e9}
    with pytest.raises(ValueError, match="wavelength 0.299792458"):
        loc.localize(scenes.y[:1], scenes.H[:1], scenes.codes[:1], system=physical)
    near = system.model_dump() | {"wavelength": system.wavelength * (1 + 1e-5)}
    with pytest.raises(ValueError, match="wavelength"):
        loc.localize(scenes.y[:1], scenes.H[:1], scenes.codes[:1], system=near)


def test_xyz_places_sources_as_the_conventions_geometry_says():
    """p = r (cos(el) sin(az), sin(el), cos(el) cos(az)) in metres, NaN past K."""
    from risloc.core.params import Estimates
    from risloc.pipeline import LocalizationResult

    az, el, r = math.radians(30.0), math.radians(10.0), 2.0
    nan = math.nan
    est = Estimates(K=torch.tensor([1]), azimuth=torch.tensor([[az, nan]]),
                    elevation=torch.tensor([[el, nan]]), range_m=torch.tensor([[r, nan]]),
                    score=torch.tensor([[0.9, nan]]))
    xyz = LocalizationResult(est).xyz()
    assert xyz.shape == (1, 2, 3) and np.isnan(xyz[0, 1]).all()
    assert xyz.dtype == np.float64  # (computed in float64 from the float32 estimates)
    want = [r * math.cos(el) * math.sin(az), r * math.sin(el), r * math.cos(el) * math.cos(az)]
    np.testing.assert_allclose(xyz[0, 0], want, rtol=1e-6)


def test_every_field_of_the_estimates_file_reads_back(tmp_path):
    """Elevation, range and score read back as written (to the CSV's 6 decimals and the
    score's 6 significant digits), not only the azimuth and K."""
    from risloc.core.params import Estimates

    nan = math.nan
    est = Estimates(K=torch.tensor([2, 1]),
                    azimuth=torch.tensor([[0.1234567, -0.7654321], [0.5, nan]]),
                    elevation=torch.tensor([[0.3456789, -0.2345678], [-0.4, nan]]),
                    range_m=torch.tensor([[3.1415926, 0.7071068], [9.87654, nan]]),
                    score=torch.tensor([[0.8734521, 123.45678], [2.5e-4, nan]]))
    back = read_estimates(write_estimates(tmp_path / "e.csv", est), 2, 2)
    assert back.K.tolist() == [2, 1]
    for name, atol, rtol in (("azimuth", 1e-7, 0), ("elevation", 1e-7, 0),
                             ("range_m", 1e-6, 0), ("score", 0, 1e-5)):
        torch.testing.assert_close(getattr(back, name), getattr(est, name), atol=atol,
                                   rtol=rtol, equal_nan=True, check_dtype=False, msg=name)


def test_a_known_K_below_one_is_refused_as_out_of_range():
    """K = 0 (or negative) is named as outside 1..K_max before any estimator sees it."""
    from risloc.pipeline.localizer import resolve_K

    for K in (0, -1, [1, 0, 2]):
        with pytest.raises(ValueError, match=r"K must lie in 1..K_max=5"):
            resolve_K(K, 3, 5)


def test_a_scene_s_rows_in_any_order_read_back_whole(tmp_path):
    """A hand-made CSV may list a scene's sources in any order (e.g. sorted by score):
    K counts them all and each lands in its own slot."""
    rows = [(0, 1, 20.0, 5.0, 3.0, 0.9), (1, 0, -5.0, 0.0, 2.0, 0.4),
            (0, 0, 10.0, -5.0, 1.5, 0.2)]
    back = read_estimates(write_estimates(tmp_path / "o.csv", rows), 2)
    assert back.K.tolist() == [2, 1]
    torch.testing.assert_close(back.azimuth[0].rad2deg(), torch.tensor([10.0, 20.0]))
    torch.testing.assert_close(back.range_m[0], torch.tensor([1.5, 3.0]))


def test_a_stream_syncs_each_chunk_s_rows_before_its_record_and_the_folder_at_the_end(
        tmp_path, monkeypatch):
    """The progress record is written only once its chunk's rows are fsync'd to the .part
    file (a crash between leaves a record that the file's rows cover: bytes = its size),
    and finish syncs the folder after the rename, while the record is still there."""
    import os

    from risloc.pipeline import estimates_file
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("names an fsync'd descriptor's file through /proc (Linux)")
    out = tmp_path / "est.csv"
    part = out.with_name("est.csv.part")
    events = []
    real_fsync, real_commit, real_sync = os.fsync, EstimatesStream._commit, \
        estimates_file.fsync_folder

    def fsync(fd):
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(part.resolve()):
            events.append(("rows synced", part.stat().st_size))
        return real_fsync(fd)

    def commit(self):
        events.append(("record", self.part.stat().st_size))
        return real_commit(self)

    monkeypatch.setattr(estimates_file.os, "fsync", fsync)
    monkeypatch.setattr(EstimatesStream, "_commit", commit)
    monkeypatch.setattr(estimates_file, "fsync_folder", lambda p: events.append(
        ("folder synced", out.exists(), out.with_name("est.csv.progress.json").exists()))
        or real_sync(p))
    stream = EstimatesStream(out, {"inputs": ["a.h5"]}, COLUMNS)
    events.clear()
    stream.append("0", 2, [(0, 0, 1.0, 2.0, 3.0, 0.5), (1, 0, 4.0, 5.0, 6.0, 0.5)])
    size = part.stat().st_size
    assert events == [("rows synced", size), ("record", size)], events
    events.clear()
    stream.finish()
    assert events == [("folder synced", True, True)], events


def test_a_csv_without_rows_reads_back_with_one_empty_slot(tmp_path):
    """slots=None: as many as the widest scene, at least 1 (read_estimates' docstring)."""
    back = read_estimates(write_estimates(tmp_path / "none.csv", []), 3)
    assert back.K.tolist() == [0, 0, 0] and tuple(back.azimuth.shape) == (3, 1)
    assert bool(torch.isnan(back.range_m).all())


def test_the_classical_localizer_takes_its_noise_level_from_a_given_snr(system, scenes):
    """K unknown: the SNR given sets the noise level the order is decided on (module
    docstring), so told 40 dB, a 25 dB one-source scene's noise reads as further sources
    (a mutation review: the SNR dropped before the estimator passed, since every test
    compared runs that both dropped it)."""
    loc = Localizer(system, "classical", workers=1)
    y, H, codes = scenes.y[:1], scenes.H[:1], scenes.codes[:1]
    assert loc.localize(y, H, codes, snr_db=25.0).estimates.K.tolist() == [1]
    assert int(loc.localize(y, H, codes, snr_db=40.0).estimates.K[0]) > 1


def test_an_interrupted_stream_is_not_overwritten_and_a_resume_keeps_its_bad_scenes(
        tmp_path):
    """Without --resume or --restart an interrupted run's files are an error naming both;
    a resumed stream still holds the scenes its first part could not localize."""
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    out, settings = tmp_path / "est.csv", {"inputs": ["a.h5"]}
    first = EstimatesStream(out, settings, COLUMNS)
    first.append("0", 4, [(0, 0, 1.0, 2.0, 3.0, 0.5)], bad=[("a.h5", 2, "all-zero channel")])
    first.close()  # killed
    part = out.with_name("est.csv.part").read_bytes()
    with pytest.raises(ValueError, match="--resume to continue it, or --restart"):
        EstimatesStream(out, settings, COLUMNS)
    assert out.with_name("est.csv.part").read_bytes() == part
    with EstimatesStream(out, settings, COLUMNS, resume=True) as again:
        assert again.done == {"0": 4} and again.bad == [("a.h5", 2, "all-zero channel")]


def test_the_default_method_is_classical(system):
    loc = Localizer(system)  # (no pipeline needed)
    assert loc.method == "classical"


def test_repair_decided_repairs_the_decided_sources_and_low_snr_db_none_keeps_the_heads_balance():
    """localize: the repair rounds before the last NF-MLE run when K is given, and with K
    decided only where ``repair_decided`` is set; head_balance with ``low_snr_db`` None is
    the head's own everywhere (None). Stages stubbed: their order and arguments only."""
    from types import SimpleNamespace

    from risloc.pipeline.learned import LearnedPipeline

    seen = []
    est = SimpleNamespace(float=lambda: "estimates")
    pipe = SimpleNamespace(
        forward=lambda y, H, c, snr: "fwd", propose=lambda fwd: "cand",
        fit=lambda y, H, c, cand, known, check: seen.append(check) or "fit",
        decide_order=lambda fwd, fit, y, K, k_max, check: seen.append(check)
        or SimpleNamespace(K="K", ranking="ranking"),
        polish=lambda y, H, c, fit, K, repair, known, check, ranking: seen.append(check)
        or seen.append((repair, known, ranking)) or est)  # (none checks: localize waits for no GPU)
    y = torch.zeros(1, 2, 2, dtype=torch.complex64)
    for decided, K, want in ((False, None, (False, False, "ranking")),
                             (True, None, (True, False, "ranking")),
                             (False, torch.ones(1), (True, True, "ranking"))):
        pipe.repair_decided = decided
        assert LearnedPipeline.localize(pipe, y, y, y, K=K) == "estimates"
        assert seen.pop() == want and seen == [False] * 3
        seen.clear()
    assert LearnedPipeline.head_balance(SimpleNamespace(low_snr_db=None), None, y, None) is None


def test_a_smaller_k_max_of_the_scenes_caps_k_and_the_slots_of_either_localizer(system):
    """The scenes' system with K_max = 2 < the localizer's 5 (module docstring: a smaller
    K_max caps the number of sources reported): K estimated on scenes of 4 strong sources
    is at most 2, with 2 slots, for the classical and the learned localizer, and when every
    scene is bad; a K_max above the localizer's, even by one, is refused (a mutation
    review: the classical search run with the localizer's K_max, the learned pipeline's
    decided K not capped, its 5 slots not cut to 2, the all-bad result's slots the
    localizer's, and K_max + 1 accepted, passed)."""
    sc = simulate_range(0, 2, system, SceneConfig(), seed=3, split="test", K=4, snr_db=30.0)
    fewer = system.model_copy(update={"K_max": 2})
    for loc in (Localizer(system, "classical", workers=1),
                Localizer.from_checkpoint(workers=1)):
        res = loc.localize(sc.y, sc.H, sc.codes, system=fewer)
        assert res.estimates.K.tolist() == [2, 2], loc.method
        assert tuple(res.estimates.azimuth.shape) == (2, 2)
        assert len(res.records()) == 4
        with pytest.raises(ValueError, match="K must lie in 1..K_max=2"):  # a given K too
            loc.localize(sc.y, sc.H, sc.codes, K=3, system=fewer)
    dead = Localizer(system, "classical", workers=1).localize(
        sc.y * math.nan, sc.H, sc.codes, system=fewer)
    assert dead.estimates.K.tolist() == [0, 0]
    assert all(tuple(v.shape) == (2, 2) for k, v in dead.to_numpy().items() if k != "K")
    more = system.model_copy(update={"K_max": system.K_max + 1})
    with pytest.raises(ValueError, match="the scenes' K_max=6 exceeds the localizer's "
                                         "K_max=5"):
        Localizer(system, "classical", workers=1).localize(sc.y, sc.H, sc.codes, system=more)


def test_a_hand_made_csv_is_read_as_its_columns_say_or_named(tmp_path, caplog):
    """read_estimates on CSVs as users make them: a spreadsheet's ' File' is the file
    column (stray spaces and capitals forgiven); a CSV of several files whose rows are all
    of file 0, or that has no row, reads without file=; one file (no file column) is not
    file 1; an empty score cell is NaN (score is optional); an empty file cell, a range of
    0, an elevation past 90 deg, a negative source and a source beyond slots= are named by
    line; a missing range_m column is named (a mutation review: each of these passed)."""
    head = "scene,source,azimuth_deg,elevation_deg,range_m"
    p = tmp_path / "u.csv"
    p.write_text(head + ",score, File\n0,0,10,0,1,0.5,0\n1,0,20,0,2,0.5,1\n")
    with pytest.raises(ValueError, match="holds the estimates of 2 input files"):
        read_estimates(p, 2)
    assert read_estimates(p, 2, file=1).K.tolist() == [0, 1]
    p.write_text(head + ",file\n1,0,20,0,2,0\n")  # every row of file 0: no choice to make
    assert read_estimates(p, 2).K.tolist() == [0, 1]
    p.write_text(head + ",file\n")
    assert read_estimates(p, 2).K.tolist() == [0, 0]
    p.write_text(head + "\n0,0,10,0,1\n")
    with pytest.raises(ValueError, match="holds the estimates of one input file .*not of "
                                         "file 1"):
        read_estimates(p, 1, file=1)
    p.write_text(head + ",score\n0,0,10,0,1,\n0,1,20,0,2,0.25\n")
    back = read_estimates(p, 1)
    assert math.isnan(float(back.score[0, 0])) and float(back.score[0, 1]) == 0.25
    for body, says in ((",file\n0,0,10,0,1,\n", "line 2: file must be the index .*got ''"),
                       ("\n0,0,10,0,1\n0,1,10,0,0\n", r"line 3: .*and the range > 0"),
                       ("\n0,0,10,90.1,1\n", r"line 2: elevation_deg 90.1 lies beyond"),
                       ("\n0,-1,10,0,1\n", "line 2: scene 0, source -1; expected"),
                       ("\n0,0,10,0,1\n0,1,10,0,2\n", r"line 3: scene 0 has a source 1, "
                                                      r"beyond the 1 slot\(s\) asked for")):
        p.write_text(head + body)
        with pytest.raises(ValueError, match=says):
            read_estimates(p, 1, 1)
    p.write_text("scene,source,azimuth_deg,elevation_deg,score\n")
    with pytest.raises(ValueError, match=r"no column \['range_m'\] .*; its header: "
                                         r"scene,source,azimuth_deg,elevation_deg,score$"):
        read_estimates(p, 1)
    # coordinates named without their unit: the names to give them (a new user's review)
    p.write_text("scene,source,azimuth,elevation,range\n")
    with pytest.raises(ValueError, match=r"\(rename azimuth as azimuth_deg, elevation as "
                                         r"elevation_deg, range as range_m: angles in degrees"):
        read_estimates(p, 1)
    # a line longer than the csv module's 128 KB (a one-line JSON file given by a slip):
    # a ValueError naming the file and line (a review: a bare _csv.Error)
    for text, line in (('{"a": "' + "x" * 200000 + '"}', 1),
                       (head + "\n0,0,10,0," + "1" * 200000 + "\n", 2)):
        p.write_text(text)
        with pytest.raises(ValueError, match=f"u.csv, line {line}: not a CSV line .*field "
                                             "larger than field limit"):
            read_estimates(p, 1)


def test_write_estimates_takes_any_csv_name_and_replaces_only_an_estimates_csv(tmp_path):
    """A .CSV name is a CSV name (the suffix in any case); a file whose header is not the
    estimates header (only its first columns alike) is not replaced; rows of fewer columns
    than scene..range_m are a TypeError, nothing written (write_estimates' docstring)."""
    rows = [(0, 0, 10.0, 5.0, 3.0, 0.5)]
    assert read_estimates(write_estimates(tmp_path / "E.CSV", rows), 1).K.tolist() == [1]
    (tmp_path / "notes.csv").write_text("scene,source,comment\n0,0,looks right\n")
    with pytest.raises(ValueError, match="exists and is not an estimates CSV"):
        write_estimates(tmp_path / "notes.csv", rows)
    assert (tmp_path / "notes.csv").read_text().startswith("scene,source,comment")
    with pytest.raises(TypeError, match="write_estimates takes Estimates or rows"):
        write_estimates(tmp_path / "short.csv", [(0, 0, 10.0, 5.0)])
    assert not (tmp_path / "short.csv").exists()
    # a row of more cells than the columns (one cell with no name in the header) and a
    # folder given as the file are refused, nothing written (a mutation review: both passed)
    with pytest.raises(TypeError, match="write_estimates takes Estimates or rows"):
        write_estimates(tmp_path / "long.csv", [(0, 0, 10.0, 5.0, 3.0, 0.5, 1)])
    assert not (tmp_path / "long.csv").exists()
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(ValueError, match="d.csv is a folder; give the estimates file's name"):
        write_estimates(tmp_path / "d.csv", rows)


def test_the_order_is_decided_on_the_scene_s_snapshots_and_antennas(monkeypatch):
    """Headless: the residual rule reads the nested costs of 0..k_max sources with the
    scene's (L, M) = y's [B, L, M]; with a head, the low-SNR test reads the costs with
    (L, M) and low-SNR scenes get ``low_snr_balance``, the others the head's own (a
    mutation review: L and M swapped, which the default system's L = M = 16 hides, the
    costs of sources beyond k_max read, and the balances exchanged, passed). Stubbed."""
    from types import SimpleNamespace

    import risloc.pipeline.learned as learned

    y = torch.zeros(2, 6, 4, dtype=torch.complex64)  # L = 6 snapshots, M = 4 antennas
    fit = SimpleNamespace(costs=torch.arange(12.0).reshape(2, 6))  # 0..5 sources
    seen = []
    monkeypatch.setattr(learned, "residual_order", lambda c, L, M: seen.append(
        (c.shape[1], L, M)) or torch.ones(2, dtype=torch.int64))
    pipe = SimpleNamespace(order_head=None, system=SimpleNamespace(K_max=5))
    learned.LearnedPipeline.decide_order(pipe, None, fit, y, k_max=2)
    assert seen == [(3, 6, 4)]
    monkeypatch.setattr(learned, "estimated_snr_db", lambda c, L, M: seen.append((L, M))
                        or torch.tensor([-3.0, 10.0]))
    pipe = SimpleNamespace(low_snr_db=0.5, low_snr_balance=0.0)
    got = learned.LearnedPipeline.head_balance(pipe, fit, y, SimpleNamespace(balance=0.25))
    assert seen[-1] == (6, 4) and got.tolist() == [0.0, 0.25]


def test_the_polish_starts_from_the_repaired_sources(monkeypatch):
    """Stage 5 with repair: NF-MLE starts from the K sources repair_chosen returns, with
    the known-K fit config when K is given, and the cancelling-pair split gets its result
    (a mutation review: the repair's result dropped passed where the repair changed
    nothing). Stubbed."""
    from types import SimpleNamespace

    import risloc.pipeline.learned as learned

    theta = torch.zeros(1, 5, 3)
    repaired = torch.full((1, 5, 3), 0.5)
    calls = {}
    monkeypatch.setattr(learned, "repair_chosen", lambda y, H, c, th, K, s, cfg, n: (
        calls.update(repair=(th, cfg, n)) or repaired))
    monkeypatch.setattr(learned, "nfmle_fit", lambda y, H, c, init, *a, **k: (
        calls.update(init=init) or "refined"))
    monkeypatch.setattr(learned, "separate_cancelling", lambda y, H, c, est, *a: est)
    pipe = SimpleNamespace(chosen_repairs=2, system=None, polish_config=None,
                           _fit_config=lambda known: ("known" if known else "decided"))
    K = torch.tensor([2])
    out = learned.LearnedPipeline.polish(pipe, None, None, None, SimpleNamespace(theta=theta),
                                         K, repair=True, known=True)
    assert out == "refined" and calls["repair"] == (theta, "known", 2)
    torch.testing.assert_close(calls["init"].azimuth[0, :2], torch.full((2,), 0.5))
    # K decided: the repair (where asked for) with the fit stage's own config; none unasked
    learned.LearnedPipeline.polish(pipe, None, None, None, SimpleNamespace(theta=theta), K,
                                   repair=True, known=False)
    assert calls.pop("repair") == (theta, "decided", 2)
    learned.LearnedPipeline.polish(pipe, None, None, None, SimpleNamespace(theta=theta), K)
    assert "repair" not in calls
    torch.testing.assert_close(calls["init"].azimuth[0, :2], torch.zeros(2))


def test_the_stages_read_a_column_K_and_refuse_one_outside_1_to_K_max(monkeypatch):
    """decide_order and polish given K: a MATLAB / pandas column [B, 1] is read as [B] (it
    raised a cryptic RuntimeError, or broadcast to [B, B] slots); K = 0 (which returned no
    sources, F1 0), K > K_max, 2.5 and a [B, B] K are refused by name at the stage's entry.
    Stubbed."""
    from types import SimpleNamespace

    import risloc.pipeline.learned as learned

    y = torch.zeros(2, 6, 4, dtype=torch.complex64)
    pipe = SimpleNamespace(order_head=None, system=SimpleNamespace(K_max=5))
    got = learned.LearnedPipeline.decide_order(pipe, None, None, y, torch.tensor([[2], [3]]))
    assert got.K.tolist() == [2, 3] and got.K.dtype == torch.int64
    assert learned.LearnedPipeline.decide_order(pipe, None, None, y, torch.tensor([5, 1])
                                                ).K.tolist() == [5, 1]  # K_max itself
    # one number for all scenes, as Localizer.localize and classical_localize take it (a
    # review: the stages alone refused it)
    assert learned.LearnedPipeline.decide_order(pipe, None, None, y, 2).K.tolist() == [2, 2]
    theta = torch.full((2, 5, 3), 0.25)
    calls = {}
    monkeypatch.setattr(learned, "nfmle_fit", lambda y, H, c, init, *a, **k: (
        calls.update(init=init) or "refined"))
    monkeypatch.setattr(learned, "separate_cancelling", lambda y, H, c, est, *a: est)
    polish = SimpleNamespace(chosen_repairs=1, system=None, polish_config=None,
                             _fit_config=lambda known: "cfg")
    learned.LearnedPipeline.polish(polish, None, None, None, SimpleNamespace(theta=theta),
                                   torch.tensor([[2], [3]]))
    assert calls["init"].K.tolist() == [2, 3] and calls["init"].azimuth.shape == (2, 5)
    assert calls["init"].mask.sum(-1).tolist() == [2, 3]
    for K, error, match in (
            (torch.tensor([0, 2]), ValueError, r"decide_order: K must lie in 1..K_max=5, got 0 "
             r"in scene 0 \(K = 0 would return no sources\)"),
            (torch.tensor([1, 6]), ValueError, r"1..K_max=5, got 6 in scene 1"),
            (torch.tensor([2.5, 1.0]), ValueError, r"whole numbers of sources, got 2.5 in "
             r"scene 0"),
            (torch.ones(2, 2, dtype=torch.int64), ValueError, r"K must be a number or hold one "
             r"value per scene \(2\), got shape \(2, 2\)"),
            (torch.tensor([True, True]), TypeError, r"decide_order: K must be an integer or "
             r"integers, got torch.bool")):  # (a mask, not counts)
        with pytest.raises(error, match=match):
            learned.LearnedPipeline.decide_order(pipe, None, None, y, K)
        with pytest.raises(error, match=match.replace("decide_order", "polish")):
            learned.LearnedPipeline.polish(polish, None, None, None,
                                           SimpleNamespace(theta=theta), K)


def test_a_stored_head_of_other_features_or_none_is_said_and_not_used(tmp_path, caplog):
    """A head stored with an older features version (or none given: version 1) is not used:
    the residual rule decides K, with a warning; a checkpoint without a head is said once
    per checkpoint and process, not when warn_headless is False or order_head is False,
    and order_head=False leaves a stored head out (load_learned_pipeline's docstring); a
    stored head's repair margin is the fit stage's (LearnedPipeline's docstring; a
    mutation review: an older version accepted, the warning on every load, order_head=False
    ignored, and the stored head's repair margin dropped, passed)."""
    import logging

    from risloc.inference.checkpoint import load_checkpoint, save_checkpoint
    from risloc.pipeline.learned import DEFAULT_MODEL, _stored_head, load_learned_pipeline
    from risloc.pipeline.order import FEATURES_VERSION

    state = load_checkpoint(DEFAULT_MODEL)
    caplog.set_level(logging.WARNING, logger="risloc.pipeline.learned")
    for version in (FEATURES_VERSION - 1, None):
        caplog.clear()
        head = {k: v for k, v in state["order_head"].items() if k != "features"}
        if version is not None:
            head["features"] = version
        assert _stored_head({**state, "order_head": head}, tmp_path / "old.pt") is None
        assert "computes version" in caplog.text and "residual rule" in caplog.text
    assert load_learned_pipeline(order_head=False).order_head is None
    broken = {k: v for k, v in state["order_head"].items() if k != "hidden"}
    with pytest.raises(ValueError, match="old.pt: unreadable order head"):
        _stored_head({**state, "order_head": broken}, tmp_path / "old.pt")
    # a field of the wrong type (TypeError) or weights not a dict (AttributeError): named
    # too (a mutation review: the TypeError dropped from the except passed)
    for field, bad in (("hidden", None), ("state_dict", None)):
        malformed = {**state["order_head"], field: bad}
        with pytest.raises(ValueError, match="old.pt: unreadable order head"):
            _stored_head({**state, "order_head": malformed}, tmp_path / "old.pt")
    # a broken source ranker: named as such (the head itself is fine)
    ranker = {k: v for k, v in state["order_head"]["ranker"].items() if k != "hidden"}
    save_checkpoint(tmp_path / "r.pt", {**state, "order_head": {**state["order_head"],
                                                                 "ranker": ranker}})
    with pytest.raises(ValueError, match="r.pt: unreadable source ranker"):
        load_learned_pipeline(tmp_path / "r.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found") as err:
        load_learned_pipeline(tmp_path / "gone.pt")
    assert "ships no default model" not in str(err.value)
    # the fit stage runs with the repair margin the head was fitted on, stored with it
    save_checkpoint(tmp_path / "m.pt", {**state, "order_head": {**state["order_head"],
                                                               "repair_margin": 0.75}})
    assert load_learned_pipeline(tmp_path / "m.pt").fit_config.repair_margin == 0.75
    del state["order_head"]
    save_checkpoint(tmp_path / "headless.pt", state)
    caplog.clear()
    load_learned_pipeline(tmp_path / "headless.pt", warn_headless=False)
    load_learned_pipeline(tmp_path / "headless.pt", order_head=False)
    assert caplog.text == ""
    for _ in range(2):
        assert load_learned_pipeline(tmp_path / "headless.pt").order_head is None
    assert caplog.text.count("has no order head") == 1


def test_a_resume_with_a_setting_the_first_run_had_not_is_refused(tmp_path):
    """resume: a setting given now that the interrupted run's record lacks is a difference
    too, named as the CLI option; resume and restart together are refused; restart says
    whether it discarded an interrupted run (a mutation review: settings only of the
    record compared, the exclusion dropped, and discarded set without a record, passed)."""
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    out = tmp_path / "est.csv"
    with pytest.raises(ValueError, match="resume .* and restart .* exclude each other"):
        EstimatesStream(out, {}, COLUMNS, resume=True, restart=True)
    fresh = EstimatesStream(out, {"inputs": ["a.h5"]}, COLUMNS, restart=True)
    assert not fresh.discarded  # nothing was there to discard
    fresh.append("0", 4, [(0, 0, 1.0, 2.0, 3.0, 0.5)])
    fresh.close()  # killed
    with pytest.raises(ValueError, match="its run had other settings: another --K"):
        EstimatesStream(out, {"inputs": ["a.h5"], "K": 2}, COLUMNS, resume=True)
    with EstimatesStream(out, {"inputs": ["a.h5"]}, COLUMNS, restart=True) as again:
        assert again.discarded and again.done == {}


def test_a_resume_over_an_unreadable_progress_record_names_it_and_restart(tmp_path):
    """A progress record edited by hand (not JSON, or without its fields) gave a bare
    JSONDecodeError or KeyError from --resume; it is named, with --restart as the way on."""
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    out = tmp_path / "est.csv"
    run = EstimatesStream(out, {"inputs": ["a.h5"]}, COLUMNS)
    run.append("0", 4, [(0, 0, 1.0, 2.0, 3.0, 0.5)])
    run.close()  # killed
    record = tmp_path / "est.csv.progress.json"
    good = json.loads(record.read_text())
    # (and fields of the wrong kind: a TypeError traceback or a bare int() or OS error before)
    wrong = [json.dumps({**good, **field}) for field in (
        {"done": {"0": "x"}}, {"done": {"0": None}}, {"bad": 5}, {"bytes": -3})]
    for text in ("{not json", '{"settings": {}}', "[]", *wrong):
        record.write_text(text)
        with pytest.raises(ValueError, match=r"cannot resume .*est.csv: its progress record "
                                             r"\(est.csv.progress.json\) is unreadable .*"
                                             "pass --restart"):
            EstimatesStream(out, {"inputs": ["a.h5"]}, COLUMNS, resume=True)
    with EstimatesStream(out, {"inputs": ["a.h5"]}, COLUMNS, restart=True) as again:
        assert again.discarded and again.done == {}


def test_a_network_trained_without_the_snr_is_never_given_it():
    """Stage 1: a given SNR reaches the network only where its recipe reads it (the
    shipped one's does not; module docstring of risloc.pipeline.learned; a mutation review:
    the SNR given to every network passed). Stubbed network."""
    from types import SimpleNamespace

    from risloc.pipeline.learned import LearnedPipeline

    seen = []
    pipe = SimpleNamespace(music=None, network=lambda y, H, c, snr, **k: seen.append(snr))
    y = torch.zeros(2, 3, 4, dtype=torch.complex64)
    for reads in (False, True):
        pipe.recipe = SimpleNamespace(reads_snr=reads)
        LearnedPipeline.forward(pipe, y, y, y, torch.tensor([10.0, math.nan]))
    assert seen[0] is None and seen[1].dtype == torch.float32 and float(seen[1][0]) == 10.0


def test_a_file_of_no_scene_file_0_and_an_elevation_past_float32_s_zenith(tmp_path):
    """n_scenes = 0 (a scene file without scenes) and file=0 are read as such; an elevation
    beyond +-90 deg (either way) by more than float32's rounding of pi / 2, or an infinite
    range, is refused, not written as +-90 or 'inf'; columns in any order are read; a scene
    beyond the file is named before a slot; write_estimates names a row by its line (a
    mutation review: each of these passed)."""
    from risloc.core.params import Estimates

    head = "scene,source,azimuth_deg,elevation_deg,range_m"
    (tmp_path / "h.csv").write_text(head + "\n")
    assert tuple(read_estimates(tmp_path / "h.csv", 0).K.shape) == (0,)
    (tmp_path / "m.csv").write_text(head + ",file\n0,0,1,1,2,0\n1,0,1,1,2,1\n")
    assert read_estimates(tmp_path / "m.csv", 2, file=0).K.tolist() == [1, 0]
    past = torch.tensor(math.pi / 2 + 1e-6)  # 90.00006 deg: no rounding of the zenith
    est = Estimates(K=torch.tensor([1]), azimuth=torch.tensor([[0.1]]),
                    elevation=torch.tensor([[0.2]]), range_m=torch.tensor([[2.0]]),
                    score=torch.tensor([[1.0]]))
    for field, value, says in (("elevation", past, r"within \+-pi / 2"),
                               ("elevation", -past, r"within \+-pi / 2"),
                               ("range_m", math.inf, "must be finite numbers")):
        bad = Estimates(K=est.K, azimuth=est.azimuth, elevation=est.elevation.clone(),
                        range_m=est.range_m.clone(), score=est.score)
        getattr(bad, field)[0, 0] = value
        with pytest.raises(ValueError, match="scene 0, source 0: .*" + says):
            write_estimates(tmp_path / "z.csv", bad)
        assert not (tmp_path / "z.csv").exists()
    # the nadir in float32 (-90.0000025 deg) is written as -90, which reads back
    est.elevation[0, 0] = -torch.tensor(math.pi / 2)
    write_estimates(tmp_path / "z.csv", est)
    assert read_estimates(tmp_path / "z.csv", 1).elevation[0, 0] == pytest.approx(-math.pi / 2)
    # columns in another order are read by their names; a scene beyond the file is named
    # as such before a source beyond slots=; a refused row is named by its line
    (tmp_path / "r.csv").write_text("file,range_m,source,scene,elevation_deg,azimuth_deg\n"
                                    "0,2.5,0,1,-5,10\n")
    r = read_estimates(tmp_path / "r.csv", 2)
    assert r.K.tolist() == [0, 1] and float(r.range_m[1, 0]) == 2.5
    (tmp_path / "s.csv").write_text(head + "\n5,3,10,0,2\n")
    with pytest.raises(ValueError, match="line 2: scene 5, source 3; expected scenes 0..1"):
        read_estimates(tmp_path / "s.csv", 2, 3)
    with pytest.raises(ValueError, match=r"line 3: scene 0, source 0 again \(first on line 2"):
        write_estimates(tmp_path / "t.csv", [(0, 0, 10.0, 5.0, 3.0)] * 2)


def test_a_stream_after_a_finished_run_a_restart_and_a_resume_of_another_model(tmp_path,
                                                                                 monkeypatch):
    """A record left by a run killed between renaming its .part file and removing the
    record is of a complete run: the next run starts afresh, not refused as interrupted;
    --restart syncs the folder once the record is gone; a resume with another --checkpoint
    is refused, one with another --method names the method alone; the .part file's lock
    is released by finish, by a with block and by a refused start (a mutation review:
    each of these passed)."""
    import os

    from risloc.io.atomic import try_lock
    from risloc.pipeline import estimates_file
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    out, settings = tmp_path / "new" / "est.csv", {"inputs": ["a.h5"]}  # (a new folder)
    done = EstimatesStream(out, settings, COLUMNS)
    done.append("0", 4, [(0, 0, 1.0, 2.0, 3.0, 0.5)])
    os.replace(done.part, out)  # finish, killed before the record went
    done.close()
    again = EstimatesStream(out, settings, COLUMNS)
    assert not again.resumed and again.done == {}
    again.finish()
    with open(out, "rb") as f:  # finish released the lock
        assert try_lock(f)
    assert again.record.exists() is False
    # --restart: the folder synced after the record is removed, before the new .part
    first = EstimatesStream(out, settings, COLUMNS)
    first.append("0", 4, [(0, 0, 1.0, 2.0, 3.0, 0.5)])
    first.close()
    synced = []
    monkeypatch.setattr(estimates_file, "fsync_folder",
                        lambda p: synced.append((p, first.record.exists())))
    EstimatesStream(out, settings, COLUMNS, restart=True).close()
    monkeypatch.undo()
    assert synced == [(out.parent, False)], synced
    # a learned run's model: another checkpoint is no resume; another method names the
    # method, not the checkpoint and bf16 that follow from it
    learned = {"method": "learned", "checkpoint": "a.pt", "bf16": True}
    with EstimatesStream(out, learned, COLUMNS, restart=True) as run:  # (lock released)
        run.append("0", 4, [(0, 0, 1.0, 2.0, 3.0, 0.5)])
    with pytest.raises(ValueError, match="other settings: another --checkpoint. To start"):
        EstimatesStream(out, {**learned, "checkpoint": "b.pt"}, COLUMNS, resume=True)
    with pytest.raises(ValueError, match="other settings: another --method. To start"):
        EstimatesStream(out, {"method": "classical", "checkpoint": None, "bf16": None},
                        COLUMNS, resume=True)
    # a refused start keeps no lock, even while its error is held (as an interactive
    # session holds the last one)
    with pytest.raises(ValueError, match="--resume to continue it") as refused:
        EstimatesStream(out, learned, COLUMNS)
    with EstimatesStream(out, learned, COLUMNS, resume=True) as run:
        assert run.resumed and run.done == {"0": 4} and refused.value is not None


def test_resolve_k_gives_int64_counts_and_refuses_complex_ones():
    """resolve_K's docstring: [B] int64 whatever the caller's type (whole floats, a NumPy
    uint8); a complex K is no count, even with a zero imaginary part (a mutation review:
    float K handed on as float, and complex K cast to its real part, passed)."""
    from risloc.pipeline.localizer import resolve_K

    for K in (2.0, np.array([2.0, 1.0, 3.0]), np.array([2, 1, 3], np.uint8),
              torch.tensor(2, dtype=torch.int16)):
        t = resolve_K(K, 3, 5)
        assert t.dtype == torch.int64 and t.shape == (3,), K
    with pytest.raises(TypeError, match="K must be an integer or integers, got torch.complex"):
        resolve_K(np.array([1 + 0j, 2, 3]), 3, 5)
    # every scene's K whole, not only some (a mutation review: 1.5 beside whole counts was
    # truncated to 1)
    with pytest.raises(ValueError, match=r"K must hold whole numbers of sources, got 1.5 in "
                                         r"scene 1"):
        resolve_K(np.array([2.0, 1.5, 3.0]), 3, 5)


def test_the_forward_stage_blends_with_the_recipes_beta_and_the_slots_skip_the_covariance():
    """Stage 1: with MUSIC proposing, R_blend is forward_blend's with the recipe's beta
    (0.3 for the shipped model), as in training; with the slots proposing, the network's
    covariance part is skipped (F None) and R_samp, R_blend are None (a mutation review:
    1 - beta, covariance=True on the slots path, and 5 MUSIC candidates, passed)."""
    from risloc.inference.forward import forward_blend
    from risloc.pipeline.learned import inference_music_config, load_learned_pipeline

    pipe = load_learned_pipeline()
    sc = simulate_range(0, 1, pipe.system, SceneConfig(), split="test", seed=5, K=2,
                        snr_db=10.0)
    blend = pipe.recipe.blend
    with torch.no_grad():
        slots = pipe.forward(sc.y, sc.H, sc.codes)
        assert slots.out.F is None and slots.R_samp is None and slots.R_blend is None
        pipe.music = inference_music_config(pipe.fov)
        assert (pipe.music.n_candidates, pipe.music.refine_iterations) == (6, 3)  # docstring
        got = pipe.forward(sc.y, sc.H, sc.codes).R_blend
        want, other = (forward_blend(pipe.network, sc.y, sc.H, sc.codes, None, beta, blend,
                                     check=False).R_blend for beta in (blend.beta,
                                                                       1 - blend.beta))
    assert blend.beta != 0.5
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert float((got - other).abs().max()) > 1e-3 * float(want.abs().max())


def test_the_order_head_decides_with_the_low_snr_balance_of_each_scene(monkeypatch):
    """decide_order with a head: the head decides on the order features with k_max and the
    per-scene balance of head_balance, and its probabilities are returned (a mutation
    review: the balance left out, the head's own everywhere, passed). Stubbed."""
    from types import SimpleNamespace

    import risloc.pipeline.learned as learned

    monkeypatch.setattr(learned, "order_features", lambda fit, y, logits: "x")
    seen = []
    probs = torch.tensor([[0.5, 0.5]])

    class Head:
        balance = 0.25

        def decide(self, x, k_max, balance):
            seen.append((x, k_max, balance))
            return torch.tensor([1])

        def __call__(self, x):
            return SimpleNamespace(probabilities=probs)

    balance = torch.tensor([0.0])
    ranker = object()
    pipe = SimpleNamespace(order_head=Head(), system=SimpleNamespace(K_max=5),
                           head_balance=lambda fit, y, h: balance, source_ranker=ranker,
                           ranking=lambda fwd, fit, y, x, r: ("ranking", x, r))
    fwd = SimpleNamespace(out=SimpleNamespace(K_logits=None))
    y = torch.zeros(1, 2, 2, dtype=torch.complex64)
    got = learned.LearnedPipeline.decide_order(pipe, fwd, None, y, k_max=3)
    assert seen == [("x", 3, balance)] and got.probabilities is probs
    assert got.K.tolist() == [1] and got.ranking == ("ranking", "x", ranker)


def test_the_polish_repairs_only_when_asked(monkeypatch):
    """Stage 5 without repair (K decided, ``repair_decided`` off): NF-MLE starts from the
    nested fit's own sources and repair_chosen is never called (a mutation review: the
    repair run whatever ``repair`` says passed). Stubbed."""
    from types import SimpleNamespace

    import risloc.pipeline.learned as learned

    theta = torch.full((1, 5, 3), 0.25)
    calls = {}
    monkeypatch.setattr(learned, "repair_chosen", lambda *a: calls.update(repair=a) or theta)
    monkeypatch.setattr(learned, "nfmle_fit", lambda y, H, c, init, *a, **k: (
        calls.update(init=init) or "refined"))
    monkeypatch.setattr(learned, "separate_cancelling", lambda y, H, c, est, *a: est)
    pipe = SimpleNamespace(chosen_repairs=1, system=None, polish_config=None,
                           _fit_config=lambda known: "cfg")
    out = learned.LearnedPipeline.polish(pipe, None, None, None, SimpleNamespace(theta=theta),
                                         torch.tensor([2]), repair=False)
    assert out == "refined" and "repair" not in calls
    torch.testing.assert_close(calls["init"].azimuth[0, :2], torch.full((2,), 0.25))



def test_the_fit_stage_takes_a_third_coordinate_up_to_twice_one_over_the_nearest_range():
    """_check_candidates: 1/range in (0, 2 / range_m[0]] passes (a source up to twice as
    near as the field of view's nearest range, as its message says); 0 and just above the
    bound are refused (a mutation review: the bound halved to 1 / range_m[0] passed)."""
    from risloc.config import FieldOfView
    from risloc.pipeline.learned import _check_candidates

    fov = FieldOfView(range_m=(0.5, 10.0))
    cand = torch.tensor([[[0.1, 0.0, 0.2], [0.0, 0.1, 1.5 / 0.5], [-0.1, 0.0, 2 / 0.5]]])
    _check_candidates(cand, 1, 3, fov)  # 1/range 3 and 4 > 1 / 0.5 = 2: accepted
    for bad in (0.0, 2 / 0.5 * 1.01):
        out = cand.clone()
        out[0, 1, 2] = bad
        with pytest.raises(ValueError, match=r"outside \(0, 4\].*pass 1/range"):
            _check_candidates(out, 1, 3, fov)

@st.composite
def _estimates(draw):
    """float64 Estimates of 1..4 scenes, 1..3 slots, any K (0 too) per scene, NaN-padded,
    positions anywhere the CSV takes them: azimuth in [-180, 180], elevation in [-90, 90]
    (both ends included), range in [1e-3, 1e4] m."""
    B, slots = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    K = [draw(st.integers(0, slots)) for _ in range(B)]
    vals = {n: torch.full((B, slots), math.nan, dtype=torch.float64)
            for n in ("azimuth", "elevation", "range_m", "score")}
    for b, k in enumerate(K):
        for s in range(k):
            vals["azimuth"][b, s] = math.radians(draw(st.floats(-180, 180)))
            vals["elevation"][b, s] = math.radians(draw(st.floats(-90, 90)))
            vals["range_m"][b, s] = draw(st.floats(1e-3, 1e4))
            vals["score"][b, s] = draw(st.floats(-1e6, 1e6))
    return Estimates(K=torch.tensor(K, dtype=torch.int64), **vals)


def _same_to_csv_precision(back, est):
    """back (read from the CSV, float32) is est to its 6 decimals (angles in degrees, range
    in metres) and 6 significant digits (score), NaN exactly where est is."""
    assert back.K.tolist() == est.K.tolist()
    f32 = 1.2e-7  # (read back as float32: half its epsilon, relative)
    for name, atol, rtol in (("azimuth", math.radians(6e-7), f32), ("elevation",
                             math.radians(6e-7), f32), ("range_m", 6e-7, f32),
                             ("score", 1e-30, 6e-6)):
        got, want = getattr(back, name).double(), getattr(est, name)
        assert torch.equal(torch.isnan(got), torch.isnan(want)), name
        assert torch.allclose(got.nan_to_num(0), want.nan_to_num(0), atol=atol, rtol=rtol), \
            (name, got, want)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.lists(_estimates(), min_size=1, max_size=3))
def test_estimates_written_and_read_back_are_the_same_to_the_csv_s_precision(parts):
    """Each part written alone reads back as itself; all parts as one CSV of several input
    files (a ``file`` column) read back file by file (file=i) as part i."""
    import csv
    import tempfile
    from pathlib import Path

    from risloc.pipeline.estimates_file import COLUMNS

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for est in parts:
            path = write_estimates(folder / "e.csv", est)
            slots = est.azimuth.shape[-1]
            _same_to_csv_precision(read_estimates(path, len(est), slots), est)
        several = folder / "several.csv"
        with several.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("file", *COLUMNS))
            w.writerows((i, *r) for i, est in enumerate(parts) for r in estimate_rows(est))
        for i, est in enumerate(parts):
            if len(parts) > 1 or int(est.K.sum()):  # (file 0 alone: nothing to choose)
                back = read_estimates(several, len(est), est.azimuth.shape[-1], file=i)
                _same_to_csv_precision(back, est)


def test_a_system_whose_order_test_cannot_call_a_second_source_without_an_snr_is_warned_of(
        caplog, monkeypatch):
    """A review: M = 4, L = 10, K = 2 noise-free came back K = 1 without an SNR (the
    1-source fit's 28.5 residual dimensions are below the penalty of 29 nats: its noise
    level keeps one source whatever the second explains); given the SNR or K, both."""
    import logging

    import risloc.pipeline.localizer as localizer

    monkeypatch.setattr(localizer, "_WARNED", [])
    system = {"M": 4, "L": 10, "K_max": 2, "N_H": 6, "N_V": 4}
    with caplog.at_level(logging.WARNING, logger="risloc.pipeline.localizer"):
        loc = Localizer(system, "classical")
    assert "cannot call more than 1 source(s)" in caplog.text and "28.5" in caplog.text
    sc = simulate_range(0, 2, loc.system, SceneConfig(), seed=4, split="test", K=2,
                        snr_db=300.0)
    assert loc.localize(sc.y, sc.H, sc.codes).to_numpy()["K"].tolist() == [1, 1]  # the limit
    assert loc.localize(sc.y, sc.H, sc.codes, snr_db=300.0).to_numpy()["K"].tolist() == [2, 2]
    caplog.clear()
    monkeypatch.setattr(localizer, "_WARNED", [])
    with caplog.at_level(logging.WARNING, logger="risloc.pipeline.localizer"):
        Localizer({**system, "L": 11}, "classical")  # 31.5 dimensions above 30.9 nats
        Localizer({}, "classical")  # the default system: 186 and more above 40
    assert caplog.text == ""
    # the first k that is cut short is named (K_max = 3: k = 1 and 2 are), and a K_max close
    # to M is cut short at K_max - 1 (M = 8, L = 16: 6 sources leave 23 dimensions; guide)
    for other, k in (({**system, "K_max": 3}, 1), ({"M": 8, "L": 16, "K_max": 7}, 6)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="risloc.pipeline.localizer"):
            Localizer(other, "classical")
        assert f"cannot call more than {k} source(s)" in caplog.text, caplog.text


def test_the_classical_localizer_is_invariant_to_what_leaves_the_likelihood_unchanged(system):
    # y_l = H diag(c_l) A s_l + n_l keeps its likelihood when the snapshots are permuted
    # (with their codes), the antennas permuted or mixed by one unitary Q (y -> Q y,
    # H -> Q H), y and H scaled by one complex constant, or y_l alone given a phase (s_l's
    # phase is random): K and the positions must not move beyond rounding
    sc = simulate_range(0, 3, system, SceneConfig(snr_db=(15.0, 15.0)), seed=3,
                        split="test", K=2)
    y, H, c = sc.y.to(torch.complex128), sc.H.to(torch.complex128), sc.codes
    g = torch.Generator().manual_seed(0)
    B, L, M = y.shape
    Q = torch.linalg.qr(torch.randn(B, M, M, dtype=torch.complex128, generator=g))[0]
    snap, ant = torch.randperm(L, generator=g), torch.randperm(M, generator=g)
    a = 0.3 * torch.exp(torch.tensor(2.1j, dtype=torch.complex128))
    phase = torch.exp(2j * math.pi * torch.rand(B, L, 1, dtype=torch.float64, generator=g))
    loc = Localizer(system, "classical", workers=1)
    ref = loc.localize(y, H, c).estimates
    assert ref.K.tolist() == [2, 2, 2]
    for name, (yt, Ht, ct) in {"snapshots permuted": (y[:, snap], H, c[:, snap]),
                                "antennas permuted": (y[..., ant], H[:, ant], c),
                                "antennas mixed": (y @ Q.mT, Q @ H, c),
                                "complex scale": (a * y, a * H, c),
                                "snapshot phases": (phase * y, H, c)}.items():
        est = loc.localize(yt, Ht, ct).estimates
        assert torch.equal(est.K, ref.K), name
        for t in ("azimuth", "elevation"):
            torch.testing.assert_close(getattr(est, t), getattr(ref, t), atol=1e-5, rtol=0,
                                       equal_nan=True, msg=name)
        torch.testing.assert_close(1 / est.range_m, 1 / ref.range_m, atol=1e-4, rtol=0,
                                   equal_nan=True, msg=name)


def test_train_command_sets_the_fields_of_a_system_other_than_the_default():
    from risloc.config import SystemConfig
    from risloc.pipeline.localizer import train_command
    from risloc.training.config import load_train_config

    assert train_command(SystemConfig()) == "risloc train"
    mine = SystemConfig(N_H=8, N_V=6, wavelength=0.1, M=8, L=24)  # spacing lambda/2: implied
    cmd = train_command(mine)
    assert cmd == ("risloc train --set system.N_H=8 --set system.N_V=6 "
                   "--set system.wavelength=0.1 --set system.M=8 --set system.L=24")
    sets = cmd.split(" --set ")[1:]
    assert load_train_config("train_default", sets).system == mine  # the recipe it names
    odd = SystemConfig(wavelength=0.1, spacing=0.04, K_max=3)
    assert load_train_config(None, train_command(odd).split(" --set ")[1:]).system == odd
    # the default spacing, 0.15 m, is not lambda/2 at another wavelength: it must be set
    wide = SystemConfig(wavelength=0.1, spacing=0.15)
    assert train_command(wide) == ("risloc train --set system.wavelength=0.1 "
                                   "--set system.spacing=0.15")
    assert load_train_config(None, train_command(wide).split(" --set ")[1:]).system == wide


def test_a_localizer_shows_its_method_system_and_search_box():
    """The default object repr told a notebook nothing ('<... Localizer object at 0x...>')."""
    from risloc.config import FieldOfView, SystemConfig

    loc = Localizer(SystemConfig(N_H=8, N_V=8, M=8), "classical",
                    fov=FieldOfView(range_m=(0.1, 1.0)))
    assert repr(loc) == ("Localizer('classical', RIS 8x8 (N=64), M=8, L=16, lambda=0.3 m, "
                         "d=0.15 m, spherical, K_max=5; searching azimuth -60..60 deg, "
                         "elevation -30..30 deg, range 0.1..1 m)")


def test_a_given_snr_reaches_the_network_as_float32_and_to_moves_the_order_head():
    """Stage 1 hands a float64 SNR to an SNR-reading network as float32 on y's device, and
    LearnedPipeline.to moves the order head and the source ranker with the network (a
    mutation review: the dtype dropped, and the head left behind, passed). Stubbed network
    and head."""
    from types import SimpleNamespace

    from risloc.pipeline.learned import LearnedPipeline

    seen = []
    pipe = SimpleNamespace(music=None, recipe=SimpleNamespace(reads_snr=True),
                           network=lambda y, H, c, snr, **k: seen.append(snr))
    y = torch.zeros(2, 3, 4, dtype=torch.complex64)
    LearnedPipeline.forward(pipe, y, y, y, torch.tensor([10.0, 5.0], dtype=torch.float64))
    assert seen[0].dtype == torch.float32 and seen[0].tolist() == [10.0, 5.0]
    moved = []
    pipe = SimpleNamespace(network=SimpleNamespace(to=lambda d: moved.append(("net", d))),
                           order_head=SimpleNamespace(to=lambda d: moved.append(("head", d))),
                           source_ranker=SimpleNamespace(
                               to=lambda d: moved.append(("ranker", d))))
    assert LearnedPipeline.to(pipe, "cpu") is pipe
    assert moved == [("net", "cpu"), ("head", "cpu"), ("ranker", "cpu")]


def test_a_scene_estimated_at_exactly_low_snr_db_keeps_the_heads_balance(monkeypatch):
    """head_balance: 'below low_snr_db' is strict; a scene at exactly 0.5 dB keeps the
    head's own balance (a mutation review: <= passed). Stubbed SNR estimate."""
    from types import SimpleNamespace

    from risloc.pipeline import learned

    monkeypatch.setattr(learned, "estimated_snr_db",
                        lambda costs, L, M: torch.tensor([0.5, 0.25, 0.75]))
    pipe = SimpleNamespace(low_snr_db=0.5, low_snr_balance=0.0)
    y = torch.zeros(3, 2, 2, dtype=torch.complex64)
    got = learned.LearnedPipeline.head_balance(pipe, SimpleNamespace(costs=None), y,
                                               SimpleNamespace(balance=0.25))
    assert got.tolist() == [0.25, 0.0, 0.25]

"""The estimates CSV as users write it for `risloc evaluate --estimates`."""

import math

import numpy as np
import pytest

from risloc.pipeline import read_estimates

HEADER = "scene,source,azimuth_deg,elevation_deg,range_m"


def test_numpy_savetxt_s_csv_reads_whole_floats_and_its_commented_header(tmp_path):
    """np.savetxt writes every cell as a float (0.000000000000000000e+00) under a header
    commented '# '; a pandas float column writes 1.0: read as the whole numbers they are."""
    rows = np.array([[0, 0, 10.0, -5.0, 2.5], [1, 0, -20.0, 5.0, 3.0], [1, 1, 30.0, 0.0, 4.0]])
    np.savetxt(tmp_path / "np.csv", rows, delimiter=",", header=HEADER)
    est = read_estimates(tmp_path / "np.csv", 3)
    assert est.K.tolist() == [1, 2, 0]
    assert math.degrees(float(est.azimuth[1, 1])) == pytest.approx(30.0)
    assert float(est.range_m[0, 0]) == 2.5
    (tmp_path / "pd.csv").write_text(f"{HEADER}\n0.0,0.0,10,-5,2.5\n1.0,1.0,1,1,1\n"
                                     "1.0,0.0,2,2,2\n")
    assert read_estimates(tmp_path / "pd.csv", 2).K.tolist() == [1, 2]
    (tmp_path / "half.csv").write_text(f"{HEADER}\n0,0,10,-5,2.5\n0.5,0,1,1,1\n")
    with pytest.raises(ValueError, match=r"half.csv, line 3: scene and source must be whole"):
        read_estimates(tmp_path / "half.csv", 2)


def test_a_spreadsheet_s_empty_rows_after_the_last_are_skipped_not_inside(tmp_path):
    (tmp_path / "x.csv").write_text(f"{HEADER}\r\n0,0,10,-5,2.5\r\n,,,,\r\n,,,,\r\n\r\n")
    assert read_estimates(tmp_path / "x.csv", 1).K.tolist() == [1]
    (tmp_path / "mid.csv").write_text(f"{HEADER}\n0,0,10,-5,2.5\n,,,,\n1,0,1,1,1\n")
    with pytest.raises(ValueError, match=r"mid.csv, line 3: scene and source"):
        read_estimates(tmp_path / "mid.csv", 2)
    # a last row with a cell beyond the header's is not empty (a review: dropped unseen)
    (tmp_path / "beyond.csv").write_text(f"{HEADER}\n0,0,10,-5,2.5\n,,,,,9\n")
    with pytest.raises(ValueError, match=r"beyond.csv, line 3: scene and source"):
        read_estimates(tmp_path / "beyond.csv", 1)


def test_tabs_and_decimal_commas_are_named_as_such(tmp_path):
    (tmp_path / "tab.csv").write_text(HEADER.replace(",", "\t") + "\n0\t0\t10\t-5\t2.5\n")
    with pytest.raises(ValueError, match=r"separated by '\\t': an estimates CSV is comma-sep"):
        read_estimates(tmp_path / "tab.csv", 1)
    (tmp_path / "semi.csv").write_text(HEADER.replace(",", ";") + "\n0;0;10;-5;2,5\n")
    with pytest.raises(ValueError, match=r"separated by ';': an estimates CSV is comma-sep"):
        read_estimates(tmp_path / "semi.csv", 1)
    (tmp_path / "comma.csv").write_text(f'{HEADER}\n0,0,"10,5",-5,"2,5"\n')
    with pytest.raises(ValueError, match=r"comma.csv, line 2: .*\(decimal commas: write "
                                         r"numbers with a decimal point\)"):
        read_estimates(tmp_path / "comma.csv", 1)
    (tmp_path / "text.csv").write_text(f"{HEADER}\n0,0,ten,-5,2.5\n")
    with pytest.raises(ValueError, match=r"line 2: .*'ten'.*\}$"):  # no comma hint
        read_estimates(tmp_path / "text.csv", 1)

"""The estimates CSV as users write it for `risloc evaluate --estimates`."""

import math
from pathlib import Path

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


def test_empty_trailing_rows_of_spaces_or_fewer_cells_are_skipped_too(tmp_path):
    """A spreadsheet's trailing rows of blank cells (spaces) or of fewer cells than the
    header (',,': the rest read as None) are skipped like ',,,,' (a mutation review)."""
    (tmp_path / "x.csv").write_text(f"{HEADER}\n0,0,10,-5,2.5\n1,0,1,1,1\n ,  ,,,\n,,\n")
    assert read_estimates(tmp_path / "x.csv", 2).K.tolist() == [1, 1]


def test_a_header_s_hints_only_where_they_hold(tmp_path):
    """'separated by ;' only for a header that is one name (a comma-separated header with a
    stray ';' is shown as it is); a rename only for a name that the column's is with its
    unit (a spreadsheet's trailing empty name is none: a mutation review)."""
    (tmp_path / "s.csv").write_text("scene;source,azimuth_deg,elevation_deg,range_m\n")
    with pytest.raises(ValueError, match=r"; its header: scene;source,azimuth_deg") as err:
        read_estimates(tmp_path / "s.csv", 1)
    assert "separated by" not in str(err.value)
    (tmp_path / "r.csv").write_text("scene,source,azimuth,elevation_deg,range_m,\n0,0,1,1,1\n")
    with pytest.raises(ValueError, match=r"\(rename azimuth as azimuth_deg: angles in "
                                         r"degrees, range in metres\)$"):
        read_estimates(tmp_path / "r.csv", 1)
    (tmp_path / "az.csv").write_text("scene,source,az,elevation_deg,range_m\n0,0,1,1,1\n")
    with pytest.raises(ValueError, match=r"its header: scene,source,az,elevation_deg,"
                                         r"range_m$"):
        read_estimates(tmp_path / "az.csv", 1)


def test_decimal_commas_are_named_in_negative_or_spaced_cells_not_thousands(tmp_path):
    hint = "(decimal commas: write numbers with a decimal point)"
    for cells in ('10,"-5,5",2.5', '10,-5," 2,5"'):
        (tmp_path / "c.csv").write_text(f"{HEADER}\n0,0,{cells}\n")
        with pytest.raises(ValueError, match="line 2: scene and source") as err:
            read_estimates(tmp_path / "c.csv", 1)
        assert str(err.value).endswith(hint), cells
    (tmp_path / "k.csv").write_text(f'{HEADER}\n0,0,10,-5,"1,234.5"\n')  # a thousands ','
    with pytest.raises(ValueError, match="line 2: scene and source") as err:
        read_estimates(tmp_path / "k.csv", 1)
    assert hint not in str(err.value)


def test_an_elevation_of_90_deg_is_read_and_beyond_it_is_not(tmp_path):
    (tmp_path / "e.csv").write_text(f"{HEADER}\n0,0,10,90,1\n1,0,10,-90,1\n")
    assert read_estimates(tmp_path / "e.csv", 2).K.tolist() == [1, 1]
    (tmp_path / "e.csv").write_text(f"{HEADER}\n0,0,10,-90.0001,1\n")
    with pytest.raises(ValueError, match=r"line 2: elevation_deg -90.0001 lies beyond"):
        read_estimates(tmp_path / "e.csv", 1)


def test_a_part_file_one_byte_short_of_its_record_is_not_resumed(tmp_path):
    """Resuming truncates .part to the record's size: one byte short would be padded with
    a NUL byte, so it is refused like any shorter .part (a mutation review)."""
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    out, settings = tmp_path / "est.csv", {"inputs": ["a.h5"]}
    first = EstimatesStream(out, settings, COLUMNS)
    first.append("0", 1, [(0, 0, 1.0, 2.0, 3.0, 0.5)])
    first.close()
    size = first.part.stat().st_size
    with open(first.part, "r+b") as f:
        f.truncate(size - 1)
    with pytest.raises(ValueError, match=r"est.csv.part is shorter than its progress"):
        EstimatesStream(out, settings, COLUMNS, resume=True)
    assert first.part.stat().st_size == size - 1


def test_no_scene_reads_empty_a_file_index_of_1_5_is_refused_and_one_file_needs_file(tmp_path):
    """A scene file of no scene reads an empty CSV; a `file` cell of 1.5 is refused; rows
    of file 1 alone are not read as file 0's without file= (a mutation review)."""
    from risloc.pipeline.estimates_file import OneFileOfSeveralError

    (tmp_path / "n.csv").write_text(f"{HEADER}\n")
    assert read_estimates(tmp_path / "n.csv", 0).K.tolist() == []
    (tmp_path / "f.csv").write_text(f"{HEADER},file\n0,0,10,20,1,1.5\n")
    with pytest.raises(ValueError, match=r"line 2: file must be the index .* got '1.5'"):
        read_estimates(tmp_path / "f.csv", 1, file=1)
    (tmp_path / "g.csv").write_text(f"{HEADER},file\n0,0,10,20,1,1\n")
    with pytest.raises(OneFileOfSeveralError, match=r"rows of file 1 alone: pass file=1"):
        read_estimates(tmp_path / "g.csv", 1)
    assert read_estimates(tmp_path / "g.csv", 1, file=1).K.tolist() == [1]


def test_an_elevation_past_90_deg_is_refused_when_written(tmp_path):
    """90.5 deg is refused, no file left; 90 deg is written (a mutation review: a tolerance
    of 1 deg passed)."""
    import torch

    from risloc.core.params import Estimates
    from risloc.pipeline import write_estimates

    def est(el_deg):
        return Estimates(K=torch.tensor([1]), azimuth=torch.tensor([[0.1]]),
                         elevation=torch.tensor([[math.radians(el_deg)]]),
                         range_m=torch.tensor([[2.0]]), score=torch.tensor([[1.0]]))

    with pytest.raises(ValueError, match=r"scene 0, source 0: .* elevation within"):
        write_estimates(tmp_path / "e.csv", est(90.5))
    assert not (tmp_path / "e.csv").exists()
    write_estimates(tmp_path / "e.csv", est(90.0))
    assert read_estimates(tmp_path / "e.csv", 1).K.tolist() == [1]


def test_a_resume_of_another_method_names_the_method_alone(tmp_path):
    """The learned method's bf16/checkpoint follow from --method: not named beside it (a
    mutation review)."""
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    out = tmp_path / "est.csv"
    EstimatesStream(out, {"method": "music", "bf16": None}, COLUMNS).close()
    with pytest.raises(ValueError, match=r"other settings: another --method\. To start"):
        EstimatesStream(out, {"method": "net", "bf16": True}, COLUMNS, resume=True)


def test_a_read_only_part_file_is_named_with_what_to_do(tmp_path, monkeypatch):
    """An interrupted run's .part that cannot be opened for writing (read-only; faked: root
    ignores the mode) is a ValueError naming it and the way out, not a raw errno."""
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    out = tmp_path / "est.csv"
    EstimatesStream(out, {"inputs": ["a.h5"]}, COLUMNS).close()
    opened = Path.open

    def refuse(self, mode="r", *args, **kw):
        if self.name == "est.csv.part" and mode != "r":
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, mode, *args, **kw)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ValueError, match=r"est\.csv: .*est\.csv\.part is not writable "
                                         r"\(Permission denied\): make it writable"):
        EstimatesStream(out, {"inputs": ["a.h5"]}, COLUMNS, resume=True)


def test_a_folder_refusing_the_part_file_is_named_not_a_part_to_chmod(tmp_path, monkeypatch):
    """A review: where no .part exists and its folder refuses a new file, the error named a
    read-only .part holding an interrupted run (faked: root ignores the mode)."""
    from risloc.pipeline.estimates_file import COLUMNS, EstimatesStream

    opened = Path.open

    def refuse(self, mode="r", *args, **kw):
        if self.name == "x.csv.part" and mode == "ab" and not self.exists():
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, mode, *args, **kw)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ValueError, match=r"x\.csv: cannot create x\.csv\.part in .* "
                                         r"\(Permission denied\): give an --out in a "
                                         r"writable folder"):
        EstimatesStream(tmp_path / "x.csv", {}, COLUMNS)
    assert not (tmp_path / "x.csv.part").exists()

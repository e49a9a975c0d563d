import pytest

from risloc.io.atomic import atomic_path, write_csv_atomic, write_text_atomic


def test_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = write_text_atomic(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"


def test_csv_from_sequences_and_dicts(tmp_path):
    a = write_csv_atomic(tmp_path / "a.csv", ["x", "y"], [(1, 2), (3, 4)])
    b = write_csv_atomic(tmp_path / "b.csv", ["x", "y"], [{"x": 1, "y": 2}, {"x": 3, "y": 4}])
    assert a.read_text().splitlines() == b.read_text().splitlines() == ["x,y", "1,2", "3,4"]
    assert write_csv_atomic(tmp_path / "c.csv", ["x"], []).read_text().splitlines() == ["x"]

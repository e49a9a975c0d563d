"""The count of operations that would make the host wait for a GPU (risloc.core.syncs),
on the CPU: each kind the module names is counted, its neighbours without a wait are not
(a mutation review: nonzero and boolean indexing uncounted passed)."""

import torch

from risloc.core.syncs import SyncCounter


def test_each_kind_of_wait_is_counted_and_plain_operations_are_not():
    t = torch.tensor([1.0, -2.0, 3.0])
    with SyncCounter() as waits:
        torch.nonzero(t)  # output sized by the data
        t[t > 0]  # a boolean mask: nonzero first
        t.sum().item()  # a number on the host
        t.tolist()
        torch.linalg.solve(torch.eye(2), torch.ones(2))  # the singularity check
        torch.repeat_interleave(t, torch.tensor([1, 2, 0]))  # repeats without output_size
    kinds = [key.rsplit(" ", 1)[1] for key in waits.syncs.elements()]
    assert sorted(kinds) == sorted(["aten::nonzero", "aten::index", "aten::_local_scalar_dense",
                                    "Tensor.tolist", "aten::_linalg_check_errors",
                                    "aten::repeat_interleave"]), waits.syncs
    with SyncCounter() as none:
        t[torch.tensor([0, 2])]  # integer indices: no wait
        torch.where(t > 0, t, 0.0)
        torch.repeat_interleave(t, torch.tensor([1, 2, 0]), output_size=3)
        t * 2
    assert none.total == 0 and none.operations > 0, none.syncs
    counted = waits.total
    assert t.tolist() == [1.0, -2.0, 3.0] and waits.total == counted  # tolist restored


def test_the_other_kinds_of_wait_are_counted_too():
    """unique, masked_select, assigning through a boolean mask and a uint8 mask (deprecated,
    still a mask) wait as the first test's kinds do (a mutation review: each left out of
    the sets passed; so did unique by dim, unique_consecutive and the functional
    index_put)."""
    import warnings

    t = torch.tensor([1.0, -2.0, 3.0])
    with SyncCounter() as waits, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (uint8 indexing is deprecated)
        torch.unique(t)
        torch.masked_select(t, t > 0)
        t.clone()[t > 0] = 0.0
        t[torch.tensor([1, 0, 1], dtype=torch.uint8)]
        torch.unique(t.view(3, 1), dim=0)
        torch.unique_consecutive(t)
        torch.index_put(t, (t > 0,), torch.tensor(0.0))
    kinds = sorted(key.rsplit(" ", 1)[1] for key in waits.syncs.elements())
    assert kinds == sorted(["aten::_unique2", "aten::masked_select", "aten::index_put_",
                            "aten::index", "aten::unique_dim", "aten::unique_consecutive",
                            "aten::index_put"]), waits.syncs


def _risloc_code(name: str, source: str) -> dict:
    """Functions compiled as if they were lines of a risloc module ``name``."""
    scope = {"torch": torch}
    exec(compile(source, f"/somewhere/risloc/{name}", "exec"), scope)
    return scope


def test_each_wait_is_told_by_the_innermost_risloc_line_and_its_route():
    """A wait inside a risloc function that another risloc function called is the inner
    one's line (never syncs.py's own, nor the caller's); one in a CPU_ROUTE function is
    tagged; by_line adds a line's operations; total counts every wait, several on a line."""
    inner = _risloc_code("inner.py", "def orthonormal_basis(t):\n"
                                     "    return t.sum().item(), t.sum().item()\n"
                                     "def plain(t):\n"
                                     "    return int(t[0]), torch.nonzero(t)\n")
    outer = _risloc_code("outer.py", "def run(inner, t):\n"
                                     "    inner['orthonormal_basis'](t)\n"
                                     "    return inner['plain'](t)\n")
    t = torch.tensor([1.0, -2.0, 3.0])
    with SyncCounter() as waits:
        outer["run"](inner, t)
    assert waits.syncs == {"inner.py:2 (CPU route) aten::_local_scalar_dense": 2,
                           "inner.py:4 aten::_local_scalar_dense": 1,
                           "inner.py:4 aten::nonzero": 1}
    assert waits.total == 4
    assert waits.by_line() == {"inner.py:2 (CPU route)": 2, "inner.py:4": 2}


def test_operations_count_what_is_not_a_view_by_part_and_tensors_from_host_data():
    t = torch.tensor([1.0, -2.0, 3.0])
    with SyncCounter() as c:
        t.view(3, 1).transpose(0, 1)  # views: no kernel
        assert c.operations == 0
        c.part = "a"
        t * 2
        c.part = "b"
        t + 1
        t - 1
        torch.tensor([1.0, 2.0])  # from Python data: a copy from the host
    assert c.operations == 3 + c.by_part[""] and c.by_part["a"] == 1 and c.by_part["b"] == 2
    assert sum(c.from_host.values()) == 1 and c.total == 0


def test_a_mask_behind_a_slice_waits_and_host_data_is_told_by_its_risloc_line():
    """A second mutation review: ``any`` of the indices a mask made ``all`` (``grid[:, mask]``
    uncounted) and a tensor from host data filed under "?" instead of its risloc line
    both passed."""
    t = torch.tensor([1.0, -2.0, 3.0])
    grid = torch.ones(2, 3)
    with SyncCounter() as waits:
        grid[:, t > 0]  # indices (None, mask): a mask still, behind a slice
        grid.clone()[:, t > 0] = 0.0
    kinds = sorted(key.rsplit(" ", 1)[1] for key in waits.syncs.elements())
    assert kinds == ["aten::index", "aten::index_put_"], waits.syncs
    code = _risloc_code("made.py", "def make():\n    return torch.tensor([1.0, 2.0])\n")
    with SyncCounter() as host:
        code["make"]()
    assert host.from_host == {"made.py:2": 1} and host.total == 0, host.from_host

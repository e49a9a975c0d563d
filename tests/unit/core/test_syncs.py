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

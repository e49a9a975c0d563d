"""GraphCache off CUDA (a direct call) and as a model's attribute (the CUDA replays
themselves: tests/integration/test_cuda.py, on a GPU)."""

import copy

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from risloc.config import SceneConfig, SystemConfig
from risloc.core.graphs import GraphCache, _synchronises
from risloc.model import CovarianceNet, ModelConfig
from risloc.simulation import simulate_batch


def test_off_cuda_the_call_is_direct():
    cache = GraphCache("test")
    calls = []

    def fn(x, none, y):
        calls.append(1)
        assert none is None
        return x + y, x * y

    x, y = torch.arange(3.0), torch.ones(3)
    s, p = cache(fn, (x, None, y), key="k")
    assert torch.equal(s, x + 1) and torch.equal(p, x) and len(calls) == 1 and len(cache) == 0


def test_copies_of_a_model_share_its_cache():
    m = CovarianceNet(SystemConfig(), ModelConfig(width=8, hidden=8))
    m.refine_graphs = GraphCache("refinement")
    assert copy.deepcopy(m).refine_graphs is m.refine_graphs
    assert AveragedModel(m).module.refine_graphs is m.refine_graphs
    assert all("refine" not in k for k in m.state_dict())  # not model state


def test_the_refinement_through_the_cache_is_the_refinement():
    torch.manual_seed(0)
    system = SystemConfig()
    m = CovarianceNet(system, ModelConfig(width=8, hidden=8)).eval()
    sc = simulate_batch(4, system, SceneConfig(snr_db=(15.0, 15.0)), torch.Generator()
                        .manual_seed(1))
    with torch.no_grad():
        direct = m(sc.y, sc.H, sc.codes, sc.snr_db)
        m.refine_graphs = GraphCache("refinement")
        cached = m(sc.y, sc.H, sc.codes, sc.snr_db)
    assert torch.equal(direct.slot_azimuth, cached.slot_azimuth)
    assert torch.equal(direct.slot_range, cached.slot_range)
    assert not torch.equal(direct.slot_azimuth, direct.learned[..., 0])  # it did refine


def test_the_device_is_that_of_the_first_tensor_given_and_failed_captures_do_not_count():
    """args may begin with None (an SNR not given); len counts captured graphs only."""
    cache = GraphCache("test")
    assert torch.equal(cache(lambda none, x: x * 2, (None, torch.ones(2))), torch.full((2,), 2.0))
    cache._captures["a layout whose capture failed"] = None
    assert len(cache) == 0


def test_only_torchs_synchronisation_error_marks_a_call_and_the_debug_mode_is_restored(
        monkeypatch):
    """The sync check (torch.cuda's debug mode, mocked: no GPU here) counts a call as
    synchronising on torch's error alone, raises any other error, and puts the caller's
    mode back every time (a mutation review: neither was tested off CUDA)."""
    modes = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def syncs():
        raise RuntimeError("called a synchronizing CUDA operation")

    def broken():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    assert _synchronises(syncs, ()) is True
    assert _synchronises(lambda: None, ()) is False
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _synchronises(broken, ())
    assert modes == ["error", 1] * 3


def test_off_cuda_means_any_device_but_cuda_not_only_the_cpu():
    """A call on another device (meta here; mps alike) is direct, never a capture (the
    module docstring: "Off CUDA it simply calls"; a mutation review: `type == "cpu"`
    passed the CPU-only tests)."""
    cache = GraphCache("test")
    x = torch.ones(3, device="meta")
    out = cache(lambda t: t * 2, (x,))
    assert out.device.type == "meta" and out.shape == (3,) and len(cache) == 0


class _OnCuda:
    """A stand-in for a CUDA tensor (no GPU here): what GraphCache reads of its args."""
    device, shape, dtype = torch.device("cuda"), (2,), torch.float32

    def clone(self):
        return self


@pytest.fixture
def mocked_cuda(monkeypatch):
    """torch.cuda's streams, graphs and sync check as no-ops, the capture running its
    body; graphs' _DISABLED put back after the test."""
    import contextlib
    from unittest import mock

    from risloc.core import graphs

    monkeypatch.setattr(graphs, "_DISABLED", False)
    for name in ("device", "stream", "graph"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: contextlib.nullcontext())
    for name in ("Stream", "current_stream", "CUDAGraph", "set_stream", "synchronize",
                 "set_sync_debug_mode"):
        monkeypatch.setattr(torch.cuda, name, mock.MagicMock())
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    return graphs


def test_a_capture_out_of_memory_is_raised_only_where_the_cache_asks_so(mocked_cuda):
    """(a mutation review: the capture's error handling was tested on a GPU only; a
    default cache turning OOM into a raise, or `raise_oom or` raising any error, passed)"""
    def fn(calls=[]):  # noqa: B006 - counts the calls: the third is the capture
        calls.append(1)
        if len(calls) % 3 == 0:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return torch.ones(2)

    with pytest.raises(torch.cuda.OutOfMemoryError):
        GraphCache("test", raise_oom=True)(lambda x: fn(), (_OnCuda(),))
    assert not mocked_cuda._DISABLED
    out = GraphCache("test")(lambda x: fn(), (_OnCuda(),))  # default: eager, graphs off
    assert torch.equal(out, torch.ones(2)) and mocked_cuda._DISABLED


def test_a_graphed_call_that_returns_a_list_is_refused(mocked_cuda):
    """(a mutation review: `tuple or all(...)` let a list of tensors through)"""
    with pytest.raises(TypeError, match="not list"):
        GraphCache("test")(lambda x: [torch.ones(2)], (_OnCuda(),))

"""GraphedLocalize's passes of a fixed size (the CUDA capture itself: tests/integration/
test_cuda.py, on a GPU)."""

import pytest
import torch

from risloc.config import SceneConfig
from risloc.core.checks import InputError
from risloc.pipeline import Localizer
from risloc.pipeline.graphs import GraphedLocalize, _padded_rows
from risloc.pipeline.learned import load_learned_pipeline
from risloc.simulation import simulate_range


def test_padded_rows_repeat_the_last_scene():
    assert _padded_rows(8, 11, 8, torch.device("cpu")).tolist() == [8, 9, 10, 10, 10, 10, 10,
                                                                      10]
    assert _padded_rows(0, 4, 4, torch.device("cpu")).tolist() == [0, 1, 2, 3]


def test_passes_of_a_fixed_size_give_the_whole_call_estimates():
    pipe = load_learned_pipeline()
    sc = simulate_range(0, 11, pipe.system, SceneConfig(), 0, "test", snr_db=10.0)
    whole = pipe.localize(sc.y, sc.H, sc.codes)
    passes = GraphedLocalize(pipe, batch=4)(sc.y, sc.H, sc.codes)  # 4 + 4 + (3 + 1 copy)
    assert len(passes) == 11
    assert torch.equal(passes.K, whole.K)
    # equal to float32 rounding (the thread count changes the reductions' order)
    for f, atol, rtol in (("azimuth", 1e-5, 0), ("elevation", 1e-5, 0), ("range_m", 0, 1e-4)):
        a, b = getattr(passes, f), getattr(whole, f)
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.allclose(a.nan_to_num(0.0), b.nan_to_num(0.0), atol=atol, rtol=rtol)
    known = GraphedLocalize(pipe, batch=8)(sc.y, sc.H, sc.codes, K=sc.K)
    assert torch.equal(known.K, sc.K)


def test_graph_batch_is_validated():
    pipe = load_learned_pipeline()
    with pytest.raises(ValueError, match="batch must be >= 1"):
        GraphedLocalize(pipe, batch=0)
    # a capture out of memory is raised (only a smaller graph_batch fixes it), not graphs off
    assert GraphedLocalize(pipe, batch=4).graphs.raise_oom
    with pytest.raises(InputError, match="graph_batch"):
        Localizer(pipe.system, "learned", pipe, graph_batch=0)
    assert Localizer(pipe.system, "learned", pipe, graph_batch=64).graphed.batch == 64
    assert Localizer(pipe.system, "classical", graph_batch=64).graphed is None


def test_a_graphed_pass_out_of_memory_is_one_error_not_futile_halves(monkeypatch):
    """Graphed passes are padded to graph_batch: halving one that ran out of memory would
    pad each half back to the same size (about 14 retries, each logged). It is one error
    naming graph_batch; the halving of eager passes (parallel._halving) is left as it is."""
    pipe = load_learned_pipeline()
    loc = Localizer(pipe.system, "learned", pipe, graph_batch=2048)
    calls = []

    def out_of_memory(*args, **kwargs):
        calls.append(1)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(loc, "graphed", type("G", (), {"batch": 2048,
                                                      "__call__": out_of_memory})())
    sc = simulate_range(0, 2, pipe.system, SceneConfig(), 0, "test", snr_db=10.0)
    with pytest.raises(InputError, match=r"a CUDA graph of the learned call on 2048 scenes "
                                         r"does not fit .* choose a smaller graph_batch"):
        loc._replayed(sc.y, sc.H, sc.codes, None, None, 5)
    assert calls == [1]


def test_passes_pass_k_max_and_an_empty_batch_is_one_direct_call():
    """Each pass is pipeline.localize with the caller's k_max (and SNR); no scenes: one
    direct call, no pass (a stub pipeline: the real call is the test above)."""
    from risloc.core.params import Estimates

    calls = []

    class Stub:
        def localize(self, y, H, codes, snr_db=None, K=None, k_max=None):
            calls.append((y.shape[0], None if snr_db is None else snr_db.tolist(), k_max))
            return Estimates.from_theta(torch.ones(y.shape[0], dtype=torch.int64),
                                        torch.zeros(y.shape[0], 2, 3) + y.real[:, :1, :1])

    y = torch.arange(5.0).reshape(5, 1, 1).to(torch.complex64)
    est = GraphedLocalize(Stub(), batch=4)(y, y, y, snr_db=torch.arange(5.0), k_max=3)
    assert calls == [(4, [0.0, 1.0, 2.0, 3.0], 3), (4, [4.0] * 4, 3)]
    assert est.azimuth[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and len(est) == 5
    calls.clear()
    assert len(GraphedLocalize(Stub(), batch=4)(y[:0], y[:0], y[:0], k_max=2)) == 0
    assert calls == [(0, None, 2)]


def test_each_k_max_is_a_graph_of_its_own():
    """A capture is the call at one k_max (module docstring: a capture per layout, k_max
    included): the passes key their graphs by it, or a call at k_max=2 would replay the
    graph captured at k_max=5 (a mutation review: key=None passed off CUDA, where the cache
    only calls)."""
    from risloc.core.params import Estimates

    class Stub:
        def localize(self, y, H, codes, snr_db=None, K=None, k_max=None):
            return Estimates.from_theta(torch.ones(y.shape[0], dtype=torch.int64),
                                        torch.zeros(y.shape[0], 2, 3))

    keys = []

    class Spy:
        def __call__(self, fn, args, key=None):
            keys.append(key)
            return fn(*args)

    g = GraphedLocalize(Stub(), batch=4)
    g.graphs = Spy()
    y = torch.ones(2, 1, 1, dtype=torch.complex64)
    g(y, y, y, k_max=2)
    g(y, y, y, k_max=5)
    assert keys == [2, 5]

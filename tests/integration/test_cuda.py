"""The CUDA paths: training (with AMP) and both localizers on a GPU agree with the CPU.

Skipped where no GPU is present (CI has none); run on a GPU machine with
``python3 -m pytest -q tests/integration/test_cuda.py``.
"""

import math
from pathlib import Path

import pytest
import torch

from risloc.config import SceneConfig
from risloc.core.graphs import GraphCache
from risloc.estimators.classical import classical_localize
from risloc.inference.checkpoint import load_checkpoint, model_from_state
from risloc.model import CovarianceNet
from risloc.pipeline.graphs import GraphedLocalize
from risloc.pipeline.learned import load_learned_pipeline
from risloc.simulation import simulate_range
from risloc.training import load_train_config, train
from risloc.training.loop import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "train_tiny.yaml"


def _angle_gaps_deg(a, b) -> torch.Tensor:
    """|difference| in azimuth and elevation [deg] of every valid slot, flattened."""
    both = a.mask & b.mask
    d = torch.stack([(a.azimuth - b.azimuth)[both], (a.elevation - b.elevation)[both]])
    return torch.rad2deg(d.abs()).flatten()


def _angle_gap_deg(a, b) -> torch.Tensor:
    """Largest |difference| in azimuth or elevation [deg] over the valid slots."""
    return _angle_gaps_deg(a, b).amax()


def test_training_on_cuda_with_amp_gives_a_cpu_loadable_model(tmp_path):
    cfg = load_train_config(TINY, [f"out_dir={tmp_path}", "device=cuda", "optim.amp=true"])
    metrics = train(cfg)
    assert metrics["epochs_run"] == cfg.schedule.epochs
    assert math.isfinite(metrics["best_objective"])
    state = load_checkpoint(tmp_path / "best.pt")  # mapped to the CPU
    model, _ = model_from_state(state, "ema")
    assert all(p.device.type == "cpu" and bool(torch.isfinite(p).all())
               for p in model.parameters())
    sc = simulate_range(0, 8, cfg.system, cfg.scene, 0, "validation")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            cpu = model(sc.y, sc.H, sc.codes, sc.snr_db)
            gpu = model.to("cuda")(sc.y.cuda(), sc.H.cuda(), sc.codes.cuda(),
                                   sc.snr_db.cuda())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    # FP32 on both sides: the trunk's heatmap agrees to rounding. The slots picked from it
    # can still flip on a near tie, so R_pred is compared on the scenes whose slots agree.
    err = (gpu.heatmap.cpu() - cpu.heatmap).abs().amax() / cpu.heatmap.abs().amax()
    assert err < 1e-3
    same = (gpu.slot_azimuth.cpu() - cpu.slot_azimuth).abs().amax(-1) < 1e-4
    assert int(same.sum()) >= 1
    scale = cpu.R_pred[same].abs().amax()
    assert (gpu.R_pred.cpu()[same] - cpu.R_pred[same]).abs().amax() / scale < 1e-3

@pytest.mark.parametrize("known_snr", [True, False])
def test_learned_localizer_on_cuda_matches_cpu(known_snr):
    pipe = load_learned_pipeline()
    sc = simulate_range(0, 32, pipe.system, SceneConfig(), 0, "validation", snr_db=15.0)
    snr = sc.snr_db if known_snr else None
    cpu = pipe.localize(sc.y, sc.H, sc.codes, snr)
    pipe.to("cuda")
    gpu = pipe.localize(sc.y.cuda(), sc.H.cuda(), sc.codes.cuda(),
                        None if snr is None else snr.cuda())
    assert gpu.K.device.type == "cuda"
    gpu = gpu.to("cpu")
    same = gpu.K == cpu.K
    assert int(same.sum()) >= 30  # a marginal K decision may flip on float rounding
    # The LM iterations stop where float32 no longer sees the cost fall, so rounding moves a
    # stop along a flat cost: on these scenes the CPU's own two LM routes (masked and
    # shrinking) differ by 4e-6 deg in the median and up to 0.0075 deg (stop 41). A wrong
    # path on the GPU moves the bulk of the sources, and by far more.
    gaps = _angle_gaps_deg(gpu[same], cpu[same])
    assert gaps.median() < 1e-3 and gaps.amax() < 0.05


@pytest.mark.parametrize("given", ["nothing", "snr", "K"])
def test_graphed_localize_replays_the_eager_call(given):
    pipe = load_learned_pipeline().to("cuda")
    sc = simulate_range(0, 40, pipe.system, SceneConfig(), 0, "validation", snr_db=15.0)
    y, H, codes = (t.cuda() for t in (sc.y, sc.H, sc.codes))
    kw = {"snr": {"snr_db": sc.snr_db.cuda()}, "K": {"K": sc.K.cuda()}}.get(given, {})
    graphed = GraphedLocalize(pipe, batch=16)  # passes 16 + 16 + (8 + 8 copies)
    got = graphed(y, H, codes, **kw).to("cpu")
    assert len(graphed.graphs) == 1  # captured (not eager), one layout: all passes of 16
    eager = pipe.localize(y, H, codes, **kw).to("cpu")
    same = got.K == eager.K
    assert int(same.sum()) >= 36
    gaps = _angle_gaps_deg(got[same], eager[same])  # other pass sizes: rounding differs
    assert gaps.median() < 1e-3 and gaps.amax() < 0.05
    # one pass (the estimates are the copies themselves): a later replay leaves them be
    part = {k: v[:16] for k, v in kw.items()}
    first = graphed(y[:16], H[:16], codes[:16], **part)
    kept = first.to("cpu")
    graphed(y[16:32], H[16:32], codes[16:32], **{k: v[16:32] for k, v in kw.items()})
    assert len(graphed.graphs) == 1
    assert torch.equal(first.K.cpu(), kept.K)
    assert torch.equal(first.azimuth.cpu().nan_to_num(9.0), kept.azimuth.nan_to_num(9.0))
    assert torch.equal(kept.K, got.K[:16])


def test_graph_cache_replays_copies_out_and_falls_back(caplog):
    cache = GraphCache("test")
    x, y = torch.randn(5, device="cuda"), torch.randn(5, device="cuda")

    def fn(a, b):
        return (a * b).sin() + a, a - b

    first = cache(fn, (x, y))
    assert len(cache) == 1
    kept = tuple(t.clone() for t in first)
    second = cache(fn, (y, x))  # the same graph, other inputs
    assert len(cache) == 1
    for got, want in zip((*first, *second), (*fn(x, y), *fn(y, x)), strict=True):
        assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(first, kept, strict=True))
    syncs = GraphCache("syncing")
    assert float(syncs(lambda a: a * float(a.sum()), (x,))[0]) == float(x[0] * x.sum())
    assert len(syncs) == 0 and "called directly" in caplog.text


def test_training_with_the_refinement_replayed_from_graphs(tmp_path):
    """cuda_graphs: the network's forward in training gives what it gives without, and a
    run trains."""
    cfg = load_train_config(TINY, [f"out_dir={tmp_path}", "device=cuda", "cuda_graphs=true"])
    sc = simulate_range(0, 16, cfg.system, cfg.scene, 0, "validation")
    y, H, codes, snr = (t.cuda() for t in (sc.y, sc.H, sc.codes, sc.snr_db))
    model = CovarianceNet(cfg.system, cfg.network_config()).cuda().train()
    direct = model(y, H, codes, snr)
    model.refine_graphs = GraphCache("refinement")
    for _ in range(2):  # the capture's call, then a replay
        graphed = model(y, H, codes, snr)
        assert len(model.refine_graphs) == 1
        torch.testing.assert_close(graphed.slot_azimuth, direct.slot_azimuth)
        torch.testing.assert_close(graphed.slot_range, direct.slot_range)
        torch.testing.assert_close(graphed.R_pred, direct.R_pred)
    tr = Trainer(cfg)  # the trainer gives its model a cache; a step captures into it
    tr.micro_step(tr.data.batch(0, 0), cfg.blend.beta, tr.loss_config())
    assert len(tr.model.refine_graphs) == 1 and tr.ema.module.refine_graphs is \
        tr.model.refine_graphs
    metrics = train(cfg)
    assert math.isfinite(metrics["best_objective"])


def test_training_batches_computed_on_the_gpu_are_the_host_ones(tmp_path):
    """simulate_on=device: the batches' draws on the host, their physics on the GPU: the
    host's batches up to float32 rounding (K, positions and codes exactly); a run trains."""
    from dataclasses import fields

    from risloc.training.data import TrainData

    cfg = load_train_config(TINY, [f"out_dir={tmp_path}", "device=cuda",
                                   "simulate_on=device"])
    host, gpu = TrainData(cfg).batch(2, 0), TrainData(cfg, compute="cuda").batch(2, 0)
    assert gpu.y.device.type == "cuda"
    for f in fields(host):
        want, got = getattr(host, f.name), getattr(gpu, f.name)
        if want is None:
            continue
        exact = f.name in ("K", "azimuth", "elevation", "range_m", "codes", "powers", "snr_db")
        torch.testing.assert_close(got.cpu(), want, rtol=0 if exact else 1e-4,
                                   atol=0 if exact else 1e-5, equal_nan=True, msg=f.name)
    assert math.isfinite(train(cfg)["best_objective"])


def test_classical_localizer_on_cuda_matches_cpu():
    system = load_learned_pipeline().system
    sc = simulate_range(0, 16, system, SceneConfig(), 0, "validation", snr_db=15.0)
    cpu = classical_localize(sc.y, sc.H, sc.codes, system, K=sc.K)
    gpu = classical_localize(sc.y.cuda(), sc.H.cuda(), sc.codes.cuda(), system, K=sc.K.cuda())
    assert gpu.K.device.type == "cuda"
    assert _angle_gap_deg(gpu.to("cpu"), cpu) < 0.01


@pytest.mark.parametrize("method", ["learned", "learned --graphs", "classical"])
def test_localize_cli_on_cuda_matches_the_cpu(tmp_path, method):
    """The user's path: `risloc localize --device cuda` (the Localizer, a file's scenes read
    8192 at a time; with --graphs 16 at a time, each batch a CUDA graph's replay) against
    the CPU on the same file."""
    from typer.testing import CliRunner

    from risloc.cli.main import app
    from risloc.pipeline import read_estimates

    runner = CliRunner()
    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "24", "--out", str(f), "--snr-db", "15",
                               "--split", "test"]).exit_code == 0
    est = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.csv"
        graphs = ["--graphs", "--batch-size", "16"] if method.endswith("graphs") else []
        res = runner.invoke(app, ["localize", str(f), "--out", str(out), "--device", device,
                                  "--method", method.split()[0], *graphs])
        assert res.exit_code == 0, res.output
        est[device] = read_estimates(out, 24, 5)
    same = est["cuda"].K == est["cpu"].K
    assert int(same.sum()) >= 22  # a marginal K decision may flip on float rounding
    gaps = _angle_gaps_deg(est["cuda"][same], est["cpu"][same])  # as in the tests above
    assert gaps.median() < 1e-3 and gaps.amax() < (0.01 if method == "classical" else 0.05)


def test_a_model_that_reads_the_snr_localizes_a_files_snr_on_cuda(tmp_path):
    """A model trained with the SNR shown (data.snr_shown > 0, TrainConfig's default) is
    given a file's SNR, read on the host, while its inputs are on the GPU. Before, the
    network met a CPU SNR beside CUDA inputs ("Expected all tensors to be on the same
    device"); the shipped model reads no SNR, so the tests above never passed one."""
    from typer.testing import CliRunner

    from risloc.cli.main import app
    from risloc.pipeline import read_estimates

    cfg = load_train_config(TINY, [f"out_dir={tmp_path / 'run'}", "data.snr_shown=1.0",
                                   "order.scenes=0", "device=cpu"])
    train(cfg)
    runner = CliRunner()
    f = tmp_path / "s.h5"
    assert runner.invoke(app, ["simulate", "--n", "8", "--out", str(f), "--snr-db", "15",
                               "--split", "test"]).exit_code == 0
    for device in ("cpu", "cuda"):
        res = runner.invoke(app, ["localize", str(f), "--out", str(tmp_path / f"{device}.csv"),
                                  "--device", device, "--checkpoint",
                                  str(tmp_path / "run" / "best.pt")])
        assert res.exit_code == 0, res.output
    cpu, gpu = (read_estimates(tmp_path / f"{d}.csv", 8, 5) for d in ("cpu", "cuda"))
    assert int((cpu.K == gpu.K).sum()) >= 7

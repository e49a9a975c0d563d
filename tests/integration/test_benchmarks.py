"""The benchmark scripts behind the published numbers still import and read their options
(a review: no test ran any of them, so a renamed function or option in the package would
have broken a documented command unseen). One process runs every script's --help, whose
description must be a whole sentence (a review: twelve scripts showed only the docstring's
first line, cut mid-sentence)."""

import math
import os
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))

_RUN_EACH = r"""
import contextlib, io, runpy, sys
failed = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    shown = io.StringIO()
    try:
        with contextlib.redirect_stdout(shown):
            runpy.run_path(path, run_name="__main__")
        failed.append(f"{path}: --help did not end the script")
    except SystemExit as end:
        if end.code not in (0, None):
            failed.append(f"{path}: --help exited {end.code}")
        elif "usage" not in shown.getvalue().lower():
            failed.append(f"{path}: --help printed no usage")
        elif not shown.getvalue().split("\n\n")[1].rstrip().endswith((".", "?")):
            failed.append(f"{path}: --help cuts its description mid-sentence")
    except Exception as err:
        failed.append(f"{path}: {type(err).__name__}: {err}")
print("\n".join(failed))
"""


def test_every_benchmark_script_imports_and_shows_its_options():
    assert len(SCRIPTS) > 30
    res = subprocess.run([sys.executable, "-c", _RUN_EACH, *map(str, SCRIPTS)],
                         capture_output=True, text=True, timeout=600,
                         cwd=ROOT / "benchmarks")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "", res.stdout


_REFUSED = r"""
import contextlib, io, runpy, sys
for args in sys.argv[1:]:
    script, *rest = args.split()
    sys.argv = [script, *rest]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            runpy.run_path(script, run_name="__main__")
        print(f"{args}: ran")
    except SystemExit as end:
        print(f"{args}: exit {end.code}: {said.getvalue().strip().splitlines()[-1]}")
"""


def test_a_count_of_zero_is_refused_by_its_option_before_any_work():
    """--n 0 (and the like) failed late, after the model loaded, with 'empty scene range
    0..0' from the simulator; argparse now names the option."""
    cases = {"bench_versus.py --n 0": "argument --n: must be a whole number >= 1, got '0'",
             "bench_pipeline.py --batch 0": "argument --batch: must be a whole number >= 1",
             "bench_pipeline.py --repeats 0": "argument --repeats: must be a whole number",
             "bench_pipeline.py --threads 0": "argument --threads: must be a whole number",
             "bench_pipeline.py --rss-batches 256 0": "argument --rss-batches: must be a",
             "bench_latency.py --calls 0": "argument --calls: must be a whole number >= 1",
             "bench_latency.py --drift-calls 2.5": "argument --drift-calls: must be a whole",
             "bench_latency.py --batches 1,0": "argument --batches: must be a whole number",
             "bench_latency.py --threads 1,0": "argument --threads: must be a whole number",
             "bench_latency.py --batches 1,129": "argument --batches: at most 128 scenes"}
    res = subprocess.run([sys.executable, "-c", _REFUSED, *cases], capture_output=True,
                         text=True, timeout=300, cwd=ROOT / "benchmarks")
    assert res.returncode == 0, res.stderr[-3000:]
    got = dict(line.split(": ", 1) for line in res.stdout.splitlines())
    for args, said in cases.items():
        assert got[args].startswith("exit 2: ") and said in got[args], (args, got[args])


_CLASSICAL_CLOSURE = r"""
import sys
from pathlib import Path
sys.path.insert(0, ".")
import risloc, risloc.estimators.classical, risloc.simulation
root = Path(risloc.__file__).parent
loaded = {Path(m.__file__).relative_to(root).as_posix() for name, m in list(sys.modules.items())
          if name.startswith("risloc") and getattr(m, "__file__", None)}
import bench_versus
print("\n".join(sorted(loaded - set(getattr(bench_versus, "CLASSICAL_SOURCES", ())))))
"""


def test_the_classical_cache_key_covers_every_module_the_scenes_and_estimates_use():
    """bench_versus --classical-cache keyed its files on six sources: a change to config.py
    (scene defaults), simulation/streams.py or the channel left the cache valid, pairing old
    classical estimates with other scenes than the learned localizer's."""
    res = subprocess.run([sys.executable, "-c", _CLASSICAL_CLOSURE], capture_output=True,
                         text=True, timeout=300, cwd=ROOT / "benchmarks")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "", "not in the cache key:\n" + res.stdout


def test_a_miss_of_standard_error_0_is_counted_and_not_within_two_of_them(capsys,
                                                                           monkeypatch):
    """bench_versus' summary line: a miss whose bootstrap SE is 0 (the same on every scene)
    was left out of 'n of m within 2 standard errors' (a methodology review)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_versus

    targets = [{"condition": "c", "snr_db": 0.0, "known_K": False,
                "checks": {"f1 +0.05": False, "f1": False, "k": True},
                "margins": {"f1 +0.05": (-0.01, 0.0), "f1": (-0.01, 0.02),
                            "k": (0.1, 0.01)}}]
    bench_versus.print_targets(targets)
    said = capsys.readouterr().out
    assert "targets: 1 of 3 met" in said
    assert "1 of 2 within 2 standard errors" in said, said


def test_a_median_ratio_of_nan_misses_the_median_target(monkeypatch):
    """A median neither localizer pairs (ratio NaN) was skipped by max() unless it came
    first, the target read as met (a methodology review)."""
    import math

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_versus
    scores = {"f1": 1.0, "K_accuracy": 1.0}
    row = {"snr_db": 10.0, "snr_given": True, "power_spread_db": 0.0, "known_K": True,
           "learned": scores, "classical": scores, "se": {}, "ratio_common": {}}
    for ratios in ((1.0, math.nan, 0.5), (math.nan, 1.0, 0.5), (1.0, 1.0, 1.0)):
        row["ratio"] = dict(zip(bench_versus.MEDIANS, ratios))
        (t,) = bench_versus.check_targets([row], None)
        assert t["checks"]["medians <= 1.05x classical"] is not any(map(math.isnan, ratios))


def test_the_classical_cache_key_names_the_scenes_stream(monkeypatch):
    """The i-th SNR listed gets the i-th scene stream: --snrs 0 5 then --snrs 5 drew other
    5 dB scenes, under the same cache file name (a review of bench_versus)."""
    import argparse

    import pytest

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_versus

    keys = []

    def stop(loc, sc, key, *rest):
        keys.append(key)
        raise StopIteration

    monkeypatch.setattr(bench_versus, "scenes_at", lambda *a: None)
    monkeypatch.setattr(bench_versus, "classical_estimates", stop)
    args = argparse.Namespace(snrs=[5.0], split="test", n=4, known_K=False,
                              classical_cache=None)
    with pytest.raises(StopIteration):
        bench_versus.accuracy(None, None, args)
    assert keys[0]["stream"] == 0


def test_the_machine_record_works_off_linux(monkeypatch):
    """bench_versus/bench_pipeline/bench_latency record machine(): without
    os.sched_getaffinity (macOS, Windows) it raised AttributeError after the whole run
    instead of counting the machine's cores."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_versus

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    got = bench_versus.machine()
    assert got["cores"] == 3 and got["cpu"] and got["commit"]


def _corner_cell(monkeypatch, K_accuracy: tuple, common: tuple, name="dft", snr=10.0):
    """bench_corners.cell on stubbed scenes and metrics: the learned / classical K accuracy,
    F1 0.9 both, the common median ratios ``common``; returns its row."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_corners

    ones = dict.fromkeys(bench_corners.MEDIANS, 1.0)
    scores = iter([types.SimpleNamespace(f1=0.9, K_accuracy=k, **ones) for k in K_accuracy])

    class Scenes:
        azimuth = elevation = range_m = K = None

        def __len__(self):
            return 300

    monkeypatch.setattr(bench_corners, "corner_scenes", lambda *a: Scenes())
    monkeypatch.setattr(bench_corners, "run", lambda loc, sc: (None, 1.0))
    monkeypatch.setattr(bench_corners, "classical_run", lambda *a: (None, 1.0, False))
    monkeypatch.setattr(bench_corners, "match_sources", lambda *a: None)
    monkeypatch.setattr(bench_corners, "summarize", lambda m: next(scores))
    monkeypatch.setattr(bench_corners, "paired_bootstrap_se", lambda a, b: {
        "f1_diff": 0.01, "K_accuracy_diff": 0.01})
    ratios = dict(zip(bench_corners.MEDIANS, common))
    monkeypatch.setattr(bench_corners, "common_ratio", lambda a, b: {"n": 1, **ratios})
    args = types.SimpleNamespace(split="test", n=300, classical_cache=None)
    return bench_corners.cell(None, None, name, snr, 925, args)


def test_bench_corners_meets_a_target_missed_by_exactly_its_tolerance(monkeypatch):
    """K accuracy 271 / 300 against 274 / 300 is classical - 0.01, the target met; the
    float margin came out -8.7e-18 and the cell read as a miss (dft at 10 dB in
    corners.json; a methodology review)."""
    row = _corner_cell(monkeypatch, (271 / 300, 274 / 300), (1.0, 1.0, 1.0))
    assert all(m >= 0 for m, _ in row["margins"].values()), row["margins"]


def test_bench_corners_cache_key_changes_with_the_corner_definition(monkeypatch):
    """The classical cache's key covered bench_versus.py and the package, not the corners:
    a corner redefined under its name reused the old scenes' classical estimates."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_corners

    before = bench_corners.cell_key("dense", 10.0, "test", 300, 921)
    monkeypatch.setitem(bench_corners.CORNERS, "dense",
                        ({"azimuth_deg": (-10.0, 10.0), "elevation_deg": (-8.0, 8.0)}, 3))
    assert bench_corners.cell_key("dense", 10.0, "test", 300, 921) != before


def test_a_difference_of_exactly_the_tolerance_meets_the_versus_target(monkeypatch):
    """bench_versus: K accuracy 271 / 300 against 274 / 300 is classical - 0.01, met (the
    float margin -8.7e-18 read as a miss in bench_corners.py's like check)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_versus

    row = {"snr_db": 10.0, "snr_given": True, "power_spread_db": 0.0, "known_K": False,
           "learned": {"f1": 0.9, "K_accuracy": 271 / 300},
           "classical": {"f1": 0.9, "K_accuracy": 274 / 300}, "se": {},
           "ratio": dict.fromkeys(bench_versus.MEDIANS, 1.0), "ratio_common": {}}
    (t,) = bench_versus.check_targets([row], None)
    assert t["checks"]["K acc >= classical - 0.01"], t["margins"]


def test_bench_independent_meets_a_target_missed_by_exactly_its_tolerance(monkeypatch):
    """bench_independent compared unrounded floats: K accuracy 1 / 400 against 5 / 400 is
    classical - 0.01, read as a miss (0.0025 >= 0.0125 - 0.01 is False in floats)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_independent

    def row(est, k_acc):
        r = {"estimator": est, "snr_db": 10.0, "K": "all", "n_scenes": 400, "f1": 0.9,
             "K_accuracy": k_acc, "ms_per_scene": 1.0, "se_K_accuracy_diff": 0.0,
             "se_f1_diff": 0.0}
        for c in ("azimuth", "elevation", "range"):
            r.update({f"{c}_median_{'deg' if c != 'range' else 'm'}": 1.0,
                      f"{c}_median_ratio_common": 1.0, f"se_{c}_median_ratio": 0.0})
        return r

    (got,) = bench_independent.table_rows(
        "equal, SNR withheld", {"rows": [row("learned", 1 / 400), row("classical", 5 / 400)]})
    assert got["targets"]["K acc >= classical - 0.01"], got["targets"]
    assert got["targets"]["medians <= 1.05x"]


def test_bench_corners_misses_the_median_target_where_a_median_is_not_paired(monkeypatch):
    """A common median neither localizer pairs (ratio NaN) is the worst, as bench_versus has
    it; bench_corners ranked it best and could read the median target as met (a
    methodology review)."""
    row = _corner_cell(monkeypatch, (0.9, 0.9), (1.0, math.nan, 1.0), "default", 5.0)
    m, _ = row["margins"]["common medians <= 1.05x"]
    assert not m >= 0, row["margins"]


def test_the_order_genie_finds_the_largest_pooled_f1_of_any_counts(monkeypatch):
    """bench_order_genie.genie_K against every choice of K per scene (3 scenes x 4 counts):
    no choice has a larger pooled F1 (the genie bounds the K decisions of the tables)."""
    import itertools

    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_order_genie import genie_K, pooled_f1

    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        K_true = torch.randint(1, 5, (3,), generator=gen)
        steps = torch.rand(3, 4, generator=gen) < 0.6  # a reported source is found, or not
        D = torch.minimum(steps.cumsum(1), K_true.unsqueeze(1)).double()
        best = max(pooled_f1(torch.tensor(c), D, K_true)
                   for c in itertools.product(range(1, 5), repeat=3))
        assert pooled_f1(genie_K(D, K_true), D, K_true) == best


def test_bench_order_prior_auc_is_the_share_of_ordered_pairs(monkeypatch):
    """bench_order_prior.auc: the share of (positive, negative) pairs a score orders right,
    1 for a perfect one, 0 reversed, 0.5 for a coin."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_order_prior import auc

    y = torch.tensor([True, False, True, False, False])
    assert auc(torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0]), y) == 1.0
    assert auc(torch.tensor([1.0, 5.0, 2.0, 4.0, 3.0]), y) == 0.0
    # positives 4 and 2 above 1, 3 / 1: pairs ordered right 2 + 1 of 6
    assert auc(torch.tensor([4.0, 1.0, 2.0, 3.0, 5.0]), y) == 0.5
    # ties count one half, wherever they lie (nested sources sharing a slot tie)
    assert auc(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0]), y) == 0.5
    # 2 above its two 1s, tied with the 2 (2.5); 1 tied with two 1s, under the 2 (1): of 6
    assert auc(torch.tensor([2.0, 2.0, 1.0, 1.0, 1.0]), y) == 3.5 / 6


def test_bench_source_select_keeps_the_heads_rule(monkeypatch):
    """bench_source_select: hybrid_K is the head's own rule where the summed realness
    equals the head's expected detections."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_source_select as bs

    from risloc.pipeline.order import OrderHead

    torch.manual_seed(0)
    head = OrderHead(20, 5, members=2)
    f = torch.randn(64, 20) * 3
    det = head(f).detections.double()
    increments = torch.diff(det, dim=-1, prepend=torch.zeros(64, 1, dtype=det.dtype))
    for b in (0.0, 0.25, 5.0):  # (an untrained head's P is near uniform: 5 moves K)
        assert torch.equal(bs.hybrid_K(head, f, increments, b),
                           head.decide(f, balance=torch.full((64,), b)))


def test_bench_noise_estimate_reads_each_fit_against_the_true_level(monkeypatch):
    """bench_noise_estimate.noise_rows: the K_max-source level C_5 / (L (M - 5)) and the
    true-K one C_K / (L (M - K)), each over the true sigma^2, in dB, per true K."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_noise_estimate import noise_rows

    L, M, true = 4, 16, torch.full((6,), 0.5, dtype=torch.float64)
    K = torch.tensor([2, 2, 2, 3, 3, 3])
    costs = torch.full((6, 6), 100.0 * L * M, dtype=torch.float64)
    costs[:, 5] = 2 * L * (M - 5) * true  # twice the level: +3.01 dB
    costs[:3, 2] = L * (M - 2) * true[:3]  # the true level at K = 2: 0 dB
    costs[3:, 3] = 0.5 * L * (M - 3) * true[3:]  # half at K = 3: -3.01 dB
    rows = noise_rows(costs, true, K, L, M)
    assert set(rows) == {2, 3} and rows[2]["scenes"] == 3
    assert math.isclose(rows[2]["K_max fit"]["median"], 10 * math.log10(2), abs_tol=1e-9)
    assert abs(rows[2]["true K fit"]["median"]) < 1e-9
    assert math.isclose(rows[3]["true K fit"]["p95"], -10 * math.log10(2), abs_tol=1e-9)

"""The learned and classical localizers on scenes from a second implementation of the
contract (``independent_scenes.py``: NumPy and h5py only), as the issue on the learned
localizer first measured them: users' files, not our own test split.

    python benchmarks/bench_independent.py [--n 400] [--out reports/bench/independent.json]
        [--work reports/independent] [--kappa 0.5,10] [--conditions ...]

Per condition one ``risloc evaluate FILE --estimators learned,classical`` (the file's SNR
groups of 5 dB, each scored on its own; standard errors of the differences paired on the
same scenes): equal powers or powers spread over 12 dB; the SNR given or withheld; K
unknown, or the true K given to both. The files (``n`` scenes per SNR at -5..20 dB, K drawn
in 1..5, seed 1 for equal powers and 2 for spread ones) and each condition's report stay in
``--work``; a condition whose report is there is not run again (the job resumes; the reports
are not keyed on the code or the model: after a change, give a fresh ``--work``). Prints and
writes (atomically) one table with the issue's targets judged per row:

* K unknown, SNR >= 0 dB: F1 and K accuracy >= classical - 0.01; at 0 and 5 dB F1 >=
  classical + 0.05; at >= 5 dB median azimuth / elevation / range errors <= 1.05x;
* K given: the same F1 and median targets.

The medians are judged as the issue writes them, each localizer's over the true sources *it*
pairs; the ratio over the sources both pair (the same sources) is printed beside them.

The time per scene, over each condition's scenes, is each localizer's inside ``risloc
evaluate`` (one after the other on the same scenes, all threads): a same-run figure, but not
interleaved, and per SNR group too few seconds to compare; ``bench_versus.py`` measures speed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from bench_versus import rounded_margin
from independent_scenes import write_file

from risloc.io.atomic import write_text_atomic

SNRS = [-5.0, 0.0, 5.0, 10.0, 15.0, 20.0]
# name: (power spread dB, SNR given, K given)
CONDITIONS = {
    "equal, SNR withheld": (0.0, False, False),
    "equal, SNR given": (0.0, True, False),
    "spread, SNR withheld": (12.0, False, False),
    "spread, SNR given": (12.0, True, False),
    "equal, K given": (0.0, False, True),
    "spread, K given": (12.0, False, True),
}
COORDS = ("azimuth_median_deg", "elevation_median_deg", "range_median_m")


def _slug(name: str) -> str:
    return name.replace(", ", "_").replace(" ", "-")


def run_condition(name: str, data: Path) -> dict:
    """``risloc evaluate`` of one condition on ``data``; its report goes beside the file, in
    a folder named after both (an existing report is read instead: the job resumes)."""
    spread, snr_given, known_K = CONDITIONS[name]
    report = data.parent / f"{data.stem}_{_slug(name)}"
    if not (report / "metrics.json").exists():
        cmd = ["risloc", "evaluate", str(data), "--estimators", "learned,classical",
               "--snr-given" if snr_given else "--snr-withheld",
               "--known-K" if known_K else "--unknown-K", "--out", str(report), "--no-plots"]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    else:  # (not keyed on the code or the model: a run after a change needs a fresh --work)
        print(f"{name}: the report of an earlier run, {report} (delete it, or give another "
              f"--work, to measure the code as it is now)", flush=True)
    metrics = json.loads((report / "metrics.json").read_text())
    for row in metrics["rows"]:  # (strict JSON: null where a number is undefined, as NaN)
        row.update({k: math.nan for k, v in row.items() if v is None})
    return metrics


def table_rows(name: str, metrics: dict) -> list[dict]:
    """One row per SNR group: both localizers' numbers and the targets judged."""
    _, _, known_K = CONDITIONS[name]
    by = {(r["estimator"], r["snr_db"]): r for r in metrics["rows"] if r["K"] == "all"}
    rows = []
    for snr in sorted({s for _, s in by}):
        ln, cl = by[("learned", snr)], by[("classical", snr)]
        ratios = [ln[c] / cl[c] if cl[c] > 0 else math.nan for c in COORDS]
        # evaluate's common ratios are the classical row's over the reference (learned)
        common = [1 / v if (v := cl[f"{c.split('_')[0]}_median_ratio_common"]) > 0
                  else math.nan for c in COORDS]
        margins = {}
        if snr >= 0:
            margins["F1 >= classical - 0.01"] = ln["f1"] - cl["f1"] + 0.01
            if not known_K:
                margins["K acc >= classical - 0.01"] = ln["K_accuracy"] - cl["K_accuracy"] + 0.01
        if snr in (0.0, 5.0):
            margins["F1 >= classical + 0.05"] = ln["f1"] - cl["f1"] - 0.05
        if snr >= 5:
            margins["medians <= 1.05x"] = [1.05 - r for r in ratios]  # NaN: a miss
        targets = {k: all(rounded_margin(v) >= 0 for v in (m if isinstance(m, list) else [m]))
                   for k, m in margins.items()}
        rows.append({
            "condition": name, "snr_db": snr, "n": ln["n_scenes"],
            "K_accuracy": [ln["K_accuracy"], cl["K_accuracy"]], "se_K_accuracy_diff":
            cl["se_K_accuracy_diff"], "f1": [ln["f1"], cl["f1"]],
            "se_f1_diff": cl["se_f1_diff"], "median_ratio": dict(zip(COORDS, ratios)),
            "median_ratio_common": dict(zip(COORDS, common)),
            "se_median_ratio": {c: cl[f"se_{c.split('_')[0]}_median_ratio"] for c in COORDS},
            "ms_per_scene": [ln["ms_per_scene"], cl["ms_per_scene"]], "targets": targets})
    return rows


def format_rows(rows: list[dict]) -> str:
    head = (f"{'condition':22} {'SNR':>4} {'n':>4} | {'K acc L / C (SE)':>22} | "
            f"{'F1 L / C (SE)':>22} | {'median ratio az el r':>20} | "
            f"{'on both pairs':>14} | targets")
    out = [head, "-" * len(head)]
    for r in rows:
        (kl, kc), (fl, fc) = r["K_accuracy"], r["f1"]
        ratios, common = (" ".join(f"{v:.2f}" for v in r[k].values())
                          for k in ("median_ratio", "median_ratio_common"))
        missed = [t for t, ok in r["targets"].items() if not ok]
        verdict = ("met" if not missed else "MISSED: " + "; ".join(missed)) \
            if r["targets"] else "-"
        out.append(
            f"{r['condition']:22} {r['snr_db']:4.0f} {r['n']:4d} | "
            f"{kl:.3f} / {kc:.3f} ({r['se_K_accuracy_diff']:.3f}) | "
            f"{fl:.3f} / {fc:.3f} ({r['se_f1_diff']:.3f}) | {ratios:>20} | {common:>14} | "
            f"{verdict}")
    judged = [ok for r in rows for ok in r["targets"].values()]
    out.append(f"targets met: {sum(judged)} of {len(judged)}")
    out.append("time per scene over each condition's scenes, learned / classical (one after "
               "the other in one process, not interleaved: bench_versus.py measures speed):")
    for name in dict.fromkeys(r["condition"] for r in rows):
        mine = [r for r in rows if r["condition"] == name]
        n = sum(r["n"] for r in mine)
        ms = [sum(r["ms_per_scene"][i] * r["n"] for r in mine) / n for i in (0, 1)]
        out.append(f"  {name:22} {ms[0]:6.1f} / {ms[1]:6.1f} ms ({ms[1] / ms[0]:.2f}x)")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400, help="scenes per SNR")
    ap.add_argument("--work", type=Path, default=Path("reports/independent"))
    ap.add_argument("--out", type=Path, default=Path("reports/bench/independent.json"))
    ap.add_argument("--kappa", default="0.5,10", help="Rician factor range of the channels")
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS),
                    choices=list(CONDITIONS))
    args = ap.parse_args()
    kappa = tuple(float(v) for v in args.kappa.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    files = {}
    for spread, seed in ((0.0, 1), (12.0, 2)):
        path = args.work / f"scenes_spread{spread:g}_kappa{kappa[0]:g}-{kappa[1]:g}_n{args.n}.h5"
        if not path.exists():
            print(f"writing {path}", flush=True)
            write_file(path, args.n, SNRS, spread, kappa, seed)
        files[spread] = path
    rows = []
    for name in args.conditions:
        rows += table_rows(name, run_condition(name, files[CONDITIONS[name][0]]))
    text = format_rows(rows)
    print(text)
    meta = {"command": " ".join(sys.argv), "n_per_snr": args.n, "kappa": kappa,
            "snrs": SNRS, "generator": "benchmarks/independent_scenes.py"}
    write_text_atomic(args.out, json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_text_atomic(args.out.with_suffix(".txt"), text + "\n")


if __name__ == "__main__":
    main()

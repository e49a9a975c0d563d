"""`risloc evaluate`: estimators over an SNR sweep, metrics beside the CRB, plots."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from risloc import __version__
from risloc.cli.common import (
    ConfigOpt,
    FovOpt,
    SetOpt,
    check_model_serves,
    console,
    handle_errors,
    model_system,
    out,
    parse_fov,
    parse_numbers,
    print_table,
    progress,
    refuse_fov,
    sweep_config,
)
from risloc.config import check_snr_db
from risloc.evaluation.metrics import EFFICIENT_MEDIAN
from risloc.experiments.estimators import NAMES, NEEDS_TRUTH
from risloc.experiments.harness import (
    ResultRow,
    SweepSettings,
    evaluate_points,
    file_points,
    left_out,
    sweep_points,
    write_results,
)
from risloc.io.atomic import check_writable

PLOTS = ("error_vs_snr.png", "k_accuracy_vs_snr.png",
         *(f"music_spectrum_{label}.png" for label in ("true", "samp", "blend")))


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}g}"


def results_table(rows: list[ResultRow], title: str, left: int = 0,
                  per_K: bool = False) -> Table:
    """Rich table of the K='all' rows (and, ``per_K``, of each true K's under them in a K
    column: a sweep of several K): each median error beside 0.674 sqrt(CRB), the median
    error of an efficient estimator (median over the paired sources' bounds); ``left``
    scenes could not be evaluated (a note says so)."""
    refs = {r.metrics["reference"] for r in rows if "reference" in r.metrics}
    notes = ([f"(±x): standard error of the difference to {', '.join(sorted(refs))} on the "
              "same scenes (paired bootstrap)"] if refs else []) + (
        [f"{left} scene(s) are left out of every estimator's row: measurements that "
         "cannot be localized (all-zero or non-finite values, codes off the unit circle; "
         "risloc localize counts them as missed) or truth that cannot be scored; "
         "`risloc info` names them"] if left else []) + (
        ["all: the scenes of every SNR group together, without a bound (their SNRs differ)"]
        if any(r.K == "file" for r in rows) else [])
    if any(r.metrics.get("n_paired") is not None for r in rows):
        notes.append("medians over each estimator's own paired sources (metrics.csv: n_paired "
                     "of n_true" + ("; *_median_ratio_common: over the sources both pair)"
                                    if refs else ")"))
    t = Table(title=title, caption="\n".join(notes) or None)
    for col in ("estimator", "SNR dB", *(("K",) if per_K else ()), "n", "K acc", "F1",
                "az med° (.67√CRB)", "el med° (.67√CRB)", "range med m (.67√CRB)",
                "ms/scene"):
        t.add_column(col, justify="right" if col != "estimator" else "left")
    for r in rows:
        if r.K not in ("all", "?", "file") and not per_K:
            continue
        m = r.metrics
        def pair(a: str, b: str, m=m) -> str:
            bound = m.get(b)
            return f"{_fmt(m.get(a))} ({_fmt(None if bound is None else EFFICIENT_MEDIAN * bound)})"

        def with_se(a: str, m=m) -> str:
            se = m.get(f"se_{a}_diff")
            return _fmt(m.get(a)) + ("" if se is None else f" (±{_fmt(se, 2)})")

        snr = "all" if r.K == "file" else "unknown" if math.isnan(r.snr_db) else \
            f"{r.snr_db:g}"  # (as the CSV: 10.25 and 10.35 two rows, not 10.2 and 10.3)
        ms = "-" if math.isnan(r.ms_per_scene) or r.K not in ("all", "?", "file") else \
            f"{r.ms_per_scene:.1f}"  # (made elsewhere; a true K's rows: timed with the rest)
        t.add_row(r.estimator, snr, *((r.K,) if per_K else ()), str(r.n_scenes),
                  with_se("K_accuracy"),
                  with_se("f1"), pair("azimuth_median_deg", "crb_azimuth_median_deg"),
                  pair("elevation_median_deg", "crb_elevation_median_deg"),
                  pair("range_median_m", "crb_range_median_m"), ms)
    return t


# the simulated sweep's defaults, as options (their home: SweepSettings)
SWEEP_SNRS = ",".join(f"{x:g}" for x in SweepSettings().snr_db)
SWEEP_N = SweepSettings().n_per_point


@handle_errors
def evaluate_command(
    scenes: Annotated[Path | None, typer.Argument(
        help="Scene file (.h5/.npz) to evaluate; omit to simulate a test sweep.")] = None,
    estimators: Annotated[str, typer.Option(
        help=f"Comma-separated, from: {', '.join(NAMES)}; the first is the reference of the "
        "standard errors; none, with --estimates, scores those alone.")] = "learned,classical",
    snr_db: Annotated[str, typer.Option(
        "--snr-db", help="SNR points in dB, comma-separated (simulated sweep).")
    ] = SWEEP_SNRS,
    K: Annotated[str | None, typer.Option(
        "--K", help="K values, comma-separated (simulated sweep), e.g. --K 1,3; default: K "
                    "drawn 1..K_max per scene.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Scenes per (SNR, K) point.")] = SWEEP_N,
    snr_given: Annotated[bool, typer.Option(
        "--snr-given/--snr-withheld", help="Tell the estimators the SNR (files: when they "
        "carry one).")] = True,
    power_spread_db: Annotated[float, typer.Option(
        min=0, max=60, help="Simulated sweep: source powers spread over this many dB.")] = 0.0,
    known_K: Annotated[bool, typer.Option("--known-K/--unknown-K",
                                          help="Give the true K to the estimators.")] = False,
    snr_bin_db: Annotated[float, typer.Option(
        "--snr-bin-db", min=0.01, help="Scene file: group its scenes into SNR bins this many dB "
        "wide, each row labelled with the mean SNR of its scenes; scenes without an SNR are "
        "one group, 'unknown'.")] = 5.0,
    crb: Annotated[str | None, typer.Option(
        help="deterministic | stochastic bound (default: deterministic for a simulated sweep; "
        "a scene file carries no source symbols: stochastic, the only one for it).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Scenes per localizer pass.")] = 64,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the simulated sweep.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path(
        "reports/evaluate"),
    plots: Annotated[bool, typer.Option("--plots/--no-plots",
                                        help="Write the PNG plots beside the table.")] = True,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Checkpoint of the 'learned' estimator (default: the shipped model).")] = None,
    start: Annotated[int, typer.Option(min=0, help="Scene file: first scene evaluated.")] = 0,
    stop: Annotated[int | None, typer.Option(
        min=0, help="Scene file: stop before this scene (default: its end).")] = None,
    estimates: Annotated[list[Path] | None, typer.Option(
        "--estimates", help="Scene file: an estimates CSV of its scenes made elsewhere (your "
        "own method's; the format `risloc localize` writes), scored beside the estimators "
        "and named by its file name; repeatable. --estimators none scores these alone.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    fov_opts: FovOpt = None,
) -> None:
    """Evaluate estimators on a scene file or a simulated SNR sweep; table, CSV/JSON, PNGs."""
    names = tuple(s.strip() for s in estimators.split(",") if s.strip())
    if names == ("none",) and estimates:
        names = ()
    elif not names:
        raise ValueError(f"--estimators: none given; choose from {sorted(NAMES)}")
    for i, name in enumerate(names):
        if name == "none":  # (alone, with --estimates: handled above)
            raise ValueError("--estimators none scores the CSVs of --estimates alone: give "
                             f"--estimates (and a scene file), or choose from {sorted(NAMES)}")
        if name not in NAMES:
            raise ValueError(f"unknown estimator {name!r}; choose from {sorted(NAMES)}")
        if name in names[:i]:
            raise ValueError(f"--estimators: {name} is given twice")
    given_names = [p.stem for p in estimates or ()]
    for i, name in enumerate(given_names):
        if name in names or name in given_names[:i]:
            raise ValueError(f"--estimates {estimates[i]}: its name {name!r} is taken (by "
                             f"{'an estimator' if name in names else 'another --estimates'});"
                             " rename the file")
    if crb not in (None, "deterministic", "stochastic"):
        raise ValueError(f"--crb must be deterministic or stochastic, got {crb!r}")
    if scenes is not None and crb == "deterministic":
        raise ValueError("--crb deterministic needs the sources' symbols, which a scene file "
                         "does not carry: its bound is the stochastic CRB (--crb stochastic, "
                         "the default for a file)")
    crb = crb or ("stochastic" if scenes is not None else "deterministic")
    snrs = parse_numbers(snr_db, "--snr-db", allow_empty=scenes is not None)  # files: unused
    for snr in snrs if scenes is None else ():
        check_snr_db(snr, "--snr-db")
    Ks = None if K is None else parse_numbers(K, "--K", int)
    fov = parse_fov(fov_opts)
    if scenes is None and (start or stop is not None or estimates):
        raise ValueError("--start / --stop / --estimates concern a scene file's scenes: give "
                         "the scene file")
    inputs = [p for p in (scenes, *(estimates or ()), checkpoint) if p is not None]
    for name in ("metrics.csv", "metrics.json"):  # (before a model is read: an input named
        check_writable(out_dir / name, inputs)    # as the report's table is said to be one)
    if "learned" in names:  # (its model searches its training box: the others too)
        fov = _box_beside_learned(fov, checkpoint, names)
    settings = SweepSettings(names, snrs, Ks, n,
                             known_K, seed, batch_size, crb,
                             None if checkpoint is None else str(checkpoint), snr_given,
                             power_spread_db, fov=fov)
    if checkpoint is not None and "learned" not in names:
        console.print(f"[yellow]--checkpoint is the learned estimator's model, and learned "
                      f"is not among --estimators ({', '.join(names) or 'none'}): "
                      f"{checkpoint} is not used[/]")
    if fov is not None and not names:
        console.print("[yellow]--fov is the field of view of the estimators other than "
                      "'learned', and none is among --estimators: not used[/]")
    if scenes is not None:
        from risloc.io import read_scenes
        from risloc.io.scenefile import (
            count_outside,
            outside_hint,
            radians_hint,
            scorable_truth,
            widest_true_angle,
        )

        batch, info = read_scenes(scenes, truth="unchecked")  # unscorable scenes: left out
        for note in info.notes:
            console.print(f"[yellow]{scenes}: {note}[/]")
        if "learned" in names:
            check_model_serves(checkpoint, info.system, f"{scenes}'s system")
        if settings.known_K and not info.has_truth:
            raise ValueError("--known-K needs a scene file with the truth: true positions "
                             "(azimuth_deg, elevation_deg, range_m), with K or NaN-padded")
        ignored = [opt for opt, given in (("--snr-db", snr_db != SWEEP_SNRS),
                                          ("--K", K is not None), ("--n", n != SWEEP_N),
                                          ("--power-spread-db", power_spread_db != 0),
                                          ("--config", config is not None),
                                          ("--set", bool(set_)))
                   if given]
        if ignored:
            console.print(f"[yellow]not used for a scene file (its own system, scenes, SNRs "
                          f"and K), options of a simulated sweep: {', '.join(ignored)}[/]")
        for name in names:
            if name in NEEDS_TRUTH and not info.has_truth:
                raise ValueError(f"{name} needs a scene file with the truth (it runs on the "
                                 "true covariance)")
        if start > len(batch) or (stop is not None and stop < start):
            raise ValueError(f"--start {start} / --stop {stop} select no scene range of the "
                             f"{len(batch)} scenes of {scenes}")
        n_file, batch = len(batch), batch[start:stop]
        reasons, evaluated = left_out(batch, info.system) if len(batch) else ([], None)
        left = len(reasons)
        if left == len(batch):
            raise ValueError(f"{scenes}: no scene can be evaluated (" + (
                "none selected)" if n_file and not left else "the file holds none)" if not left
                else f"all {left} have all-zero or non-finite measurements or truth that "
                "cannot be scored; `risloc info` names them)"))
        if estimates:
            settings = _with_given(settings, estimates, n_file, info, batch)
            _say_scenes_without_rows(settings, batch, start, evaluated)
        system, points = info.system, list(file_points(batch, snr_bin_db, offset=start))
        if info.has_truth:
            snr = torch.isfinite(batch.snr_db)
            fitted = ("at the noise and source powers its measurements give at the true "
                      "positions")
            console.print("the bound beside the errors: the stochastic CRB " + (
                f"of each scene {fitted} (the file has no SNR; it carries neither symbols "
                "nor powers)" if not bool(snr.any()) else "for equal source powers at each "
                "scene's SNR (a file carries neither symbols nor powers)" + (
                    f"; where a scene has no SNR, {fitted}" if not bool(snr.all()) else "")))
            # truth in other units reads as a localizer's failure: say so, as localize does
            learned = model_system(checkpoint, with_fov=True)[1] if "learned" in names \
                else None
            # (the scored scenes': a left-out scene's NaN read as a source outside, hid radians)
            scored = scorable_truth(batch, system.K_max)
            for hint in [radians_hint(*widest_true_angle(scored), attrs=info.attrs)] + [
                    outside_hint(count_outside(scored, box), box, who=who)
                    for box, who in _searched_boxes(learned, fov)]:
                if hint:
                    console.print(f"[yellow]{scenes}: {hint}[/]")
        else:
            console.print(f"[yellow]{scenes} carries no true positions: only the "
                          "estimators' time per scene can be measured; `risloc localize` "
                          "writes their estimates[/]")
        source = str(scenes) if (start, stop) == (0, None) else \
            f"{scenes}, scenes {start}..{start + len(batch) - 1}"
    else:
        cfg = sweep_config(config, set_, checkpoint if "learned" in names else None)
        if "learned" in names and checkpoint is None:  # (sweep_config checked a given one)
            check_model_serves(None, cfg.system, "this system")
        _say_scenes_beyond_the_search(cfg.scene.fov, model_system(checkpoint, with_fov=True)[1]
                                      if "learned" in names else None, fov)
        for k in Ks or ():  # (before any scene is drawn: named as the option it came from)
            if not 1 <= k <= cfg.system.K_max:
                raise ValueError(f"--K must lie in 1..K_max={cfg.system.K_max}, got {k}")
        system, points, source = cfg.system, sweep_points(settings, cfg), "simulated test split"
        left = 0
    run_report(points, system, settings, out_dir, plots, source, pooled=scenes is not None,
               left=left)


def _box_beside_learned(fov, checkpoint: Path | None, names: tuple[str, ...]):
    """The box the estimators other than 'learned' search beside it: ``fov`` (--fov) where
    it is the learned model's (another is refused: the model searches its training box), or
    else the model's own where it is not the default (a model trained for sources at
    0.15-0.4 m was compared with a classical localizer searching 0.5-10 m, F1 0.04)."""
    from risloc.config import FieldOfView

    model_fov = model_system(checkpoint, with_fov=True)[1]
    if fov is not None and fov != model_fov:
        raise ValueError(refuse_fov(fov, model_fov, "drop 'learned' from --estimators"))
    if fov is None and model_fov != FieldOfView() and any(x != "learned" for x in names):
        console.print(f"(the estimators beside 'learned' search its model's field of view, "
                      f"{model_fov.describe()}, as it does)")
        return model_fov
    return fov


SWEEP_ONLY = ("snr_db", "K", "n_per_point", "power_spread_db")  # SweepSettings of a simulation


def _searched_boxes(learned=None, searched=None) -> list[tuple]:
    """The fields of view the estimators search, each with who searches it: ``searched``
    (--fov; None: the default one), and a learned model's own (``learned``: its training
    scenes') where it differs."""
    from risloc.config import FieldOfView

    default = searched or FieldOfView()
    if learned is None or learned == default:
        return [(default, "the estimators search")]
    return [(default, "the estimators other than 'learned' search"),
            (learned, "the learned model (its training scenes') searches")]


def _say_scenes_beyond_the_search(drawn, learned=None, searched=None) -> None:
    """Warn where a sweep's scenes (``--set scene.*``) are drawn beyond the field of view
    the estimators search (:func:`_searched_boxes`; ``searched``: --fov): sources there
    cannot be found."""
    for box, who in _searched_boxes(learned, searched):
        if any(d[0] < s[0] or d[1] > s[1] for d, s in (
                (drawn.azimuth_deg, box.azimuth_deg),
                (drawn.elevation_deg, box.elevation_deg),
                (drawn.range_m, box.range_m))):
            console.print(f"[yellow]the scenes are drawn in {drawn.describe()}, beyond the "
                          f"field of view {who} ({box.describe()}): sources outside "
                          "it cannot be found" + ("" if box == learned else
                                                  " (--fov sets this box)") + "[/]")


def _say_scenes_without_rows(settings: SweepSettings, batch, start: int,
                             evaluated: torch.Tensor) -> None:
    """Warn where an estimates CSV has no row for scenes with true sources (those that
    are evaluated): they count as scenes where nothing was found, which is wrong for a CSV
    of part of the file (``evaluated``: the mask of :func:`left_out`)."""
    import numpy as np

    from risloc.io.scenefile import listed_scenes

    for g in settings.given:
        K = g.estimates.K[start:start + len(batch)]
        empty = np.flatnonzero(((K == 0) & (batch.K > 0) & evaluated).numpy()) + start
        if empty.size:
            console.print(f"[yellow]--estimates {g.path}: {empty.size} of the "
                          f"{int(evaluated.sum())} scenes evaluated have true sources but no "
                          f"estimate (no row) {listed_scenes(empty)}; they count as scenes "
                          "where no source was "
                          "found (for the estimates of part of the file, `risloc localize "
                          "--start/--stop`, evaluate that part: the same --start/--stop)"
                          + ("; scene 0 among them: does the CSV number scenes from 1 "
                             "(MATLAB's counting)? They are 0-based, subtract 1"
                             if empty[0] == 0 and 1 not in empty else "") + "[/]")


def _with_given(settings: SweepSettings, paths: list[Path], n_scenes: int,
                info, batch) -> SweepSettings:
    """``settings`` with the estimates CSVs of a scene file's scenes to score (read with
    as many slots as their widest scene); estimates that look like radians are said to,
    where the truth (of the scenes evaluated, ``batch``) does not lie as close to
    boresight; a file without truth is named (before its batch's own error: no truth)."""
    from risloc.experiments.harness import GivenEstimates
    from risloc.io.scenefile import (
        RADIANS_SUSPECT,
        radians_hint,
        scorable_truth,
        widest_true_angle,
    )
    from risloc.pipeline.estimates_file import (
        OneFileOfSeveralError,
        SeveralFilesError,
        read_estimates,
    )

    if not info.has_truth:
        raise ValueError(f"--estimates: {info.path} carries no true positions to score "
                         "estimates against")
    # (the scored scenes': a left-out scene's NaN made it NaN, hiding the estimates' radians)
    truth_widest_deg = widest_true_angle(scorable_truth(batch, info.system.K_max))[1]
    given = []
    for path in paths:
        if not path.exists():
            raise ValueError(f"--estimates {path}: no such file")
        try:
            est = read_estimates(path, n_scenes)
        except OneFileOfSeveralError as err:  # (one file's rows kept, as advised below)
            console.print(f"[yellow]--estimates {path}: rows of file {err.index} alone of a "
                          f"CSV of several files: scored as the estimates of {info.path}[/]")
            est = read_estimates(path, n_scenes, file=err.index)
        except SeveralFilesError as err:
            raise ValueError(f"--estimates {path} holds the estimates of {err.n_files} input "
                             "files of `risloc localize` (its `file` column); give the CSV of "
                             f"{info.path} alone (localize it on its own, or keep the rows "
                             "of its file index)") from None
        given.append(GivenEstimates(path.stem, str(path), est))
        if truth_widest_deg > RADIANS_SUSPECT[2]:  # (estimates hold what the truth does)
            hint = radians_hint(*widest_true_angle(est), "estimated", "estimates CSVs")
            if hint:
                console.print(f"[yellow]--estimates {path}: {hint}[/]")
    if settings.known_K or not settings.snr_given:
        console.print("[yellow]--known-K / --snr-withheld concern the estimators run here; "
                      "the estimates of --estimates are scored as they are[/]")
    return replace(settings, given=tuple(given))


def run_report(points, system, settings: SweepSettings, out_dir: Path, plots: bool,
               source: str, title: str = "risloc evaluate", pooled: bool = False,
               left: int = 0) -> list[ResultRow]:
    """Evaluate, print the table, write CSV/JSON and (optionally) the PNG plots; ``pooled``
    adds rows over all scenes (a file's SNR groups: :func:`evaluate_points`); ``left``:
    scenes that cannot be evaluated (left out of every row; the table says so)."""
    with progress() as bar:
        rows = evaluate_points(points, system, settings, bar, pooled)
    per_K = not pooled and settings.K is not None and len(settings.K) > 1
    groups = [r.snr_db for r in rows if r.K == "all"]
    file_snr = ("all" if not pooled or not any(map(math.isnan, groups)) else
                "none" if all(map(math.isnan, groups)) else "some")
    what = _plot_subtitle(settings, source, pooled, file_snr)  # scenes, what was told, bound
    print_table(results_table(rows, f"{title} — {what}", left, per_K), out)
    used = settings.meta()
    if pooled:  # a file's scenes: the sweep's own settings do not apply
        for key in SWEEP_ONLY:
            used.pop(key)
    meta = {"settings": used, "source": source, "system": system.model_dump(),
            "risloc_version": __version__, "torch_threads": torch.get_num_threads()}
    csv_path, _ = write_results(rows, out_dir, meta)
    # plots need the truth, and an SNR (their x): scenes without one are in the table only
    if plots and not any(r.K == "all" and not math.isnan(r.snr_db) for r in rows):
        console.print("[yellow]no plots drawn: their x axis is the SNR and no scene evaluated "
                      "has one (the file's snr_db is missing or NaN); the table and "
                      "metrics.csv hold the results[/]")
        plots = False
    unknown = {r.n_scenes for r in rows if r.K == "all" and math.isnan(r.snr_db)}
    unseen = f" (the {max(unknown)} scenes without an SNR: in the table only)" if unknown \
        else ""
    for name in PLOTS:  # a reused folder: no plot of an earlier run beside these results
        (out_dir / name).unlink(missing_ok=True)
    if plots:
        from risloc.experiments.plots import plot_error_vs_snr, plot_k_accuracy

        plot_error_vs_snr(rows, out_dir / "error_vs_snr.png", what + unseen)
        plot_k_accuracy(rows, out_dir / "k_accuracy_vs_snr.png",  # (no bound drawn there)
                        _plot_subtitle(settings, source, pooled, file_snr, False) + unseen)
        _spectrum_example(system, settings, out_dir)
    drawn = [name for name in PLOTS if (out_dir / name).exists()]  # (named: for a slide)
    console.print(f"results: {csv_path} (+ metrics.json"
                  f"{', PNG plots ' + ', '.join(drawn) if drawn else ''}) in {out_dir}")
    return rows


def _plot_subtitle(settings: SweepSettings, source: str, pooled: bool,
                   file_snr: str = "all", with_bound: bool = True) -> str:
    """What a plot's points are: the scenes, what the estimators were told, the bound
    (``with_bound``); ``file_snr``: which of a file's scenes hold an SNR to tell ("all",
    "some", "none")."""
    Ks = settings.K or ()
    scenes = (f"{source}, its scenes grouped by SNR (x: a group's mean SNR)" if pooled else
              f"{source}, {settings.n_per_point * max(1, len(Ks))} scenes per SNR" + (
                  f" ({settings.n_per_point} of each K = {', '.join(map(str, Ks))})"
                  if len(Ks) > 1 else f", K = {Ks[0]}" if Ks else "") + (
                  f", source powers spread over {settings.power_spread_db:g} dB"
                  if settings.power_spread_db else ", equal source powers"))
    told = (f"K {'given' if settings.known_K else 'unknown'}, "
            + ("SNR withheld" if not settings.snr_given else "SNR given" if file_snr == "all"
               else "SNR given where the file has one" if file_snr == "some"
               else "no SNR in the file"))
    if not settings.estimators:  # --estimators none: estimates made elsewhere, as they are
        told = "the estimates given (--estimates), scored as they are"
    bound = (f"{settings.crb} CRB" if not pooled or file_snr == "all" else
             f"{settings.crb} CRB at the noise and powers fitted at the truth" + (
                 " where a scene has no SNR" if file_snr == "some" else ""))
    return f"{scenes}; {told}" + (f"; {bound}" if with_bound else "")


def _spectrum_example(system, settings: SweepSettings, out_dir: Path) -> None:
    """One MUSIC spectrum slice (R_true and R_samp; R_blend with 'learned') of a test scene
    of 3 sources (K_max if fewer) at 10 dB, drawn in and plotted over the box searched
    (--fov, else a learned model's own, else the default)."""
    from risloc.config import FieldOfView, SceneConfig
    from risloc.covariance import sample_covariance
    from risloc.estimators.music import MusicConfig, music
    from risloc.experiments.plots import plot_spectrum_slice
    from risloc.simulation import scene_true_covariance, simulate_range

    pipe = None
    if "learned" in settings.estimators:
        from risloc.pipeline.learned import load_learned_pipeline

        pipe = load_learned_pipeline(settings.checkpoint)
    box = settings.fov or (pipe.fov if pipe is not None else FieldOfView())
    k = min(3, system.K_max)
    drawn = {"azimuth_deg": box.azimuth_deg, "elevation_deg": box.elevation_deg,
             "range_m": box.range_m}
    try:
        sc = simulate_range(0, 1, system, SceneConfig(**drawn), settings.seed, "test",
                            stream=99, snr_db=10.0, K=k)
    except ValueError:  # a box too narrow for K_max sources 5 deg apart: any apart
        sc = simulate_range(0, 1, system, SceneConfig(**drawn, min_separation_deg=0.0),
                            settings.seed, "test", stream=99, snr_db=10.0, K=k)
    truth = (sc.azimuth[0, :k].tolist(), sc.elevation[0, :k].tolist())
    r0 = float(sc.range_m[0, 0])
    covs = [("true", scene_true_covariance(sc, system)),
            ("samp", sample_covariance(sc.y, sc.H, sc.codes))]
    if pipe is not None:
        from risloc.inference.forward import forward_blend

        blend = pipe.recipe.blend
        with torch.no_grad():
            covs.append(("blend", forward_blend(pipe.network, sc.y, sc.H, sc.codes, None,
                                                blend.beta, blend).R_blend))
    for label, R in covs:
        est = music(R, sc.K, system, MusicConfig(fov=box))
        plot_spectrum_slice(R[0], k, system, r0, out_dir / f"music_spectrum_{label}.png",
                            truth, (est.azimuth[0, :k].tolist(), est.elevation[0, :k].tolist()),
                            f"MUSIC on R_{label}, K = {k} given, slice at the range of "
                            f"source 1 ({r0:.2f} m)\nan example simulated scene (10 dB, equal "
                            "powers), not one of the scenes evaluated", fov=box)

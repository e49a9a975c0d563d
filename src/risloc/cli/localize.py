"""`risloc localize`: scene files in, the estimates CSV out — streamed and resumable."""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.markup import escape
from rich.table import Table

from risloc.cli.common import (
    FovOpt,
    console,
    fov_setting,
    handle_errors,
    out,
    parse_fov,
    print_table,
    progress,
    refuse_fov,
    shell_arg,
)
from risloc.config import FieldOfView
from risloc.evaluation.metrics import (
    Matching,
    concat_matchings,
    match_sources,
    snr_groups,
    summarize,
)
from risloc.io.atomic import check_writable
from risloc.io.scenefile import (
    SceneFileError,
    count_outside,
    inspect_scene_file,
    iter_scene_chunks,
    outside_hint,
    radians_hint,
    scorable_mask,
    widest_true_angle,
)
from risloc.parallel import read_ahead
from risloc.pipeline import METHODS, Localizer
from risloc.pipeline.estimates_file import (
    COLUMNS,
    EstimatesStream,
    check_estimates_target,
    estimate_rows,
)
from risloc.pipeline.localizer import check_system, train_command


def _metrics_table(m: Matching, snr_db: torch.Tensor, bin_db: float, n_bad: int = 0) -> Table:
    """Metrics per SNR bin (:func:`risloc.evaluation.metrics.snr_groups`: labelled by the
    mean SNR of its scenes; scenes without an SNR as "unknown"), and over all scenes
    where there is more than one bin; ``n_bad`` scenes could not be localized (their
    sources count as missed, which the caption says)."""
    t = Table(title="metrics against the files' truth", caption=(
        f"{n_bad} scene not localized is counted: K = 0, its sources missed" if n_bad == 1
        else f"{n_bad} scenes not localized are counted: K = 0, their sources missed"
        ) if n_bad else None)
    for col in ("SNR dB", "scenes", "K acc", "F1", "az med°", "el med°", "range med m"):
        t.add_column(col, justify="right")
    groups = snr_groups(snr_db, bin_db)
    if len(groups) > 1:
        groups.append(("all", torch.ones_like(groups[0][1])))
    for label, sel in groups:
        s = summarize(m[sel])
        t.add_row(label if isinstance(label, str) else (
            "unknown" if math.isnan(label) else f"{label:g}"), str(s.n_scenes),
            f"{s.K_accuracy:.3f}", f"{s.f1:.3f}", f"{s.azimuth_median_deg:.3g}",
            f"{s.elevation_median_deg:.3g}", f"{s.range_median_m:.3g}")
    return t


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Paths of the scene files: each argument a path or a glob pattern, in order, each file
    once (however it is spelled: relative, absolute, through a link)."""
    paths: list[Path] = []
    seen: set[Path] = set()
    for p in patterns:
        hits = [Path(p)] if Path(p).exists() else [Path(h) for h in sorted(glob.glob(p))]
        if not hits:
            raise FileNotFoundError(f"no scene file matches {p}" if glob.has_magic(p) else
                                    f"{p}: no such file")
        for h in hits:
            if h.resolve() not in seen:
                seen.add(h.resolve())
                paths.append(h)
    return paths


def _localizer(method: str | None, checkpoint: Path | None, system, device: str,
               bf16: bool = True, graph_batch: int | None = None, fov=None) -> Localizer:
    if method is None:
        from risloc.pipeline.learned import DEFAULT_MODEL

        method = "learned" if checkpoint is not None or DEFAULT_MODEL.exists() else "classical"
        if method == "classical":
            console.print("[yellow]no shipped model in this build: using the classical "
                          "localizer (pass --checkpoint for a trained model)[/]")
    if method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
    if method == "classical":
        if checkpoint is not None:
            console.print(f"[yellow]--checkpoint is the learned method's model: {checkpoint} "
                          "is not used by --method classical[/]")
        return Localizer(system, "classical", fov=fov)
    loc = Localizer.from_checkpoint(checkpoint, graph_batch=graph_batch)
    if fov is not None and fov != loc.fov:
        raise ValueError(refuse_fov(fov, loc.fov))
    loc.pipeline.to(device)
    loc.pipeline.fit_config = replace(loc.pipeline.fit_config, shortlist_bf16=bf16)
    return loc


@handle_errors
def localize_command(
    scenes: Annotated[list[str], typer.Argument(help=(
        "Scene files (.h5 / .npz, docs/conventions.md) or glob patterns ('data/*.h5')."))],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Estimates CSV.")] = Path(
        "estimates.csv"),
    method: Annotated[str | None, typer.Option(help=(
        f"One of {', '.join(METHODS)}; default: learned when a model is available (the shipped "
        "one or --checkpoint), else classical."))] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Trained checkpoint (learned method); default: the shipped model.")] = None,
    K: Annotated[int | None, typer.Option("--K", help="Known number of sources.")] = None,
    start: Annotated[int, typer.Option(min=0, help="First scene of each file.")] = 0,
    stop: Annotated[int | None, typer.Option(
        min=0, help="Stop before this scene of each file (default: its end).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Scenes read and localized at a time (memory does not grow with the "
                    "number of scenes of an HDF5 file; small files of one system are "
                    "localized together, up to this many scenes); default 256 on the CPU, 8192 on "
                    "CUDA (a GPU's time per batch hardly grows with it: 624-1,350 scenes/s "
                    "at 256, 11,256-11,338 at 8192 on an H200, docs/results.md).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (either method).")] = "cpu",
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run into the same --out (its finished "
                         "scenes are not redone). Keep --batch-size: the learned method's "
                         "positions depend on the passes' sizes within about 0.01 deg and "
                         "1 cm, and at -5..5 dB about one K in 100-200 scenes (float32 "
                         "rounding; docs/guide.md).")] = False,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Discard what an interrupted run into the same --out left (its "
                          ".part and .progress.json files) and start afresh.")] = False,
    bf16: Annotated[bool, typer.Option(
        "--bf16/--no-bf16", help="Learned method: rank the repair shortlist in bfloat16 where "
                                 "the hardware runs it natively (7 % faster; K as with "
                                 "--no-bf16 in 99.8 % of test scenes). --no-bf16: outputs "
                                 "that do not depend on the CPU's bfloat16 support.")] = True,
    graphs: Annotated[bool, typer.Option(
        "--graphs/--no-graphs", help="Learned method on CUDA: capture the call on "
                                     "--batch-size scenes once as a CUDA graph and replay it "
                                     "for every batch (the last one padded); for many "
                                     "batches, where the host's kernel launches bound the "
                                     "call (docs/results.md).")] = False,
    snr_given: Annotated[bool, typer.Option(
        "--snr-given/--snr-withheld", help="Pass a file's snr_db to the localizer (the "
        "classical one takes its noise level from it; the shipped learned model reads none). "
        "--snr-withheld: as if the file carried none (as most measurement files do); the "
        "metrics' SNR bins still use it.")] = True,
    snr_bin_db: Annotated[float, typer.Option(
        "--snr-bin-db", min=0.01, help="Where the files carry the truth: the metrics table's "
        "SNR bins, in dB, each row labelled with the mean SNR of its scenes; scenes without "
        "an SNR are one row, 'unknown'.")] = 5.0,
    fov_opts: FovOpt = None,
) -> None:
    """Localize every scene of one or more files and write the estimates CSV, chunk by
    chunk (<out>.part while running, renamed to <out> when complete; --resume after a kill
    continues where it stopped). Bad scenes are reported by index and skipped; exit code 1
    when any was. With several files a `file` column (each file's index in the list the
    arguments expand to, printed at the start) follows the conventions' columns."""
    if method is not None and method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
    if resume and restart:
        raise ValueError("--resume continues an interrupted run and --restart discards it: "
                         "give one")
    fov = parse_fov(fov_opts)
    paths = expand_inputs(scenes)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device cuda, but torch {torch.__version__} sees no CUDA GPU (a "
                         "CPU-only wheel, or no driver): use --device cpu")
    if batch_size is None:
        batch_size = 8192 if device == "cuda" else 256
    check_writable(out_path, [*paths, *([checkpoint] if checkpoint is not None else [])])
    check_estimates_target(out_path)
    infos = [inspect_scene_file(p) for p in paths]
    for p, info in zip(paths[1:], infos[1:], strict=True):
        try:  # K_max may differ between files: each file's caps its own scenes
            check_system(infos[0].system.model_copy(update={"K_max": info.system.K_max}),
                         info.system, "first file")
        except ValueError as err:
            raise ValueError(f"{p}, against the first file {paths[0]}: {err}; the files of "
                             "one run share a system (K_max aside), whatever the method: "
                             "localize files of another system in a run of their own") from None
    # the localizer's K_max: the largest of the files' (each file's scenes capped by theirs)
    system = infos[0].system.model_copy(update={"K_max": max(i.system.K_max for i in infos)})
    k_cap = min(i.system.K_max for i in infos)
    if K is not None and not 1 <= K <= k_cap:
        raise ValueError(f"--K must lie in 1..K_max={k_cap}, got {K}")
    for p, info in zip(paths, infos, strict=True):  # ranges checked before anything is written
        hi = info.n_scenes if stop is None else min(stop, info.n_scenes)
        if hi <= start and (start or info.n_scenes):  # (a file of no scenes: named below)
            chosen = f"--start {start}" + ("" if stop is None else f" / --stop {stop}")
            raise ValueError(f"{p}: {chosen} select{'s' * (stop is None)} no scene range of "
                             f"its {info.n_scenes} scenes")
    ranges = [(start, info.n_scenes if stop is None else min(stop, info.n_scenes))
              for info in infos]
    empty = [p for p, info in zip(paths, infos, strict=True) if info.n_scenes == 0]
    if len(empty) == len(paths):  # (an empty CSV and "0 scenes" looked like success)
        raise ValueError(f"{', '.join(map(str, empty))}: "
                         f"{'the file holds no' if len(empty) == 1 else 'none of the files holds'}"
                         " scenes (0 scenes along the datasets' first axis): nothing to "
                         "localize")
    for p in empty:
        console.print(f"[yellow]{escape(str(p))}: the file holds no scenes: nothing of it is "
                      "localized[/]")
    graph_batch = None  # a graph of no more scenes than a call holds (small files together)
    if graphs and device == "cuda" and method != "classical":
        graph_batch = max(1, min(batch_size, sum(max(0, hi - lo) for lo, hi in ranges)))
    elif graphs:
        console.print("[yellow]--graphs applies to the learned method on CUDA only: "
                      "ignored[/]")
    loc = _localizer(method, checkpoint, system, device, bf16, graph_batch, fov)
    for p, info in zip(paths, infos, strict=True):
        try:
            check_system(loc.system, info.system)
        except ValueError as err:  # a model serves the system it was trained for
            raise ValueError(f"{p}: {err} (the classical localizer takes any system: "
                             "--method classical; or train a model for this one: "
                             f"{train_command(info.system)})") from None
    for p, info in zip(paths, infos, strict=True):
        for note in info.notes:
            console.print(f"[yellow]{p}: {note}[/]")
        if info.n_truth_problems:
            i, why = info.truth_problems[0]
            console.print(f"[yellow]{p}: the truth of {info.n_truth_problems} scene(s) cannot "
                          f"be scored (scene {i}: {why}; `risloc info` lists them): "
                          "they are localized and left out of the metrics[/]")
    many = len(paths) > 1
    if many:  # (a glob's files too: the CSV holds only their indices)
        console.print("the `file` column of the estimates: " + ", ".join(
            f"{i} = {p}" for i, p in enumerate(paths)))
    settings = {"inputs": [str(p.resolve()) for p in paths],
                # a file written anew under the same name is another input: no resume into it
                "input_versions": [[p.stat().st_size, p.stat().st_mtime_ns] for p in paths],
                "method": loc.method,
                "checkpoint": None if checkpoint is None else str(checkpoint.resolve()),
                "K": K, "start": start, "stop": stop,
                "bf16": bf16 if loc.method == "learned" else None,
                **({} if snr_given else {"snr_given": False}),  # (a record before it: given)
                # (a record before --fov, or a run without it: the default field of view)
                **({} if fov is None or fov == FieldOfView() else {"fov": fov_setting(fov)})}
    stream = EstimatesStream(out_path, settings, COLUMNS + (("file",) if many else ()),
                             resume, restart)
    if resume and not stream.resumed:
        console.print(f"(--resume: no interrupted run of {out_path} to continue; localizing "
                      "from the start)")
    if stream.discarded:
        console.print(f"(--restart: the interrupted run's rows of {out_path} discarded)")
    total = sum(max(0, hi - lo) for lo, hi in ranges)
    done_before = sum(min(stream.done.get(str(i), lo), hi) - lo
                      for i, (lo, hi) in enumerate(ranges) if str(i) in stream.done)
    # scored chunk by chunk as it goes: a run keeps ~0.5 KB per scene, not its scenes
    matched, snrs, n_new, t0 = [], [], 0, time.perf_counter()
    bad_scored = 0  # scenes not localized among those scored (counted as missed)
    outside = 0  # true sources of the scored scenes outside the field of view searched
    n_true, widest = 0, 0.0  # true sources scored and their widest angle (radians_hint)
    quiet = logging.getLogger("risloc.pipeline.localizer")  # bad scenes: named below, by
    level = quiet.level                                     # their index in the file
    quiet.setLevel(logging.ERROR)
    pending: list = []  # chunks read and not yet localized: small files' go in one call
    held = 0  # the scenes of the pending chunks

    def record(i: int, path: Path, info, at: int, batch, est, bad) -> None:
        """Append a file's chunk's estimates to the stream and score them."""
        nonlocal bad_scored, outside, n_true, widest, n_new
        rows = estimate_rows(est, at)
        stream.append(str(i), at + len(batch), [(*r, i) for r in rows] if many else rows,
                      [(f"{path}:" if many else "", at + j, why) for j, why in bad])
        if info.has_truth and done_before == 0:  # (less the scenes of unscorable truth)
            keep = scorable_mask(batch, info.system.K_max)
            part = batch
            if not keep.all():
                est, part = est[keep.to(est.K.device)], batch[keep]
            matched.append(match_sources(est, part.azimuth, part.elevation, part.range_m,
                                         part.K))
            outside += count_outside(part, loc.fov)
            n, w = widest_true_angle(part)
            n_true, widest = n_true + n, max(widest, w)
            snrs.append(part.snr_db)
            bad_scored += sum(bool(keep[j]) for j, _ in bad)
        n_new += len(batch)

    def flush() -> None:
        """Localize the pending chunks (of one system) in one call, then record each: a
        call costs about as much for 2 scenes as for a batch (its solver's iterations), so
        many small files cost what one file of their scenes does (a review: 200 files of 2
        scenes took 15 times as long as one of 400, a call per file)."""
        nonlocal held
        if not pending:
            return
        y, H, codes, snr = (torch.cat([getattr(b, k) for *_, b in pending])
                            for k in ("y", "H", "codes", "snr_db"))
        res = loc.localize(y.to(device), H.to(device), codes.to(device),
                           snr if snr_given else None, K, system=pending[0][2].system)
        lo = 0
        for i, path, info, at, batch in pending:
            hi = lo + len(batch)
            record(i, path, info, at, batch, res.estimates[lo:hi],
                   [(j - lo, why) for j, why in res.bad if lo <= j < hi])
            bar.advance(task, len(batch))
            lo = hi
        pending.clear()
        held = 0

    try:
        with progress() as bar:
            task = bar.add_task(f"localizing ({loc.method})", total=total,
                                completed=done_before)
            for i, (path, info, (lo, hi)) in enumerate(zip(paths, infos, ranges, strict=True)):
                first = max(lo, stream.done.get(str(i), lo))
                # the truth where the file has it ("unchecked": some scenes' is unscorable)
                truth = info.has_truth and (not info.n_truth_problems or "unchecked")
                # the next chunk read while this one is localized: reading 8,192 scenes
                # takes 0.1-0.7 s on the CPU of docs/results.md, localizing them on an H200
                # ~0.7 s. Closed here however the loop ends: an interrupted run's reading
                # thread is waited for now, not at the interpreter's exit (where it aborted
                # the process: 'terminate called without an active exception', exit 134)
                chunks = read_ahead(iter_scene_chunks(path, first, hi, batch_size,
                                                      truth=truth))
                with contextlib.closing(chunks):
                    for at, batch in chunks:
                        if pending and (pending[0][2].system != info.system
                                        or held + len(batch) > batch_size):
                            flush()
                        pending.append((i, path, info, at, batch))
                        held += len(batch)
                        if held >= batch_size:
                            flush()
            flush()
    except KeyboardInterrupt:
        stream.close()
        older = (f" ({out_path} there now is an earlier run's, replaced when this one "
                 "completes)") if out_path.exists() else ""
        console.print(f"[yellow]interrupted: the scenes localized so far are kept; the same "
                      f"command with --resume continues into {out_path}{older}[/]")
        raise typer.Exit(code=130) from None
    except OSError as err:  # a full disk, a file gone: the finished chunks stay
        stream.close()
        raise OSError(f"{err} (while localizing into {out_path}): the scenes localized so "
                      "far are kept; once this is fixed, the same command with --resume "
                      "continues") from None
    except SceneFileError as err:  # scenes unreadable part-way (a damaged chunk)
        stream.close()
        raise SceneFileError(
            f"{err}; the scenes localized before it are kept: where the failure was passing "
            "(a network file system), the same command with --resume continues from them; a "
            "file repaired or written anew is another input, which a run starts afresh "
            "(--stop / --start leave unreadable scenes out)") from None
    except BaseException:
        stream.close()  # (its lock; the finished chunks stay for --resume)
        raise
    finally:
        quiet.setLevel(level)
    dt = time.perf_counter() - t0
    bad = stream.bad  # of this run and of the run it resumed
    stream.finish()
    for where, j, why in bad:
        console.print(f"[yellow]scene {where}{j} not localized:[/] {why}")
    done = total - len(bad)  # a scene not localized has no row
    console.print(f"{n_new} scene{'s' * (n_new != 1)} in {dt:.1f} s ({n_new / max(dt, 1e-9):.1f} "
                  f"scenes/s); estimates of {done} scene{'s' * (done != 1)} in {out_path}"
                  + (f" ({len(bad)} not localized, above)" if bad else ""))
    scored_n = sum(len(m) for m in matched)
    if matched and not scored_n:
        console.print("(no metrics: no scene localized has truth that can be scored)")
    elif matched:
        print_table(_metrics_table(concat_matchings(matched), torch.cat(snrs), snr_bin_db,
                                   bad_scored), out)
        if scored_n < total:
            console.print(f"(metrics over the {scored_n} of {total} scenes with truth that can "
                          "be scored)")
        hint = radians_hint(n_true, widest, attrs=infos[0].attrs if len(infos) == 1 else None)
        if hint:
            console.print(f"[yellow]{hint}[/]")
        hint = outside_hint(outside, loc.fov, " of the scored scenes")
        if hint:
            console.print(f"[yellow]{hint}[/]")
    elif done_before:
        span = "".join(f" --{k} {v}" for k, v in (("start", start), ("stop", stop))
                       if v not in (0, None))
        how = (f"; `risloc evaluate {shell_arg(paths[0])}{span} --estimators none "
               f"--estimates {shell_arg(out_path)}` scores them all"
               if not many and infos[0].has_truth else "")
        console.print("(no metrics after a resume: the scenes localized before it are not "
                      f"scored again{how})")
    if bad:
        raise typer.Exit(code=1)

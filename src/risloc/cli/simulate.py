"""`risloc simulate` and `risloc info`: write and inspect scene files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from risloc import __version__
from risloc.cli.common import (
    ConfigOpt,
    SetOpt,
    console,
    get_config,
    handle_errors,
    out,
    print_table,
    progress,
    refuse_existing,
    shell_arg,
)
from risloc.config import (
    FieldOfView,
    RislocConfig,
    check_snr_db,
    read_config_file,
    recipe_path,
)
from risloc.core.checks import scene_problems
from risloc.io.atomic import check_writable
from risloc.io.scenefile import (
    H5_SUFFIXES,
    SceneFileWriter,
    check_room,
    count_outside,
    inspect_scene_file,
    is_npz,
    iter_scene_chunks,
    radians_hint,
    read_scenes,
    scorable_truth,
    widest_true_angle,
    write_scenes,
)
from risloc.simulation.streams import BLOCK, SPLITS, simulate_range
from risloc.training.config import load_train_config


@handle_errors
def simulate_command(
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 1000,
    split: Annotated[str, typer.Option(help=f"Seed stream: one of {sorted(SPLITS)}.")] = "train",
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Output .h5 or .npz.")] = Path(
        "data/scenes.h5"),
    seed: Annotated[int, typer.Option(min=0, help="Base seed.")] = 0,
    snr_db: Annotated[float | None, typer.Option(help="Fix the SNR (dB) of every scene.")] = None,
    K: Annotated[int | None, typer.Option("--K", help="Fix the number of sources.")] = None,
    power_spread_db: Annotated[float | None, typer.Option(
        help="Unequal source powers: 10 log10 p_k uniform in [-s/2, s/2] dB per source "
             "(sets scene.power_spread_db, over any --set of it; default: the config's or "
             "recipe's, 0 = equal powers).")] = None,
    shard: Annotated[str | None, typer.Option(help=(
        "i/n: write only shard i (0-based) of n equal, disjoint slices of the --n scenes; "
        "the shards of one command line, in order, hold exactly the scenes of the unsharded "
        "file, so n machines can each write one."), metavar="i/n")] = None,
    recipe: Annotated[Path | None, typer.Option(help=(
        "Draw the scenes as this training recipe (a YAML / TOML file or a shipped recipe's "
        "name) draws them: its system and scene, and the kinds of its data.scene_mix in "
        "their shares (train_mix: "
        "dense patches, near sources, other codebooks, ...). Instead of --config; --set then "
        "sets the recipe's fields (scene.snr_db=..., data.scene_mix=[])."))] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace --out when it exists (refused otherwise).")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Simulate scenes (docs/conventions.md measurement model) into a scene file."""
    lo, hi = parse_shard(shard, n)
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {sorted(SPLITS)}, got {split!r}")
    if snr_db is not None:
        check_snr_db(snr_db, "--snr-db")
    if out_path.suffix.lower() not in (*H5_SUFFIXES, ".npz"):
        raise ValueError(f"--out must end in .h5 or .npz, got {out_path}")
    extra = [] if power_spread_db is None else [f"scene.power_spread_db={power_spread_db}"]
    if recipe is not None and config is not None:
        raise ValueError("--recipe and --config exclude each other (a recipe holds the system "
                         "and the scene)")
    mix: list[dict] = []
    if recipe is not None:
        train_cfg = load_train_config(recipe, (set_ or []) + extra)
        cfg = RislocConfig(system=train_cfg.system, scene=train_cfg.scene)
        scenes = train_cfg.scenes()
        mix = [kind.model_dump() for kind in train_cfg.data.scene_mix]
    else:
        cfg = get_config(config, (set_ or []) + extra)
        scenes = cfg.scene
        if config is not None and (read_config_file(recipe_path(config)).get("data") or {}
                                   ).get("scene_mix"):
            console.print(f"[yellow]note:[/] {config} is read as a config (its system and "
                          "scene): its data.scene_mix kinds are not drawn; --recipe "
                          f"{config} draws them")
    if K is not None and not 1 <= K <= cfg.system.K_max:
        raise ValueError(f"--K {K}: the number of sources must be 1..{cfg.system.K_max} "
                         "(system.K_max)")
    if K is not None:  # recorded in the file's config as well as in K_fixed
        cfg = RislocConfig(system=cfg.system, scene=cfg.scene.model_copy(update={"K": K}))
    check_writable(out_path, [p for p in (config, recipe) if p is not None])
    refuse_existing(out_path, overwrite)
    attrs = {"config": cfg.to_json(), "split": split, "seed": seed, "risloc_version": __version__,
             "snr_db_fixed": "none" if snr_db is None else snr_db, "K_fixed": K or 0}
    if mix:  # the file's `config` holds the base scene; the kinds replace some of its fields
        attrs["scene_mix"] = json.dumps(mix)
    if shard is not None:
        attrs.update(shard=shard, first_scene=lo, n_total=n)
    t0 = time.perf_counter()
    if is_npz(out_path):
        check_room(out_path, hi - lo, cfg.system)  # (an .h5's writer checks its own)
        batch = simulate_range(lo, hi, cfg.system, scenes, seed, split, snr_db=snr_db, K=K)
        write_scenes(out_path, batch, cfg.system, attrs)
    else:
        _simulate_h5(out_path, lo, hi, cfg.system, scenes, split, seed, snr_db, K, attrs)
    dt = time.perf_counter() - t0
    size = out_path.stat().st_size / 1e6
    console.print(f"wrote {hi - lo} scenes to {out_path} ({size:.1f} MB) in {dt:.1f} s "
                  f"({(hi - lo) / dt:,.0f} scenes/s, {size / dt:.1f} MB/s)"
                  + ("" if shard is None else f"; shard {shard}: scenes {lo}..{hi - 1} of {n}"))
    _print_summary(out_path)


def parse_shard(shard: str | None, n: int) -> tuple[int, int]:
    """Scenes lo..hi-1 of shard "i/n_shards" (0-based i) of n scenes: contiguous slices
    whose sizes differ by at most one."""
    if shard is None:
        return 0, n
    try:
        i, k = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be i/n with integers, e.g. 0/4, got {shard!r}") from None
    if not (k >= 1 and 0 <= i < k):
        raise ValueError(f"--shard i/n needs n >= 1 and 0 <= i < n, got {shard!r}")
    if k > n:
        raise ValueError(f"--shard {shard}: more shards than the {n} scenes of --n")
    return i * n // k, (i + 1) * n // k


def _simulate_h5(path, start, stop, system, scenes, split, seed, snr_db, K, attrs) -> None:
    chunk = 4 * BLOCK
    with SceneFileWriter(path, stop - start, system, attrs) as writer, progress() as bar:
        task = bar.add_task(f"simulating {split}", total=stop - start)
        for lo in range(start, stop, chunk):
            hi = min(lo + chunk, stop)
            writer.write(lo - start, simulate_range(lo, hi, system, scenes, seed, split,
                                                    snr_db=snr_db, K=K))
            bar.advance(task, hi - lo)


def _check_scenes(path: Path, n_scenes: int, truth: bool, k_max: int
                  ) -> tuple[list[tuple[int, str]], int, int, float, tuple]:
    """Every scene of a file checked as the localizers check theirs
    (:func:`risloc.core.checks.scene_problems`), chunk by chunk: ([(scene, reason)], true
    sources outside the default field of view, true sources, their widest angle in degrees;
    with ``truth``, over the scenes whose truth can be scored; and the statistics of every
    scene: (SNRs, K and ranges of the scenes whose truth can be scored, or None))."""
    fov = FieldOfView()
    bad: list[tuple[int, str]] = []
    outside = n_true = 0
    widest = 0.0
    snrs, Ks, ranges, angles = [], [], [], []
    with progress() as bar:
        task = bar.add_task("checking every scene", total=n_scenes)
        for at, batch in iter_scene_chunks(path, size=1024, truth=truth and "unchecked"):
            bad += [(at + i, why) for i, why in
                    scene_problems(batch.y, batch.H, batch.codes).reasons]
            snrs.append(batch.snr_db.numpy())
            if batch.has_truth:  # (over the scenes whose truth can be scored)
                scored = scorable_truth(batch, k_max)
                outside += count_outside(scored, fov)
                n, w = widest_true_angle(scored)
                n_true, widest = n_true + n, max(widest, w)
                Ks.append(scored.K.numpy())
                ranges.append(scored.range_m.numpy().ravel())
                angles.append(np.rad2deg(np.stack([scored.azimuth.numpy().ravel(),
                                                   scored.elevation.numpy().ravel()])))
            bar.advance(task, len(batch))
    stats = (np.concatenate(snrs), np.concatenate(Ks) if Ks else None,
             np.concatenate(ranges) if ranges else None,
             np.concatenate(angles, 1) if angles else None)
    return bad, outside, n_true, widest, stats


def _fov_covering(angles: np.ndarray, ranges: np.ndarray) -> tuple[str, str, int]:
    """``--fov`` options of a box holding true sources (azimuth, elevation [2, n] deg,
    ranges [n] m; NaN slots ignored) the default one leaves out, with a margin: the fields
    the truth stays inside are not given; the ``risloc train --set`` options of a model
    searching that box (the fields the box widens, quoted for a shell: the hint printed
    ``--set scene.range_m=[...]`` whatever field it was, a placeholder that fails as
    written); and how many true coordinates no box holds (angles beyond +-89 deg)."""
    default, opts, sets, beyond = FieldOfView(), [], [], 0
    # (an azimuth modulo 360 deg, as FieldOfView.contains and the metrics take it)
    spans = {"azimuth_deg": (angles[0] + 180.0) % 360.0 - 180.0, "elevation_deg": angles[1],
             "range_m": ranges}
    for name, values in spans.items():
        lo, hi = np.nanmin(values), np.nanmax(values)
        d_lo, d_hi = getattr(default, name)
        if lo >= d_lo and hi <= d_hi:
            continue
        if name == "range_m":  # (a fifth beyond the nearest and farthest source)
            new = (min(d_lo, 0.8 * lo), max(d_hi, 1.25 * hi))
        else:  # (5 deg beyond, inside the open +-90 deg the box allows)
            new = (max(min(d_lo, lo - 5), -89.0), min(max(d_hi, hi + 5), 89.0))
        opts.append(f"--fov {name}={new[0]:.3g},{new[1]:.3g}")
        sets.append(f"--set 'scene.{name}=[{new[0]:.3g}, {new[1]:.3g}]'")
        beyond += int(((values < new[0]) | (values > new[1])).sum())  # (past +-89 deg)
    return " ".join(opts), " ".join(sets), beyond


def _print_summary(path: Path, check: bool = False) -> bool:
    """Print what a scene file holds; with ``check`` every scene is checked too. Returns
    whether every scene can be localized (True without ``check``)."""
    info = inspect_scene_file(path)
    s = info.system
    table = Table(title=escape(str(path)), show_header=True)
    table.add_column("field")
    table.add_column("value")
    table.add_row("scenes", f"{info.n_scenes}")
    table.add_row("system", s.describe() + (" (assumed: see the note)"
                                            if info.system_assumed else ""))
    table.add_row("near field", _near_field_text(s))
    table.add_row("truth", "K and true positions" if info.has_truth else
                  "none (no azimuth_deg, elevation_deg, range_m): the scenes can be "
                  "localized, not scored")
    bad: list[tuple[int, str]] = []
    if check and info.n_scenes:  # (every scene: its statistics too, not the first 4096)
        bad, outside, n_true, widest, (snr, K, r, angles) = _check_scenes(
            path, info.n_scenes, info.has_truth, s.K_max)
        n_read = info.n_scenes
    elif info.n_scenes:
        batch, _ = read_scenes(path, 0, min(info.n_scenes, 4096),
                               truth="unchecked" if info.has_truth else False)
        scored = scorable_truth(batch, s.K_max) if batch.has_truth else batch
        snr, n_read = batch.snr_db.numpy(), len(batch)
        K, r = ((scored.K.numpy(), scored.range_m.numpy()) if scored.has_truth else
                (None, None))
    if info.n_scenes:
        unknown = int(np.isnan(snr).sum())
        if np.isfinite(snr).any():
            table.add_row("SNR (dB)", f"{np.nanmin(snr):.1f} .. {np.nanmax(snr):.1f} "
                                      f"(mean {np.nanmean(snr):.1f})" + (
                                          f"; unknown (NaN) in {unknown} scene(s)"
                                          if unknown else ""))
        elif unknown:
            near = [k for k, c in info.unread if c == "snr_db"]
            table.add_row("SNR (dB)", "unknown (none given" + (
                f"; {near[0]!r} is not read: did you mean snr_db? see the note)"
                if near else ")"))
        if K is not None and len(K):
            counts = np.bincount(K, minlength=s.K_max + 1)[1:]
            table.add_row("K histogram", "  ".join(f"{k + 1}:{c}" for k, c in enumerate(counts))
                          + (f" (the {len(K)} scenes whose truth can be scored)"
                             if len(K) < n_read else ""))
            table.add_row("range (m)", f"{np.nanmin(r):.2f} .. {np.nanmax(r):.2f}")
        if n_read < info.n_scenes:
            table.add_row("(statistics)", "over the first 4096 scenes")
    if "scene_mix" in info.attrs:
        table.add_row("scene kinds", _scene_kinds(info.attrs["scene_mix"]))
    drawn = _drawn_with(info.attrs)
    if drawn:
        table.add_row("simulated with", drawn)
    for key in ("split", "seed", "shard", "first_scene", "risloc_version"):
        if key in info.attrs:
            table.add_row(key, str(info.attrs[key]))
    for note in info.notes:
        table.add_row("note", note)
    if check and info.n_truth_problems:
        table.add_row("truth checks", f"the truth of {info.n_truth_problems} scene(s) cannot "
                      "be scored: " + "; ".join(f"scene {i}: {why}" for i, why in
                                                info.truth_problems[:5])
                      + ("; ..." if info.n_truth_problems > 5 else ""))
    if check and info.n_scenes:
        table.add_row("scene checks", "every scene can be localized" if not bad else
                      f"{len(bad)} of {info.n_scenes} scenes cannot be localized: " + "; ".join(
                          f"scene {i}: {why}" for i, why in bad[:5]) + ("; ..." if len(bad) > 5
                                                                         else ""))
        if n_true:
            table.add_row("truth outside the field of view",
                          f"{outside} of {n_true} sources ({FieldOfView().describe()}: where "
                          "the localizers search)")
        hint = radians_hint(n_true, widest, attrs=info.attrs)
        if hint:
            table.add_row("truth units", hint)
        # true sources beyond the default box (in degrees, not radians): the classical
        # localizer with a box that holds them (the learned one searches its model's)
        box = _fov_covering(angles, r) if outside and not hint else ("", "", 0)
        table.add_row("next", _next_commands(shell_arg(path), s, info.has_truth, bool(bad),
                                             *box))
    print_table(table, out)
    return not bad and not (check and info.n_truth_problems)


def _next_commands(p: str, s, has_truth: bool, bad: bool, fov: str, train: str,
                   beyond: int) -> str:
    """The "next" row of `risloc info`: the localize (and, with truth, evaluate) commands to
    run on file ``p`` of system ``s``, each as it runs: the classical localizer where the
    shipped model serves another system or true sources lie beyond the default box (``fov``,
    ``train``, ``beyond``: :func:`_fov_covering`), and how a model of one's own runs the
    learned one."""
    from risloc.pipeline.localizer import train_command  # (its fields, not system.*=...)

    served = _shipped_model_serves(s)  # (else the learned default refuses the file)
    method = "" if served and not fov else " --method classical"
    chosen = "" if served and not fov else " --estimators classical"
    box = f" {fov}" if fov else ""
    return (f"`risloc localize {p} --out estimates.csv{method}{box}` localizes the scenes"
            + (f"; `risloc evaluate {p}{chosen}{box}` scores the localizers on them"
               if has_truth else "")
            + ("" if served else "; the shipped model serves another system: `--checkpoint` "
               "a model trained for this one "
               # (and on the box below: a default system's model of it cannot run)
               f"(`{' '.join([train_command(s), train]).strip()}`) to run the learned "
               "localizer" + (" and find these sources" if fov else ""))
            + ("; the learned localizer searches its model's box: a model trained on scenes "
               f"of this one (`risloc train {train}`) finds these sources"
               if fov and served else "")
            + (f"; {beyond} true angle(s) lie beyond +-89 deg, outside any box the "
               "localizers search (the RIS's plane or behind it)" if beyond else "")
            + ("; both leave out the scenes that cannot be localized" if bad else ""))


def _near_field_text(system) -> str:
    """Where the system tells range: its Fraunhofer distance (a persona with an 8 x 8 RIS at
    28 GHz searched 0.5-10 m, beyond its 0.52 m near field, and was not told why the range
    came out poorly)."""
    from risloc.physics.geometry import aperture, fraunhofer_distance

    return (f"out to 2 D^2 / lambda = {fraunhofer_distance(system):.3g} m (D = "
            f"{aperture(system):.3g} m, the RIS's diagonal): the range of a source beyond it "
            "is told poorly (the CRB says how poorly)")


def _shipped_model_serves(system) -> bool:
    """Whether the shipped model serves ``system`` (True where it cannot be read: the
    hints then stay the default ones)."""
    from risloc.cli.common import model_system
    from risloc.pipeline.localizer import check_system

    try:
        model = model_system(None)
    except (OSError, ValueError, KeyError):
        return True
    try:
        check_system(model, system)
    except ValueError:
        return False
    return True


def _drawn_with(attrs: dict) -> str:
    """What `risloc simulate` drew a file's scenes with (its attributes), or ''."""
    try:
        scene = json.loads(attrs["config"])["scene"]
    except (KeyError, TypeError, ValueError):
        return ""
    fixed_snr, fixed_K = attrs.get("snr_db_fixed"), attrs.get("K_fixed")
    snr = (f"SNR {fixed_snr} dB" if fixed_snr not in (None, "none") else
           f"SNR uniform in {scene.get('snr_db')} dB")
    if fixed_K in (None, 0, "0"):  # (--K sets it; a recipe's scene.K too)
        fixed_K = scene.get("K")
    K = f"K = {fixed_K}" if fixed_K not in (None, 0, "0") else "K uniform in 1..K_max"
    spread = scene.get("power_spread_db")
    spread = (f"spread over s dB, s uniform per scene in {spread}"
              if isinstance(spread, list) and spread[0] != spread[1] else
              f"spread over {spread[0] if isinstance(spread, list) else spread} dB")
    codes = (f"{scene.get('codebook')} codes" if scene.get("codebook") == "hadamard" else
             f"{scene.get('codebook')} codes of {scene.get('code_bits')}-bit phases")
    fov = (f"azimuth {scene.get('azimuth_deg')} deg, elevation {scene.get('elevation_deg')} "
           f"deg, range {scene.get('range_m')} m")
    return (("the base scene: " if attrs.get("scene_mix") else "")
            + f"{snr}, {K}, source powers {spread}, Rician factor in "
            f"{scene.get('rician_kappa')}, {codes}, {fov}, sources >= "
            f"{scene.get('min_separation_deg')} deg apart")


@handle_errors
def info_command(path: Annotated[Path, typer.Argument(help="Scene file (.h5 / .npz).")]) -> None:
    """Validate a scene file and print what it holds; every scene is checked as the
    localizers check theirs and its truth for scoring (exit code 1 when a scene cannot be
    localized or its truth cannot be scored), and true sources outside the field of view
    the localizers search are counted."""
    if not _print_summary(path, check=True):
        raise typer.Exit(code=1)


def _scene_kinds(text) -> str:
    """The file's scene_mix attribute (risloc simulate --recipe) in words; an attribute
    that is not that is shown as it is, not an error (the measurements are still fine)."""
    try:
        kinds = json.loads(text)
        return ", ".join(f"{k.get('name') or 'unnamed'} {float(k['share']):.0%}"
                         for k in kinds) + " (the base scene the rest)"
    except (TypeError, ValueError, KeyError, AttributeError):
        return f"(not a list of kinds, as risloc simulate writes it): {str(text)[:200]}"

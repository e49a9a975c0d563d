"""PNG plots of evaluation results (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from risloc.config import FieldOfView, SystemConfig  # noqa: E402
from risloc.evaluation.metrics import EFFICIENT_MEDIAN  # noqa: E402
from risloc.experiments.harness import ResultRow  # noqa: E402
from risloc.io.atomic import atomic_path  # noqa: E402

_PANELS = (("azimuth_median_deg", "crb_azimuth_median_deg", "azimuth [deg]"),
           ("elevation_median_deg", "crb_elevation_median_deg", "elevation [deg]"),
           ("range_median_m", "crb_range_median_m", "range [m]"))


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


#: one colour and marker per estimator, the same in every plot whatever the order given
_STYLES = {"learned": ("C0", "o", "-"), "classical": ("C1", "s", "--"),
           "music-samp": ("C2", "^", "-."), "music-samp+nfmle": ("C3", "v", ":"),
           "ramezani-samp": ("C4", "D", "-."), "music-oracle": ("C5", "P", ":")}
_OTHERS = (("C6", "X", "-"), ("C7", "*", "--"), ("C8", "h", "-."), ("C9", "p", ":"))


def _style(name: str, names: list[str]) -> dict:
    """Line keywords of ``name``: its own (estimators), else by its place among the others
    (estimates made elsewhere); differing markers and dashes keep equal curves visible."""
    others = [n for n in names if n not in _STYLES]
    colour, marker, dash = _STYLES.get(name) or _OTHERS[others.index(name) % len(_OTHERS)]
    return {"color": colour, "marker": marker, "linestyle": dash, "markerfacecolor": "none",
            "label": name}


def _snr_ticks(ax, rows: list[ResultRow]) -> None:
    """x ticks at the SNRs evaluated (where few enough to read), leaving out one closer
    than a twelfth of the span to the last one kept: a file's group means 16.6 and 18.1 dB
    printed over each other ("16.618.1")."""
    snrs = sorted({r.snr_db for r in rows if r.K == "all" and not math.isnan(r.snr_db)})
    if 1 < len(snrs) <= 12:
        kept = [snrs[0]]
        for v in snrs[1:]:
            if v - kept[-1] >= (snrs[-1] - snrs[0]) / 12:
                kept.append(v)
        ax.set_xticks(kept, [f"{v:g}" for v in kept])


def _wrap(text: str, fig, fontsize: float) -> str:
    """``text`` broken into lines that fit ``fig``'s width: a file's subtitle in one line
    (its path, what was told, the bound) widened the PNG past twice the panels' width."""
    width = max(40, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))  # (chars of ~0.52 em)
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _series(rows: list[ResultRow], estimator: str, key: str) -> tuple[list[float], list[float]]:
    pts = sorted((r.snr_db, r.metrics.get(key)) for r in rows
                 if r.estimator == estimator and r.K == "all" and r.metrics.get(key) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def _legend_below(ax, *more) -> None:
    """One legend of ``ax``'s lines (and those of ``more`` axes sharing it) below its x
    label: inside the panel it hid the points it sat on."""
    handles, labels = ax.get_legend_handles_labels()
    for other in more:
        h, lab = other.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.17),
              ncols=min(len(labels), 4), fontsize=8, frameon=False)


def plot_error_vs_snr(rows: list[ResultRow], path: Path, subtitle: str = "") -> Path:
    """Median absolute error per parameter vs SNR, one line per estimator, CRB dashed;
    ``subtitle`` says what the points are (scenes, what the estimators were told)."""
    names = list(dict.fromkeys(r.estimator for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), layout="constrained")
    for ax, (key, crb_key, label) in zip(axes, _PANELS):
        for name in names:
            x, y = _series(rows, name, key)
            ax.semilogy(x, y, **_style(name, names))
        x, y = _series(rows, names[0], crb_key)
        if x:
            # a marker too: a file's scenes at one SNR give one point, which a dashed line
            # alone does not draw
            ax.semilogy(x, [EFFICIENT_MEDIAN * v for v in y], "k--", marker="_",
                        markersize=16, label="0.674 x median sqrt(CRB)")
        ax.set_xlabel("SNR [dB]")
        ax.set_ylabel(f"median |error|, {label}")
        ax.grid(True, which="both", alpha=0.3)
        _snr_ticks(ax, rows)
    note = (f"\ndashed: 0.674 x the median sqrt(CRB) over {names[0]}'s paired sources, an "
            "efficient estimator's median |error| where every source has the same bound (it "
            "reads low where they differ;\nmetrics.csv's <coordinate>_median_over_bound is the "
            "per-source ratio, about 1 for an efficient estimator)"
            if any(r.metrics.get(c) is not None for r in rows for _, c, _ in _PANELS) else "")
    fig.suptitle(_wrap("Localization error vs SNR (Hungarian-paired sources)"
                       + (f"\n{subtitle}" if subtitle else "") + note, fig, 9.5), fontsize=9.5)
    # one legend below the panels: inside one, it hid the low-SNR points it sat on
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=len(names) + 1, fontsize=8, frameon=False)
    return _save(fig, path)


def plot_k_accuracy(rows: list[ResultRow], path: Path, subtitle: str = "") -> Path:
    """K accuracy and detection F1 (a reported source within the 5 deg gate of a true
    one) vs SNR."""
    names = list(dict.fromkeys(r.estimator for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    for name in names:
        for ax, key in zip(axes, ("K_accuracy", "f1")):
            x, y = _series(rows, name, key)
            ax.plot(x, y, **_style(name, names))
    for ax, title in zip(axes, ("K accuracy", "detection F1 (5 deg gate)")):
        ax.set_xlabel("SNR [dB]")
        ax.set_title(title)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        _snr_ticks(ax, rows)
    if subtitle:
        fig.suptitle(_wrap(subtitle, fig, 10), fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=len(names), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_spectrum_slice(R: torch.Tensor, K: int, system: SystemConfig, range_m: float,
                        path: Path, truth=None, estimates=None, title: str = "",
                        n: int = 121, fov: FieldOfView = FieldOfView()) -> Path:
    """MUSIC pseudo-spectrum (dB) over the azimuth x elevation of ``fov`` at one range.

    R : [N, N]; truth / estimates : (azimuth [rad], elevation [rad]) sequences or None.
    """
    from risloc.estimators.music import music_spectrum

    az = torch.linspace(*map(math.radians, fov.azimuth_deg), n, dtype=torch.float64)
    el = torch.linspace(*map(math.radians, fov.elevation_deg), n // 2, dtype=torch.float64)
    EL, AZ = torch.meshgrid(el, az, indexing="ij")
    P = music_spectrum(R.unsqueeze(0), K, system, AZ.reshape(-1), EL.reshape(-1),
                       torch.full_like(AZ.reshape(-1), range_m))[0].reshape(EL.shape)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    img = ax.pcolormesh(torch.rad2deg(AZ).numpy(), torch.rad2deg(EL).numpy(),
                        (10 * torch.log10(P)).numpy(), shading="auto", cmap="viridis")
    fig.colorbar(img, ax=ax, label="pseudo-spectrum [dB]")
    for pts, style, label in ((truth, "wx", "true"), (estimates, "r+", "estimated")):
        if pts is not None:
            ax.plot([math.degrees(a) for a in pts[0]], [math.degrees(e) for e in pts[1]],
                    style, ms=10, mew=2, label=label)
    ax.set_xlabel("azimuth [deg]")
    ax.set_ylabel("elevation [deg]")
    ax.set_title(title or f"MUSIC spectrum slice at r = {range_m:.2f} m")
    if truth is not None or estimates is not None:  # (no marks: no legend, no warning)
        ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_run(run_dir: Path, path: Path) -> Path:
    """Training curves of a run folder (epochs.csv, steps.csv): the training loss per
    logged step and per epoch, the validation objective and its parts, learning rate and
    blend weight."""
    from risloc.training.logs import read_log

    def read(name: str, needed: tuple[str, ...]) -> list[dict[str, float]]:
        f = run_dir / name
        if not f.exists():
            return []
        fields, rows, _ = read_log(f)  # (a row cut off by a kill: left out)
        missing = [c for c in needed if c not in fields]
        if missing:
            raise ValueError(f"{f} lacks the column(s) {', '.join(missing)} (not written "
                             "by risloc train?)")
        out = []
        for line, row in enumerate(rows, start=2):
            try:
                got = {k: float(v) for k, v in row.items() if v not in ("", None)}
            except (TypeError, ValueError) as err:
                raise ValueError(f"{f}: line {line}: {err}") from None
            lacking = [c for c in needed if c not in got]  # (a line of too few cells)
            if lacking:
                raise ValueError(f"{f}: line {line} lacks {', '.join(lacking)}")
            out.append(got)
        return out

    if not (run_dir / "epochs.csv").exists():
        raise FileNotFoundError(f"{run_dir}: no epochs.csv (not a risloc run folder?)")
    epochs = read("epochs.csv", ("epoch", "train_total", "val_objective", "val_angle_median_deg",
                                 "lr", "beta"))
    steps = read("steps.csv", ("epoch", "step", "total"))
    if not epochs:
        raise ValueError(f"{run_dir}: epochs.csv has no rows yet (no epoch has finished)")
    e = [r["epoch"] for r in epochs]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), layout="constrained")
    ax = axes[0, 0]
    if steps:
        ax.plot([r["step"] for r in steps], [r["total"] for r in steps], lw=0.8,
                label="train (logged steps)")
    # steps per epoch from the rows of finished epochs (a running run's last rows are of
    # an epoch not in epochs.csv yet, whose steps would shrink the estimate)
    done = [r for r in steps if r["epoch"] < len(epochs)] or steps
    spe = done[-1]["step"] / max(1, done[-1]["epoch"] + 1) if steps else 1
    ax.plot([x * spe for x in e], [r["train_total"] for r in epochs], "o-",
            label="train (epoch mean)")
    ax.set_xlabel("optimizer step" if steps else "epoch")  # (no step logged: epochs)
    ax.set_title("training loss")
    _legend_below(ax)
    ax = axes[0, 1]
    ax.plot(e, [r["val_objective"] for r in epochs], "o-", label="objective (left)")
    ax.set_ylabel("objective")
    right = ax.twinx()  # (its own units)
    right.plot(e, [r["val_angle_median_deg"] for r in epochs], "s--", color="C1",
               label="angle median [deg] (right)")
    if all("val_range_median_m" in r for r in epochs):
        right.plot(e, [r["val_range_median_m"] for r in epochs], "^:", color="C2",
                   label="range median [m] (right)")
    right.set_ylabel("median error")
    ax.set_title("validation (lower is better)")
    ax.set_xlabel("epoch")
    _legend_below(ax, right)
    ax = axes[1, 0]
    for key, label in (("val_K_accuracy", "K accuracy"), ("val_f1", "F1"),
                       ("val_overlap", "subspace overlap"), ("val_nmse", "NMSE R_blend (lower "
                                                                         "is better)")):
        ax.plot(e, [r.get(key, math.nan) for r in epochs], "o-", label=label)
    ax.set_ylim(bottom=0)
    ax.set_title("validation (higher is better, but NMSE)")
    ax.set_xlabel("epoch")
    _legend_below(ax)
    ax = axes[1, 1]
    lr = [r["lr"] for r in epochs]
    ax.plot(e, lr, "o-", label="learning rate")
    if max(lr) > 10 * min(lr) > 0:  # decades: log; within one, its labels crowd or vanish
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax2 = ax.twinx()
    ax2.plot(e, [r["beta"] for r in epochs], "s--", color="C1", label="blend beta")
    ax.set_title("schedule")
    ax.set_ylabel("learning rate")
    ax2.set_ylabel("blend beta")
    ax.set_xlabel("epoch")
    _legend_below(ax, ax2)
    best = _best_epoch(run_dir, epochs)
    swa = [r["epoch"] for r in epochs if r.get("swa")]
    for a in (axes[0, 1], axes[1, 0], axes[1, 1]):  # the epoch panels
        if best is not None:
            a.axvline(best, color="grey", ls=":", lw=1)
        if swa:
            a.axvspan(min(swa) - 0.5, max(swa) + 0.5, color="grey", alpha=0.08, lw=0)
    for a in axes.flat:
        a.grid(True, alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs (and steps) are whole
    marks = ([f"dotted, the best epoch ({best}, as training chose it)"] if best is not None
             else []) + (["shaded, the SWA epochs"] if swa else [])
    fig.suptitle(f"risloc run {run_dir}" + (": " + "; ".join(marks) if marks else ""))
    return _save(fig, path)


def _best_epoch(run_dir: Path, epochs: list[dict[str, float]]) -> int | None:
    """The epoch training chose (best.pt's): last.pt's record (written every epoch; a run
    resumed for more epochs leaves the first run's metrics.json behind), else metrics.json's
    best_epoch, else the first epoch of the lowest finite validation objective (training's
    rule without schedule.min_improvement); None where no objective is finite. The lowest
    objective alone was not it: a NaN first epoch stayed min()'s answer, and
    min_improvement > 0 keeps an earlier epoch."""
    import json

    from risloc.inference.checkpoint import load_checkpoint

    best = None
    if (run_dir / "last.pt").exists():
        try:
            best = load_checkpoint(run_dir / "last.pt").get("best", {}).get("epoch")
        except (OSError, ValueError, AttributeError):
            best = None
    if best is None:
        try:
            best = json.loads((run_dir / "metrics.json").read_text()).get("best_epoch")
        except (OSError, ValueError, AttributeError):
            best = None
    if isinstance(best, int | float) and best >= 1:
        return int(best)
    finite = [r for r in epochs if math.isfinite(r["val_objective"])]
    return int(min(finite, key=lambda r: r["val_objective"])["epoch"]) if finite else None

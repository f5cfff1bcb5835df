"""Plots of the results table (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

from hnr_assets.lib.evaluation.results import REPORTED_LABEL, Results
from hnr_assets.lib.evaluation.scores import PRIMARY_METRIC
from hnr_assets.lib.runtime.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def heatmap(results: Results, target: Path, dpi: int = 110) -> Path:
    """Systems × datasets (and the average) of the primary metric; missing cells grey and labelled."""
    import numpy as np

    plt = _pyplot()
    cols = [*results.datasets, "average"]
    rows = results.table.iter_rows(named=True)
    values = np.array([[math.nan if r[c] is None else r[c] for c in cols] for r in rows], dtype=float).reshape(
        len(results.systems), len(cols)
    )
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 3.0, 0.42 * len(results.systems) + 1.6))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", vmin=vmin, vmax=max(vmax, vmin + 1e-6))
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(results.systems)), results.systems)
    mid = (vmin + vmax) / 2
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "missing" if math.isnan(v) else f"{v:.3f}"
            color = "black" if math.isnan(v) or v > mid else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.axvline(len(results.datasets) - 0.5, color="white", linewidth=2)
    fig.colorbar(image, ax=ax, label=PRIMARY_METRIC)
    ax.set_title(f"{PRIMARY_METRIC} per system and dataset")
    fig.tight_layout()
    return _save(fig, plt, target, dpi)


def averages_bar(results: Results, target: Path, dpi: int = 110) -> Path:
    """Average of the primary metric per system (complete systems only), with the study's reported
    averages as separate markers; systems not scored on every dataset are labelled as such."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    plt = _pyplot()
    rows = list(results.table.iter_rows(named=True))
    fig, ax = plt.subplots(figsize=(8.0, 0.38 * len(rows) + 2.2), layout="constrained")
    ys = list(range(len(rows)))
    measured = [r["average"] if r["average"] is not None else 0.0 for r in rows]
    colors = {"baseline": "#7f7f7f", "recipe": "#1f77b4"}
    ax.barh(ys, measured, color=[colors[r["kind"]] for r in rows])
    for y, r in zip(ys, rows, strict=True):
        if r["average"] is None:
            ax.text(
                0.005,
                y,
                f"incomplete ({r['datasets_scored']}/{len(results.datasets)} datasets)",
                va="center",
                fontsize=8,
                color="#b22222",
            )
        else:
            ax.text(r["average"] + 0.005, y, f"{r['average']:.3f}", va="center", fontsize=8)
    reported = [(y, r["study_reported_average"]) for y, r in zip(ys, rows, strict=True) if r["study_reported_average"]]
    if reported:
        ax.scatter([v for _, v in reported], [y for y, _ in reported], marker="D", color="#ff7f0e", zorder=3)
    ax.set_yticks(ys, [r["system"] for r in rows])
    ax.invert_yaxis()
    top = max([*measured, *(v for _, v in reported), 0.1])
    ax.set_xlim(0, min(1.0, top * 1.18))
    ax.set_xlabel(f"average {PRIMARY_METRIC} over {len(results.datasets)} datasets")
    handles = [
        Patch(color=colors["recipe"], label="recipe (measured here)"),
        Patch(color=colors["baseline"], label="baseline (measured here)"),
        Line2D([], [], marker="D", color="#ff7f0e", linestyle="", label=REPORTED_LABEL),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    ax.set_title(f"Average {PRIMARY_METRIC} per system")
    return _save(fig, plt, target, dpi)


def intervals(results: Results, target: Path, dpi: int = 110) -> Path:
    """Per dataset, each system's primary metric with its bootstrap interval, the base encoder's as a band.

    One panel per dataset (systems on the y axis, in table order); a missing cell is labelled, not drawn.
    """
    plt = _pyplot()
    n = max(len(results.datasets), 1)
    fig, axes = plt.subplots(
        1, n, figsize=(3.6 * n + 2.0, 0.36 * len(results.systems) + 1.8), sharey=True, layout="constrained"
    )
    axes = [axes] if n == 1 else list(axes)
    ys = list(range(len(results.systems)))
    for ax, dataset in zip(axes, results.datasets, strict=False):
        base = results.cells.get(("base-encoder", dataset))
        if base is not None and base.status == "ok" and not math.isnan(base.ci[0]):
            ax.axvspan(base.ci[0], base.ci[1], color="#d9d9d9", zorder=0, label="base-encoder interval")
        for y, system in zip(ys, results.systems, strict=True):
            cell = results.cells[(system, dataset)]
            if cell.status != "ok":
                ax.text(0.02, y, cell.status, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
                continue
            mean = float(cell.metrics[PRIMARY_METRIC])
            low, high = cell.ci
            color = "#7f7f7f" if system in ("bm25-retrieval", "base-encoder") else "#1f77b4"
            ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color=color, capsize=3, markersize=4)
        ax.set_title(dataset, fontsize=9)
        ax.set_xlabel(PRIMARY_METRIC)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys, results.systems)
    axes[0].invert_yaxis()
    fig.suptitle(f"{PRIMARY_METRIC} with {results.settings.confidence:.0%} bootstrap intervals")
    return _save(fig, plt, target, dpi)


def _save(fig, plt, target: Path, dpi: int) -> Path:
    with atomic_path(Path(target)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(target)

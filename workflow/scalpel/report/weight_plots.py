"""Figures of the weight analyses (report.weight_tables) and of the forgetting predictors (report.forgetting)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from scalpel import io
from scalpel.analysis.matrices import MODULES
from scalpel.report.plots import LINESTYLE, _colors, _save

_TEXT = {"run": str, "run_a": str, "run_b": str, "module": str, "method": str, "predictor": str}
LABELS = {"unchanged_bitwise": "unchanged, bit for bit", "unchanged_tol": "unchanged (|dw| <= 1e-3 |w|)",
          "overlap_top": "updated among the 30% largest |W0|", "overlap_bottom": "updated among the 30% smallest |W0|",
          "rel_update": r"$\|\Delta W\|_F / \|W_0\|_F$", "nss": "spectral shift", "stable_rank": "stable rank of dW",
          "effective_rank": "effective rank of dW", "kl_per_token": "KL(base || ckpt) per token"}


def read_tsv(path) -> pd.DataFrame:
    return io.read_tsv(path, dtype=_TEXT)


def _label(col: str) -> str:
    m = re.fullmatch(r"angle_(left|right)_k(\d+)", col)
    return f"largest principal angle, top-{m[2]} {m[1]} (deg)" if m else LABELS.get(col, col)


def angle_column(spectral: pd.DataFrame) -> str | None:
    """The left-subspace angle of the smallest k in the table."""
    ks = sorted(int(m[1]) for c in spectral.columns if (m := re.fullmatch(r"angle_left_k(\d+)", c)))
    return f"angle_left_k{ks[0]}" if ks else None


def _grid(rows: pd.DataFrame, value: str) -> pd.DataFrame:
    return rows.pivot(index="layer", columns="module", values=value).reindex(columns=list(MODULES)).sort_index()


def _final(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.step == df.groupby("run").step.transform("max")]


def heatmaps(update: pd.DataFrame, spectral: pd.DataFrame, out_png) -> dict:
    """Layer x module at each run's last analysed checkpoint: a row of panels per measure (unchanged fraction, and
    stable rank and principal angle where the spectral pass ran), one colour scale per measure.
    Returns (measure, run) -> the panel's grid."""
    measures = [("unchanged_tol", _final(update))]
    if not spectral.empty:
        final_spectral = _final(spectral)
        measures += [("stable_rank", final_spectral), (angle_column(spectral), final_spectral)]
    runs = list(dict.fromkeys(update.run))
    fig = Figure(figsize=(2.6 * len(runs) + 1.5, 3.2 * len(measures)), layout="constrained")
    axes = fig.subplots(len(measures), len(runs), squeeze=False)
    grids = {}
    for row_axes, (measure, table) in zip(axes, measures):
        panels = {run: _grid(table[table.run == run], measure) for run in runs if (table.run == run).any()}
        values = np.concatenate([g.to_numpy(dtype=float).ravel() for g in panels.values()] or [np.array([])])
        finite = values[np.isfinite(values)]
        norm = Normalize(*(finite.min(), finite.max()) if finite.size else (0, 1))
        image = None
        for ax, run in zip(row_axes, runs):
            if run not in panels:
                ax.axis("off")
                continue
            grid = grids[(measure, run)] = panels[run]
            image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", norm=norm, aspect="auto", origin="lower",
                              interpolation="nearest")
            step = int(table[table.run == run].step.iloc[0])
            ax.set_title(f"{run} (step {step})", fontsize=9)
            ax.set_xticks(range(len(MODULES)), [m.removesuffix("_proj") for m in MODULES], rotation=45, fontsize=7)
            ax.set_yticks(range(len(grid)), grid.index, fontsize=6)
        row_axes[0].set_ylabel("layer")
        if image is not None:
            fig.colorbar(image, ax=list(row_axes), label=_label(measure))
    _save(fig, out_png)
    return grids


def trajectories(means: pd.DataFrame, out_png) -> dict:
    """Each measure's model mean vs % of training, one line per run; GRPO solid, SFT dashed. Returns measure ->
    Axes. Measures computed at one checkpoint per run only (the spectral ones by default) show as points."""
    measures = [c for c in ("unchanged_bitwise", "unchanged_tol", "overlap_top", "overlap_bottom", "rel_update",
                            "nss", "stable_rank", "effective_rank") if c in means and means[c].notna().any()]
    measures += [c for c in means.columns if re.fullmatch(r"angle_\w+_k\d+", c) and means[c].notna().any()]
    colors = _colors(means.run)
    cols = 4
    fig = Figure(figsize=(3.4 * cols, 2.8 * math.ceil(len(measures) / cols)), layout="constrained")
    axes = fig.subplots(math.ceil(len(measures) / cols), cols, squeeze=False).ravel()
    panels = dict(zip(measures, axes))
    for measure, ax in panels.items():
        for run, rows in means.groupby("run", sort=False):
            rows = rows.dropna(subset=[measure]).sort_values("pct_training")
            method = rows.method.iloc[0] if len(rows) else ""
            ax.plot(rows.pct_training, rows[measure], LINESTYLE.get(method, ":"), marker="o", markersize=3,
                    color=colors[run], label=f"{run} ({method})")
        if measure.startswith("overlap_") and "overlap_random" in means:
            ax.axhline(float(means.overlap_random.iloc[0]), color="0.5", lw=0.8, ls=":", label="random")
        ax.set_title(_label(measure), fontsize=8)
        ax.set_xlim(0, 105)  # the same axis for measures of the final checkpoints only
        ax.set_xlabel("% of training", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(measures):]:
        ax.axis("off")
    if measures:
        axes[0].legend(fontsize=7)
    _save(fig, out_png)
    return panels


def alignment(align: pd.DataFrame, align_means: pd.DataFrame, out_png) -> dict:
    """Cosine of the two runs' updates per layer x module, one panel per pair of checkpoints, on one symmetric
    scale; the title gives the model's cosine and the Jaccard overlap of the update masks against random.
    Returns (run_a, run_b) -> grid."""
    pairs = list(dict.fromkeys(zip(align.run_a, align.run_b))) if not align.empty else []
    fig = Figure(figsize=(3.0 * max(1, len(pairs)) + 1.5, 4.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(pairs)), squeeze=False)[0]
    if not pairs:
        axes[0].axis("off")
        axes[0].text(0.5, 0.5, "no pair of runs to compare\n(config weights.pairs)", ha="center", va="center")
        _save(fig, out_png)
        return {}
    limit = float(np.nanmax(np.abs(align.cosine.to_numpy(dtype=float)))) if align.cosine.notna().any() else 1.0
    norm = Normalize(-limit, limit)
    grids, image = {}, None
    for ax, (a, b) in zip(axes, pairs):
        rows = align[(align.run_a == a) & (align.run_b == b)]
        grid = grids[(a, b)] = _grid(rows, "cosine")
        image = ax.imshow(grid.to_numpy(dtype=float), cmap="RdBu_r", norm=norm, aspect="auto", origin="lower",
                          interpolation="nearest")
        m = align_means[(align_means.run_a == a) & (align_means.run_b == b)].iloc[0]
        ax.set_title(f"{a} vs {b}\ncosine {m.cosine:.3g}; Jaccard {m.jaccard:.3g} (random {m.jaccard_random:.3g})",
                     fontsize=8)
        ax.set_xticks(range(len(MODULES)), [x.removesuffix("_proj") for x in MODULES], rotation=45, fontsize=7)
        ax.set_yticks(range(len(grid)), grid.index, fontsize=6)
    axes[0].set_ylabel("layer")
    fig.colorbar(image, ax=list(axes), label=r"cosine($\Delta W_a$, $\Delta W_b$)")
    _save(fig, out_png)
    return grids


def forgetting_figure(points: pd.DataFrame, table: pd.DataFrame, left_out: int, out_png,
                      pairs: pd.DataFrame | None = None) -> dict:
    """The out-of-domain change against each predictor, in R^2 order, with the fitted line and R^2 [interval]; with
    `pairs`, below them the ranking: R^2 of the reference (kl_per_token where fitted, else the top predictor) minus
    R^2 of each other predictor, with its paired run-resampling interval. Returns predictor -> Axes (and "pairs")."""
    fitted = table.dropna(subset=["r2"])
    cols = 4
    n_rows = max(1, math.ceil(len(fitted) / cols))
    with_pairs = pairs is not None and not pairs.empty and not fitted.empty
    fig = Figure(figsize=(3.4 * cols, 2.9 * n_rows + (0.3 * len(fitted) + 1.2 if with_pairs else 0)),
                 layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.9 * n_rows, 0.3 * len(fitted) + 1.2]) if with_pairs else (
        fig, None)
    axes = top.subplots(n_rows, cols, squeeze=False).ravel()
    by = "run" if points.run.nunique() <= 8 else "method"  # a sweep's many runs: coloured by method
    colors = _colors(points[by])
    panels = {}
    for ax, row in zip(axes, fitted.itertuples(index=False)):
        panels[row.predictor] = ax
        have = points.dropna(subset=[row.predictor])
        for key, rows in have.groupby(by, sort=False):
            ax.scatter(rows[row.predictor], rows.ood_change, s=14, color=colors[key], label=key)
        if math.isfinite(row.slope):
            x = np.linspace(have[row.predictor].min(), have[row.predictor].max(), 50)
            ax.plot(x, row.intercept + row.slope * x, color="black", lw=1)
        ax.set_title(f"R² {row.r2:.2f} [{row.r2_low:.2f}, {row.r2_high:.2f}], n {row.n}", fontsize=8)
        ax.set_xlabel(_label(row.predictor), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(fitted):]:
        ax.axis("off")
    if panels:
        axes[0].set_ylabel("out-of-domain change vs base")
        axes[0].legend(fontsize=7)
    if with_pairs:
        panels["pairs"] = _pairs_panel(bottom.subplots(), fitted, pairs)
    fig.suptitle(f"{len(points)} checkpoints with every out-of-domain task ({left_out} without all, left out)",
                 fontsize=9)
    _save(fig, out_png)
    return panels


def _pairs_panel(ax, fitted: pd.DataFrame, pairs: pd.DataFrame):
    """R^2(reference) - R^2(other) per other predictor, in rank order, with its interval; 0 marked."""
    ranking = list(fitted.predictor)
    ref = "kl_per_token" if "kl_per_token" in ranking else ranking[0]
    rows = []
    for other in ranking:
        if other == ref:
            continue
        hit = pairs[((pairs.predictor_a == ref) & (pairs.predictor_b == other))
                    | ((pairs.predictor_a == other) & (pairs.predictor_b == ref))]
        if hit.empty:
            continue
        h = hit.iloc[0]
        sign = 1.0 if h.predictor_a == ref else -1.0
        lo, hi = sorted((sign * h.diff_low, sign * h.diff_high))
        rows.append((other, sign * h["diff"], lo, hi, int(h.n)))
    for i, (other, diff, lo, hi, n) in enumerate(rows):
        ax.plot([lo, hi], [i, i], color="black", lw=1.5)
        ax.plot([diff], [i], "o", color="C3" if lo > 0 or hi < 0 else "C0")
    ax.set_yticks(range(len(rows)), [f"{_label(r[0])} (n {r[4]})" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_xlabel(f"R²({_label(ref)}) − R²(predictor), 95% interval resampling runs", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return ax


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("weight-plots", help="figures of the weight analyses",
                               description="Heatmaps, trajectories and the run-vs-run cosine of the weight analyses.")
    ap.add_argument("--tables", required=True, help="folder of the weight tables (rule weight_tables)")
    ap.add_argument("--outdir", required=True)
    ap.set_defaults(func=main)


def main(args) -> None:
    tables, out = Path(args.tables), Path(args.outdir)
    update, spectral, means, align, align_means = (read_tsv(tables / f"weights_{name}.tsv") for name in
                                                   ("update", "spectral", "means", "align", "align_means"))
    heatmaps(update, spectral, out / "weights_heatmaps.png")
    trajectories(means, out / "weights_trajectories.png")
    alignment(align, align_means, out / "weights_alignment.png")

"""The paper's figures, as PNGs, from the tables written by scalpel.report.tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize

# Figure without pyplot renders through Agg and leaves the global backend alone.
from matplotlib.figure import Figure

from scalpel.analysis.matrices import MODULES
from scalpel.config import BASE
from scalpel.io import atomic_output, read_yaml
from scalpel.report.tables import add_spec_and_outdir, read_tsv

LINESTYLE = {"grpo": "-", "sft": "--"}
BASE_COLOR = "0.55"


def _colors(run_names) -> dict:
    """One colour per run, assigned in sorted order so the same run has the same colour in every figure."""
    cycle = colormaps["tab10"].colors
    return {run: cycle[i % len(cycle)] for i, run in enumerate(sorted(set(run_names)))}


def _save(fig: Figure, out_png) -> None:
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")


def final_checkpoints(updates: pd.DataFrame) -> pd.DataFrame:
    last = updates.groupby("run").step.transform("max")
    return updates[updates.step == last]


def heatmaps(updates: pd.DataFrame, out_png, annotate_max_cells: int = 120) -> list:
    """Layers x modules of each run's final checkpoint, one panel per run, one colour scale for all panels.

    Returns the AxesImage of each panel, in run order.
    """
    final = final_checkpoints(updates)
    runs = list(dict.fromkeys(final.run))
    grids = {run: final[final.run == run].pivot(index="layer", columns="module", values="rel_update")
             .reindex(columns=list(MODULES)).sort_index() for run in runs}
    values = np.concatenate([g.to_numpy().ravel() for g in grids.values()])
    norm = Normalize(vmin=np.nanmin(values), vmax=np.nanmax(values))
    n_layers = max(len(g) for g in grids.values())
    fig = Figure(figsize=(2.6 * len(runs) + 1.2, 0.28 * n_layers + 1.8), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False, sharey=True)[0]
    images = []
    for ax, run in zip(axes, runs):
        grid = grids[run]
        step = int(final[final.run == run].step.iloc[0])
        img = ax.imshow(grid.to_numpy(), cmap="viridis", norm=norm, aspect="auto", origin="lower",
                        interpolation="nearest")
        images.append(img)
        ax.set_title(f"{run} (step {step})", fontsize=9)
        ax.set_xticks(range(len(MODULES)), [m.removesuffix("_proj") for m in MODULES], rotation=45, fontsize=8)
        ax.set_yticks(range(len(grid)), grid.index, fontsize=7)
        if grid.size <= annotate_max_cells:
            for (y, x), value in np.ndenumerate(grid.to_numpy()):
                if np.isnan(value):
                    continue
                bright = norm(value) > 0.6
                ax.text(x, y, f"{value:.2g}", ha="center", va="center", fontsize=5,
                        color="black" if bright else "white")
    axes[0].set_ylabel("layer")
    fig.colorbar(images[0], ax=list(axes), label=r"$\|\Delta W\|_F / \|W_0\|_F$")
    _save(fig, out_png)
    return images


def module_trajectories(module_means: pd.DataFrame, out_png) -> dict:
    """Mean update over layers vs % of training, one panel per module; GRPO solid, SFT dashed.
    Returns module -> Axes."""
    colors = _colors(module_means.run)
    fig = Figure(figsize=(13, 6), layout="constrained")
    grid = fig.subplots(2, 4, sharex=True).ravel()
    panels = dict(zip(MODULES, grid))
    for module, ax in panels.items():
        for run, rows in module_means[module_means.module == module].groupby("run", sort=False):
            rows = rows.sort_values("pct_training")
            method = rows.method.iloc[0]
            ax.plot(rows.pct_training, rows.mean_rel_update, LINESTYLE.get(method, ":"), marker=".",
                    color=colors[run], label=f"{run} ({method})")
        ax.set_yscale("log")
        ax.set_title(module, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    for ax in grid[4:]:
        ax.set_xlabel("% of training")
    for ax in grid[::4]:
        ax.set_ylabel("mean relative update")
    legend_ax = grid[len(MODULES)]
    legend_ax.axis("off")
    legend_ax.legend(*grid[0].get_legend_handles_labels(), loc="center", fontsize=8)
    _save(fig, out_png)
    return panels


def kl_trajectories(kl: pd.DataFrame, out_png) -> dict:
    """KL(base || checkpoint) per token vs % of training, one line per run (the authors' KL figure, in their unit)."""
    colors = _colors(kl.run)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    lines = {}
    for run, rows in kl.groupby("run", sort=False):
        rows = rows.sort_values("pct_training")
        method = rows.method.iloc[0]
        (lines[run],) = ax.plot(rows.pct_training, rows.kl_per_token, LINESTYLE.get(method, ":"), marker=".",
                                color=colors[run], label=f"{run} ({method})")
    ax.set_yscale("log")
    ax.set_xlabel("% of training")
    ax.set_ylabel("KL(base || checkpoint) per token")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, out_png)
    return lines


def scores_bars(summary: pd.DataFrame, tasks, out_png) -> dict:
    """Grouped bars: one group per task, one bar per model (base first), with the 95% interval of each score as an
    error bar where the summary has one (<task>_low, <task>_high). Returns model -> BarContainer."""
    colors = _colors(summary.run[summary.run != BASE])
    tasks = list(tasks)
    width = 0.8 / len(summary)
    fig = Figure(figsize=(1.6 * len(tasks) + 2.5, 3.5), layout="constrained")
    ax = fig.subplots()
    bars = {}
    for i, row in enumerate(summary.itertuples(index=False)):
        run, method = row.run, row.method
        x = np.arange(len(tasks)) + (i - (len(summary) - 1) / 2) * width
        heights = np.array([summary[task].iloc[i] for task in tasks])
        errors = None
        if all(f"{task}_low" in summary for task in tasks):
            low = np.array([summary[f"{task}_low"].iloc[i] for task in tasks])
            high = np.array([summary[f"{task}_high"].iloc[i] for task in tasks])
            errors = np.clip([heights - low, high - heights], 0, None)
        bars[run] = ax.bar(x, heights, width, yerr=errors, capsize=2, error_kw={"linewidth": 0.8},
                           label=run if run == BASE else f"{run} ({method})",
                           color=BASE_COLOR if run == BASE else colors[run],
                           hatch="//" if method == "sft" else None, edgecolor="white", linewidth=0.5)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("score (primary metric), 95% interval")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out_png)
    return bars


def scores_vs_step(scores: pd.DataFrame, primary: dict, runs: dict, out_png) -> dict:
    """Primary metric vs training step, one panel per task; base as a dotted line with its 95% interval as a grey
    band, each run's 95% intervals as a band (lm-eval's +-1 stderr where scores have no interval). Returns task ->
    Axes."""
    colors = _colors(runs)
    fig = Figure(figsize=(4 * len(primary), 3.3), layout="constrained")
    axes = dict(zip(primary, fig.subplots(1, len(primary), squeeze=False)[0]))
    for task, ax in axes.items():
        of_task = scores[(scores.task == task) & (scores.metric == primary[task])]
        base = of_task[of_task.run == BASE]
        if not base.empty:
            ax.axhline(base.value.iloc[0], linestyle=":", color=BASE_COLOR, label=BASE)
            if "ci_low" in base:
                ax.axhspan(base.ci_low.iloc[0], base.ci_high.iloc[0], color=BASE_COLOR, alpha=0.12, linewidth=0)
        for run, spec in runs.items():
            rows = of_task[of_task.run == run].sort_values("step")
            style = LINESTYLE.get(spec["method"], ":")
            ax.plot(rows.step, rows.value, style, marker=".", color=colors[run], label=f"{run} ({spec['method']})")
            low, high = ((rows.ci_low, rows.ci_high) if "ci_low" in rows
                         else (rows.value - rows.stderr, rows.value + rows.stderr))
            if low.notna().any():
                ax.fill_between(rows.step, low, high, color=colors[run], alpha=0.15, linewidth=0)
        ax.set_title(f"{task} ({primary[task]})", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    first = next(iter(axes.values()))
    first.set_ylabel("score")
    first.legend(fontsize=7)
    _save(fig, out_png)
    return axes


def differences_forest(differences: pd.DataFrame, runs: dict, out_png) -> dict:
    """Each run's final checkpoint minus the base, per task and domain mean: the paired difference with its 95%
    interval; filled markers are significant after Benjamini-Hochberg, open ones are not. Returns task -> Axes."""
    finals = {run: max(spec["checkpoint_steps"]) for run, spec in runs.items()}
    vs_base = differences[(differences.comparison == "vs base")
                          & (differences.step == differences.run.map(finals))]
    tasks = list(dict.fromkeys(vs_base.task))
    colors = _colors(runs)
    fig = Figure(figsize=(3.2 * max(len(tasks), 1), 0.35 * len(runs) + 1.6), layout="constrained")
    axes = dict(zip(tasks, fig.subplots(1, max(len(tasks), 1), squeeze=False, sharey=True)[0]))
    names = list(runs)
    for task, ax in axes.items():
        rows = vs_base[vs_base.task == task].set_index("run")
        for y, run in enumerate(names):
            if run not in rows.index:
                continue
            r = rows.loc[run]
            ax.errorbar(r["diff"], y, xerr=[[r["diff"] - r.low], [r.high - r["diff"]]], fmt="o", capsize=2,
                        color=colors[run], markerfacecolor=colors[run] if r.significant_bh else "white")
        ax.axvline(0, color=BASE_COLOR, linestyle=":")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("change from base")
        ax.grid(axis="x", alpha=0.3)
    first = next(iter(axes.values()))
    first.set_yticks(range(len(names)), names, fontsize=8)
    first.invert_yaxis()
    _save(fig, out_png)
    return axes


def pass_at_k_curves(pass_at_k: pd.DataFrame, runs: dict, out_png) -> dict:
    """pass@k against k (log scale) at final checkpoints, one panel per task sampled several times; the base dotted,
    each run's 95% interval as a band. Returns task -> Axes (empty when no task has several samples)."""
    finals = {BASE: 0, **{run: max(spec["checkpoint_steps"]) for run, spec in runs.items()}}
    final = pass_at_k[pass_at_k.step == pass_at_k.run.map(finals)]
    tasks = list(dict.fromkeys(final.task))
    colors = _colors(runs)
    fig = Figure(figsize=(4 * max(len(tasks), 1), 3.3), layout="constrained")
    axes = dict(zip(tasks, fig.subplots(1, max(len(tasks), 1), squeeze=False)[0]))
    for task, ax in axes.items():
        for run, rows in final[final.task == task].groupby("run", sort=False):
            method = BASE if run == BASE else runs[run]["method"]
            color = BASE_COLOR if run == BASE else colors[run]
            ax.plot(rows.k, rows.pass_at_k, ":" if run == BASE else LINESTYLE.get(method, ":"), marker=".",
                    color=color, label=run if run == BASE else f"{run} ({method})")
            ax.fill_between(rows.k, rows.low, rows.high, color=color, alpha=0.12, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("k (samples)")
        ax.grid(alpha=0.3)
    if axes:
        first = next(iter(axes.values()))
        first.set_ylabel("pass@k")
        first.legend(fontsize=7)
    else:
        fig.text(0.5, 0.5, "no task was sampled more than once per problem (config eval.samples)", ha="center")
    _save(fig, out_png)
    return axes


def sweep_figure(summary: pd.DataFrame, runs: dict, out_png) -> dict:
    """What each sweep did, from `summary` (config runs.<name>.sweep; columns as report.tables.with_sweeps writes
    them): one column of panels per swept run, rows the in-domain and out-of-domain change from the base with their
    95% intervals and the mean relative update, against the sweep's first key (log scale when it spans a factor 10
    or more), one line per value of its other keys (and per seed). Returns (row, sweep) -> Axes."""
    swept = {spec["sweep_of"]: list(spec["swept"]) for spec in runs.values() if spec.get("swept")}
    if not swept:
        raise ValueError("no run of the study is swept (config runs.<name>.sweep)")
    rows = [("in_domain_delta", "in-domain change vs base"), ("out_of_domain_delta", "out-of-domain change vs base"),
            ("mean_rel_update", "mean relative update")]
    rows = [r for r in rows if r[0] in summary.columns]
    fig = Figure(figsize=(3.6 * len(swept), 2.6 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), len(swept), squeeze=False)
    panels = {}
    for j, (sweep, keys) in enumerate(swept.items()):
        x, others = keys[0], keys[1:]
        mine = summary[summary.sweep == sweep].sort_values(x)
        mine = mine.assign(seed=mine.run.map(lambda r: runs[r]["seed"]))
        if mine.seed.nunique() > 1:  # sweeps combined with seeds: one line per seed as well
            others = [*others, "seed"]
        lines = list(mine.groupby(others, sort=True)) if others else [((), mine)]
        values = mine[x].astype(float)
        log_x = bool((values > 0).all() and values.max() >= 10 * values.min())
        for i, (col, label) in enumerate(rows):
            ax = panels[(col, sweep)] = axes[i, j]
            for k, (key, line) in enumerate(lines):
                key = key if isinstance(key, tuple) else (key,)
                name = ", ".join(f"{o} {v:g}" if isinstance(v, float) else f"{o} {v}" for o, v in zip(others, key))
                y = line[col].astype(float)
                err = None
                if f"{col}_low" in line.columns:
                    err = np.vstack([y - line[f"{col}_low"].astype(float), line[f"{col}_high"].astype(float) - y])
                ax.errorbar(line[x].astype(float), y, yerr=err, marker="o", ms=3, lw=1, capsize=2,
                            color=colormaps["viridis"](k / max(1, len(lines) - 1)), label=name or sweep)
            if log_x:
                ax.set_xscale("log")
            if col != "mean_rel_update":
                ax.axhline(0, color=BASE_COLOR, lw=0.8, ls=":")
            ax.set_xlabel(x, fontsize=8)
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3)
        axes[0, j].set_title(f"sweep {sweep}", fontsize=9)
        if others:
            axes[0, j].legend(fontsize=7)
    _save(fig, out_png)
    return panels


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("plots", help="the paper's figures from the tables",
                               description="Draw the figures from the tables written by scalpel.report.tables.")
    ap.add_argument("--tables", required=True,
                    help="folder with scores.tsv, updates.tsv, update_module_means.tsv, summary.tsv")
    add_spec_and_outdir(ap)
    ap.set_defaults(func=main)


def main(args) -> None:
    spec = read_yaml(args.spec)
    tables, out = Path(args.tables), Path(args.outdir)

    heatmaps(read_tsv(tables / "updates.tsv"), out / "update_heatmaps.png")
    module_trajectories(read_tsv(tables / "update_module_means.tsv"), out / "update_trajectories.png")
    scores_bars(read_tsv(tables / "summary.tsv"), list(spec["primary"]), out / "scores_final.png")
    scores_vs_step(read_tsv(tables / "scores.tsv"), spec["primary"], spec["runs"], out / "scores_by_step.png")
    if (tables / "differences.tsv").exists():
        differences_forest(read_tsv(tables / "differences.tsv"), spec["runs"], out / "differences_final.png")
    if (tables / "pass_at_k.tsv").exists():
        pass_at_k_curves(read_tsv(tables / "pass_at_k.tsv"), spec["runs"], out / "pass_at_k.png")
    if (tables / "kl.tsv").exists():
        kl_trajectories(read_tsv(tables / "kl.tsv"), out / "kl_trajectories.png")
    if any(spec.get("swept") for spec in spec["runs"].values()):
        sweep_figure(read_tsv(tables / "summary.tsv"), spec["runs"], out / "sweeps.png")

"""scalpel.report.tables and scalpel.report.plots on synthetic inputs whose every aggregate is known in closed form."""
import math

import pandas as pd
import pytest
import yaml
from scalpel import cli
from scalpel.analysis.diff import MODULES
from scalpel.io import write_parquet, write_tsv
from scalpel.report import intervals, plots, tables

LAYERS = 2
# A run name that looks like a number must survive a round trip through TSV as a string.
RUNS = {
    "hammer": {"method": "sft", "checkpoint_steps": [4, 8, 12]},
    "scalpel": {"method": "grpo", "checkpoint_steps": [5, 10]},
    "2e-6": {"method": "grpo", "checkpoint_steps": [10, 20]},
}
SCALE = {"hammer": 1e-3, "scalpel": 1e-4, "2e-6": 2e-4}
PRIMARY = {"math": "exact_match", "facts": "acc"}


def rel_update(run, step, layer, module):
    return SCALE[run] * step * (layer + 1) * (MODULES.index(module) + 1)


def final_mean(run):
    # mean over layers of (layer+1) is 1.5, over modules of (index+1) is 4
    step = RUNS[run]["checkpoint_steps"][-1]
    return SCALE[run] * step * 1.5 * 4


def score(run, step, task):
    return {"math": 0.1, "facts": 0.5}[task] + 0.01 * step + (0.2 if run == "hammer" else 0.0)


ITEMS = 10
NOISE = [0.05 * (-1) ** i for i in range(ITEMS)]  # the same on every model: paired differences are exact


def item_rows(run, step):
    return pd.DataFrame([{"task": task, "metric": metric, "item": str(i), "value": score(run, step, task) + e,
                          "cluster": str(i), "weight": 1.0, "samples": 1}
                         for task, metric in PRIMARY.items() for i, e in enumerate(NOISE)])


@pytest.fixture
def inputs(tmp_path):
    eval_files, diff_files = [], []
    models = [("base", 0)] + [(run, step) for run, spec in RUNS.items() for step in spec["checkpoint_steps"]]
    for run, step in models:
        rows = [{"run": run, "step": step, "task": task, "metric": metric, "value": score(run, step, task),
                 "stderr": 0.01} for task, metric in PRIMARY.items()]
        rows.append({"run": run, "step": step, "task": "math", "metric": "other", "value": -1.0, "stderr": 0.0})
        path = tmp_path / "eval" / f"{run}_{step}.tsv"
        write_tsv(pd.DataFrame(rows), path)
        write_tsv(item_rows(run, step), path.with_suffix(".items.tsv"))
        eval_files.append(path)
        if run == "base":
            continue
        diff = pd.DataFrame([{"run": run, "step": step, "layer": layer, "module": module,
                              "rel_update": rel_update(run, step, layer, module), "delta_norm": 1.0, "base_norm": 1.0}
                             for layer in range(LAYERS) for module in MODULES])
        path = tmp_path / "diff" / f"{run}_{step}.parquet"
        write_parquet(diff, path)
        diff_files.append(path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"runs": RUNS, "primary": PRIMARY, "in_domain": ["math"],
                                    "out_of_domain": ["facts"]}, sort_keys=False))
    return tmp_path, eval_files, diff_files, spec


@pytest.fixture
def built(inputs):
    _, eval_files, diff_files, _ = inputs
    scores = tables.scores_table(eval_files)
    updates = tables.updates_table(diff_files, RUNS)
    return scores, updates, tables.summary(scores, updates, RUNS, PRIMARY)


def test_updates_table(built):
    _, updates, _ = built
    assert len(updates) == (3 + 2 + 2) * LAYERS * len(MODULES)
    pct = updates.groupby(["run", "step"]).pct_training.first()
    assert pct["hammer", 4] == pytest.approx(100 / 3) and pct["hammer", 12] == 100.0
    assert pct["scalpel", 5] == 50.0 and pct["2e-6", 10] == 50.0
    assert set(updates[updates.run == "hammer"].method) == {"sft"}
    assert set(updates[updates.run == "scalpel"].method) == {"grpo"}


def test_updates_table_rejects_unknown_run(built, inputs):
    _, _, diff_files, _ = inputs
    with pytest.raises(ValueError, match="hammer"):
        tables.updates_table(diff_files, {k: v for k, v in RUNS.items() if k != "hammer"})


def test_summary(built):
    _, _, summary = built
    assert list(summary.run) == ["base", "hammer", "scalpel", "2e-6"]
    assert list(summary.step) == [0, 12, 10, 20]
    assert list(summary.columns) == ["run", "method", "step", "math", "facts", "mean_rel_update"]
    for row in summary.itertuples():
        assert row.math == pytest.approx(score(row.run, row.step, "math"))
        assert row.facts == pytest.approx(score(row.run, row.step, "facts"))
    assert math.isnan(summary.mean_rel_update[0])
    for i, run in enumerate(RUNS, start=1):
        assert summary.mean_rel_update[i] == pytest.approx(final_mean(run))


def test_summary_needs_every_final_score(built, inputs):
    scores, updates, _ = built
    scores = scores[~((scores.run == "scalpel") & (scores.step == 10) & (scores.task == "facts"))]
    with pytest.raises(ValueError, match="run=scalpel step=10 task=facts"):
        tables.summary(scores, updates, RUNS, PRIMARY)


def test_module_means(built):
    _, updates, _ = built
    means = tables.module_means(updates)
    assert len(means) == 7 * len(MODULES)
    assert list(means[(means.run == "hammer") & (means.step == 12)].module) == list(MODULES)
    row = means[(means.run == "hammer") & (means.step == 8) & (means.module == "up_proj")].iloc[0]
    assert row.mean_rel_update == pytest.approx(1e-3 * 8 * 1.5 * 6)
    assert row.pct_training == pytest.approx(200 / 3) and row.method == "sft"


def test_ratios(built):
    _, _, summary = built
    ratios = tables.ratios(summary, RUNS)
    assert list(zip(ratios.numerator, ratios.denominator)) == [("hammer", "scalpel"), ("hammer", "2e-6")]
    # hammer: 1e-3 * 12, scalpel: 1e-4 * 10, 2e-6: 2e-4 * 20 (the shared factor 6 cancels)
    assert list(ratios.ratio) == pytest.approx([12.0, 3.0])


def test_heatmaps_share_one_colour_scale(built, tmp_path):
    _, updates, _ = built
    images = plots.heatmaps(updates, tmp_path / "h.png")
    final = plots.final_checkpoints(updates)
    lo, hi = final.rel_update.min(), final.rel_update.max()
    assert len(images) == 3
    for image in images:
        assert image.get_clim() == pytest.approx((lo, hi))
    assert images[0].norm is images[1].norm is images[2].norm
    assert len(images[0].figure.axes) == 3 + 1  # three panels, one colorbar
    # hammer's panel is its final checkpoint: rows are layers, columns modules in MODULES order
    hammer = images[0].get_array()
    assert hammer.shape == (LAYERS, len(MODULES))
    assert hammer[1, 5] == pytest.approx(rel_update("hammer", 12, 1, "up_proj"))
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_trajectories(built, tmp_path):
    _, updates, _ = built
    panels = plots.module_trajectories(tables.module_means(updates), tmp_path / "t.png")
    assert list(panels) == list(MODULES)
    ax = panels["down_proj"]
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["hammer (sft)"].get_linestyle() == "--"
    assert lines["scalpel (grpo)"].get_linestyle() == "-"
    assert list(lines["scalpel (grpo)"].get_xdata()) == [50.0, 100.0]
    assert list(lines["scalpel (grpo)"].get_ydata()) == pytest.approx([1e-4 * s * 1.5 * 7 for s in (5, 10)])


def test_score_figures(built, tmp_path):
    scores, _, summary = built
    bars = plots.scores_bars(summary, list(PRIMARY), tmp_path / "b.png")
    assert [b.get_height() for b in bars["hammer"]] == pytest.approx([score("hammer", 12, t) for t in PRIMARY])
    assert [b.get_height() for b in bars["base"]] == pytest.approx([score("base", 0, t) for t in PRIMARY])

    axes = plots.scores_vs_step(scores, PRIMARY, RUNS, tmp_path / "s.png")
    lines = {line.get_label(): line for line in axes["facts"].get_lines()}
    assert lines["base"].get_linestyle() == ":"
    assert list(lines["base"].get_ydata()) == pytest.approx([score("base", 0, "facts")] * 2)
    assert list(lines["2e-6 (grpo)"].get_xdata()) == [10, 20]
    assert list(lines["hammer (sft)"].get_ydata()) == pytest.approx([score("hammer", s, "facts") for s in (4, 8, 12)])


def test_clis_write_every_table_and_figure(inputs):
    tmp_path, eval_files, diff_files, spec = inputs
    cli.main(["tables", "--eval", *map(str, eval_files), "--diff", *map(str, diff_files), "--spec", str(spec),
                 "--outdir", str(tmp_path / "tables")])
    written = {p.name for p in (tmp_path / "tables").iterdir()}
    assert written == {"scores.tsv", "updates.tsv", "update_module_means.tsv", "summary.tsv", "ratios.tsv",
                       "differences.tsv", "seeds.tsv", "pass_at_k.tsv"}
    ratios = tables.read_tsv(tmp_path / "tables" / "ratios.tsv")
    assert list(ratios.denominator) == ["scalpel", "2e-6"]
    assert list(tables.read_tsv(tmp_path / "tables" / "summary.tsv").run) == ["base", "hammer", "scalpel", "2e-6"]

    cli.main(["plots", "--tables", str(tmp_path / "tables"), "--spec", str(spec), "--outdir", str(tmp_path / "fig")])
    figures = sorted((tmp_path / "fig").iterdir())
    assert [p.name for p in figures] == ["differences_final.png", "pass_at_k.png", "scores_by_step.png",
                                         "scores_final.png", "update_heatmaps.png", "update_trajectories.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in figures)


def test_kl_table_and_figure(tmp_path):
    import json
    files = []
    for run, spec in RUNS.items():
        for step in spec["checkpoint_steps"]:
            path = tmp_path / f"{run}_{step}.json"
            path.write_text(json.dumps({"run": run, "step": step, "mean_kl": 1e-3 * step, "mean_seq_kl": 0.1 * step,
                                        "n_examples": 5, "per_example": [0.0] * 5}))
            files.append(path)
    kl = tables.kl_table(files, RUNS)
    row = kl[(kl.run == "hammer") & (kl.step == 8)].iloc[0]
    assert (row.method, row.pct_training, row.kl_per_token, row.kl_per_sequence_ours) == (
        "sft", pytest.approx(100 * 8 / 12), pytest.approx(8e-3), pytest.approx(0.8))
    lines = plots.kl_trajectories(kl, tmp_path / "kl.png")
    assert lines["hammer"].get_linestyle() == "--" and lines["scalpel"].get_linestyle() == "-"
    assert list(lines["2e-6"].get_ydata()) == pytest.approx([0.01, 0.02])  # per token, the authors' unit
    with pytest.raises(ValueError, match="KL files"):
        tables.kl_table(files, {"hammer": RUNS["hammer"]})


AUTHORS = {
    "scores": {"MATH-500": {"base": [0.35, 0.02], "SFTv02.08": [0.42, 0.02]}, "MMLU": {"base": [0.6, None]}},
    "updates": {"GRPOv01.14": {**{m: 0.001 for m in MODULES}, "all": 0.001},
                "SFTv02.08": {**{m: 0.05 for m in MODULES}, "all": 0.05}},
    "kl_per_token": {"GRPOv01.14": 0.4},
}
MAPPING = {"runs": {"base": "base", "hammer": "SFTv02.08", "scalpel": "GRPOv01.14", "2e-6": "GRPOv99"},
           "benchmarks": {"MATH-500": "math,exact_match", "MMLU": "facts,acc"}}


def test_authors_comparison_has_every_cell_both_report(built):
    from scalpel.report.authors import compare

    scores, updates, _ = built
    final_steps = {"base": 0, **{run: spec["checkpoint_steps"][-1] for run, spec in RUNS.items()}}
    kl = pd.DataFrame([{"run": "scalpel", "step": 10, "kl_per_token": 0.05, "kl_per_sequence_ours": 2.5}])
    methods = {run: spec["method"] for run, spec in RUNS.items()}
    table = compare(AUTHORS, MAPPING, final_steps, scores, tables.module_means(updates), kl, methods)
    cell = table.set_index(["run", "quantity"])
    # scores: base on both benchmarks, hammer on MATH-500 only (the authors give no MMLU for it); 2e-6 maps to a
    # model the authors do not have
    assert cell.loc[("base", "MATH-500"), "ours"] == pytest.approx(score("base", 0, "math"))
    assert cell.loc[("base", "MMLU"), "authors"] == 0.6 and math.isnan(cell.loc[("base", "MMLU"), "authors_stderr"])
    assert cell.loc[("hammer", "MATH-500"), ["ours", "authors"]].tolist() == pytest.approx(
        [score("hammer", 12, "math"), 0.42])
    assert ("hammer", "MMLU") not in cell.index and "2e-6" not in set(table.run)
    assert cell.loc[("hammer", "mean relative update, all matrices"), "ours"] == pytest.approx(final_mean("hammer"))
    assert cell.loc[("scalpel", "mean relative update q_proj"), "authors"] == 0.001
    ratio = cell.loc[("hammer", "update ratio to scalpel (GRPOv01.14)")]
    assert ratio.ours == pytest.approx(final_mean("hammer") / final_mean("scalpel")) and ratio.authors == 50
    assert cell.loc[("scalpel", "KL(base || final) per token"), ["ours", "authors"]].tolist() == [0.05, 0.4]
    assert len(table) == 3 + 2 * (len(MODULES) + 1) + 1 + 1


def test_authors_comparison_names_an_unknown_benchmark(built):
    from scalpel.report.authors import compare

    scores, updates, _ = built
    with pytest.raises(ValueError, match="report.authors.benchmarks: the authors report no 'GSM8K'"):
        compare(AUTHORS, {"runs": {}, "benchmarks": {"GSM8K": "math,acc"}}, {"base": 0}, scores,
                tables.module_means(updates), None, {})


def test_scores_carry_item_intervals_and_lm_eval_stderr_where_there_are_no_items(inputs):
    _, eval_files, _, _ = inputs
    scores = tables.scores_table(eval_files, intervals.load_items(eval_files))
    row = scores[(scores.run == "hammer") & (scores.step == 8) & (scores.task == "facts")].iloc[0]
    half = 1.959963984540054 * pd.Series(NOISE).std() / math.sqrt(ITEMS)
    assert (row.n_items, row.interval) == (ITEMS, "normal")
    assert (row.ci_low, row.ci_high) == pytest.approx((row.value - half, row.value + half))
    other = scores[(scores.metric == "other")].iloc[0]
    assert other.interval == "lm-eval stderr" and other.ci_low == other.ci_high == -1.0


def test_differences_are_paired_over_items_and_domains_combine_tasks(inputs):
    _, eval_files, _, _ = inputs
    items = intervals.load_items(eval_files)
    diffs = intervals.differences(items, RUNS, PRIMARY, {"in_domain": ["math"], "out_of_domain": ["facts"]})
    vs_base = diffs[diffs.comparison == "vs base"]
    # 7 checkpoints x (2 tasks + 2 domain means); 3 final checkpoints give 3 run pairs x 4 rows.
    assert len(vs_base) == 7 * 4 and len(diffs) == 7 * 4 + 3 * 4
    row = vs_base[(vs_base.run == "hammer") & (vs_base.step == 12) & (vs_base.task == "facts")].iloc[0]
    # The item noise is the same on both models: the paired difference is exact, with a zero-width interval.
    assert row["diff"] == pytest.approx(0.2 + 0.12) and row.low == pytest.approx(row.high)
    assert row.significant and row.n == ITEMS
    ood = vs_base[(vs_base.run == "hammer") & (vs_base.step == 12) & (vs_base.task == "out-of-domain mean")].iloc[0]
    assert ood["diff"] == pytest.approx(row["diff"]) and ood.mean_b == pytest.approx(0.5)
    pair = diffs[(diffs.comparison == "run vs run") & (diffs.run == "hammer") & (diffs.vs_run == "scalpel")]
    assert pair[pair.task == "math"]["diff"].iloc[0] == pytest.approx(0.2 + 0.12 - 0.10)
    table = tables.summary(tables.scores_table(eval_files, items), tables.updates_table(inputs[2], RUNS), RUNS,
                           PRIMARY, diffs)
    hammer = table.set_index("run").loc["hammer"]
    assert hammer.out_of_domain_delta == pytest.approx(0.32) and bool(hammer.out_of_domain_delta_significant)
    assert hammer.facts_low < hammer.facts < hammer.facts_high


def test_seed_table_aggregates_seeds_of_one_run():
    runs = {f"g-seed{s}": {"group": "g", "seed": s} for s in (1, 2, 3)} | {"x": {"group": "x", "seed": 0}}
    summary = pd.DataFrame({"run": ["base", "g-seed1", "g-seed2", "g-seed3", "x"], "facts": [0.5, 0.1, 0.2, 0.3, 0.9]})
    seeds = intervals.seed_table(summary, runs, ["facts"])
    row = seeds.iloc[0]
    assert (row.group, row.quantity, row.n_seeds) == ("g", "facts", 3)
    assert row["mean"] == pytest.approx(0.2) and row.sd == pytest.approx(0.1)
    assert row["value@seed=2"] == pytest.approx(0.2) and len(seeds) == 1


def test_figures_draw_the_intervals(inputs, tmp_path):
    _, eval_files, diff_files, _ = inputs
    items = intervals.load_items(eval_files)
    scores = tables.scores_table(eval_files, items)
    diffs = intervals.differences(items, RUNS, PRIMARY, {"in_domain": ["math"], "out_of_domain": ["facts"]})
    summary = tables.summary(scores, tables.updates_table(diff_files, RUNS), RUNS, PRIMARY, diffs)
    bars = plots.scores_bars(summary, list(PRIMARY), tmp_path / "b.png")
    caps = bars["hammer"].errorbar.lines[1]  # the error bar caps sit at the interval's ends
    tops = sorted(y for cap in caps for y in cap.get_ydata())
    row = summary.set_index("run").loc["hammer"]
    assert tops[-1] == pytest.approx(row.facts_high)
    axes = plots.differences_forest(diffs, RUNS, tmp_path / "d.png")
    assert list(axes) == ["math", "facts", "in-domain mean", "out-of-domain mean"]
    points = [line.get_xdata()[0] for line in axes["facts"].get_lines() if len(line.get_xdata()) == 1]
    assert any(abs(x - 0.32) < 1e-9 for x in points)  # hammer's final facts score minus the base's


def test_pass_at_k_curves_from_correct_counts_and_paired_deltas(tmp_path):
    """4 samples per problem; the base solves problems 0-1 once each, the run problem 0 four times: the run has the
    higher pass@1 (4/8 vs 2/8 per problem mean) and the lower pass@4 (1/2 vs 1)."""
    def rows(run, counts):
        return pd.DataFrame({"run": run, "step": 0 if run == "base" else 5, "task": "maths",
                             "metric": "samples_correct", "item": ["0", "1"], "value": counts, "cluster": ["0", "1"],
                             "weight": 1.0, "samples": 4})
    items = pd.concat([rows("base", [1.0, 1.0]), rows("grpo", [4.0, 0.0])], ignore_index=True)
    table = intervals.pass_at_k_table(items).set_index(["run", "k"])
    assert table.loc[("base", 1), "pass_at_k"] == pytest.approx(0.25)
    assert table.loc[("base", 4), "pass_at_k"] == pytest.approx(1.0)
    assert table.loc[("grpo", 1), "pass_at_k"] == pytest.approx(0.5)
    assert table.loc[("grpo", 4), "pass_at_k"] == pytest.approx(0.5)
    assert table.loc[("grpo", 1), "delta"] == pytest.approx(0.25) and table.loc[("grpo", 4), "delta"] == -0.5
    assert math.isnan(table.loc[("base", 1), "delta"])
    axes = plots.pass_at_k_curves(table.reset_index(), {"grpo": {"method": "grpo", "checkpoint_steps": [5]}},
                                  tmp_path / "p.png")
    lines = {line.get_label(): line for line in axes["maths"].get_lines()}
    assert list(lines["grpo (grpo)"].get_ydata()) == pytest.approx([0.5, 0.5, 0.5, 0.5])


def test_seed_table_counts_verdicts_drops_bounds_and_stays_in_range():
    runs = {f"g-seed{s}": {"group": "g", "seed": s} for s in (0, 1, 2)}
    summary = pd.DataFrame({"run": ["base", "g-seed0", "g-seed1", "g-seed2"], "facts": [1.0, 1.0, 1.0, 0.97],
                            "facts_low": [0.9, 0.9, 0.9, 0.8], "facts_high": 1.0,
                            "in_domain_delta_significant": [math.nan, True, False, True],
                            "mean_rel_update": [math.nan, 0.1, 0.2, 0.3]})
    seeds = intervals.seed_table(summary, runs, list(summary.columns[1:]), tables.seed_bounds({"facts": "acc"}))
    seeds = seeds.set_index("quantity")
    assert list(seeds.index) == ["facts", "mean_rel_update", "in_domain_delta_significant"]  # no bounds averaged
    t2 = 4.302652729911275  # t(0.975, 2 df)
    facts = seeds.loc["facts"]  # mean 0.99, sd sqrt(3) / 100: the t interval [0.947, 1.033] is cut at 1
    assert (facts["mean"], facts.sd) == pytest.approx((0.99, math.sqrt(3) / 100))
    assert (facts.low, facts.high) == pytest.approx((0.99 - t2 / 100, 1.0))
    update = seeds.loc["mean_rel_update"]  # 0.2 +- t2 * 0.1 / sqrt(3), cut at 0
    assert (update.low, update.high) == pytest.approx((0.0, 0.2 + t2 * 0.1 / math.sqrt(3)))
    verdict = seeds.loc["in_domain_delta_significant"]  # 2 of 3 seeds, no mean or interval
    assert (verdict.seeds_true, verdict.n_seeds) == (2, 3) and verdict["value@seed=1"] == False  # noqa: E712
    assert math.isnan(verdict["mean"]) and math.isnan(verdict.low) and pd.isna(facts.seeds_true)


def test_summary_carries_swept_values_as_columns():
    from scalpel.report.tables import with_sweeps

    summary = pd.DataFrame({"run": ["base", "grpo", "sft-lr1e-05-steps40"], "method": ["base", "grpo", "sft"],
                            "step": [0, 120, 40], "mini_facts": [0.5, 0.5, 0.4]})
    runs = {"grpo": {"method": "grpo", "sweep_of": "grpo", "swept": {}},
            "sft-lr1e-05-steps40": {"method": "sft", "sweep_of": "sft", "swept": {"learning_rate": 1e-5, "steps": 40}}}
    out = with_sweeps(summary, runs)
    assert list(out.columns) == ["run", "method", "step", "sweep", "learning_rate", "steps", "mini_facts"]
    assert out.sweep.tolist() == ["base", "grpo", "sft"]
    assert out.learning_rate.tolist()[2] == 1e-5 and out.learning_rate.isna().tolist() == [True, True, False]
    # No sweep anywhere: the table as it was.
    assert with_sweeps(summary, {"grpo": runs["grpo"]}).equals(summary)
    with pytest.raises(ValueError, match="swept key 'mini_facts' is already a column"):
        with_sweeps(summary, {"x": {"swept": {"mini_facts": 1}}})


def test_sweep_figure_draws_each_sweep_against_its_first_key_one_line_per_other_value(tmp_path):
    from scalpel.report.tables import with_sweeps

    runs, rows = {}, [{"run": "base", "step": 0}]
    for lr in (1e-4, 1e-3, 1e-2):
        for steps in (20, 40):
            name = f"sft-lr{lr}-steps{steps}"
            runs[name] = {"method": "sft", "seed": 0, "sweep_of": "sft", "swept": {"learning_rate": lr, "steps": steps}}
            change = -lr * steps  # known by hand: more lr and more steps, more forgetting
            rows.append({"run": name, "step": steps, "in_domain_delta": 0.1, "out_of_domain_delta": change,
                         "out_of_domain_delta_low": change - 0.01, "out_of_domain_delta_high": change + 0.01,
                         "mean_rel_update": lr})
    runs["grpo"] = {"method": "grpo", "seed": 0, "sweep_of": "grpo", "swept": {}}
    rows.append({"run": "grpo", "step": 120, "in_domain_delta": 0.2, "out_of_domain_delta": 0.0,
                 "mean_rel_update": 0.01})
    summary = with_sweeps(pd.DataFrame(rows), runs)
    panels = plots.sweep_figure(summary, runs, tmp_path / "sweeps.png")
    assert (tmp_path / "sweeps.png").stat().st_size > 0
    assert set(panels) == {(row, "sft") for row in ("in_domain_delta", "out_of_domain_delta", "mean_rel_update")}
    ood = panels[("out_of_domain_delta", "sft")]
    assert ood.get_xscale() == "log" and ood.get_xlabel() == "learning_rate"
    lines = {bars.get_label(): bars.lines[0] for bars in ood.containers}
    assert sorted(lines) == ["steps 20", "steps 40"]
    assert lines["steps 40"].get_xdata().tolist() == [1e-4, 1e-3, 1e-2]
    assert lines["steps 40"].get_ydata().tolist() == pytest.approx([-0.004, -0.04, -0.4])
    with pytest.raises(ValueError, match="no run of the study is swept"):
        plots.sweep_figure(summary, {"grpo": runs["grpo"]}, tmp_path / "none.png")


def test_update_and_kl_tables_say_which_reference_each_row_used(tmp_path):
    import json as _json

    runs = {"a": {"method": "grpo", "checkpoint_steps": [5, 10]},
            "b": {"method": "import", "checkpoint_steps": [3], "reference": "a"}}
    for run, step in (("a", 10), ("b", 3)):
        pd.DataFrame({"run": [run], "step": [step], "layer": [0], "module": ["q_proj"], "rel_update": [0.1]}) \
            .to_parquet(tmp_path / f"{run}.parquet")
        (tmp_path / f"{run}.json").write_text(_json.dumps({"run": run, "step": step, "mean_kl": 0.1,
                                                           "mean_seq_kl": 1.0, "n_examples": 2}))
    updates = tables.updates_table([tmp_path / "a.parquet", tmp_path / "b.parquet"], runs)
    assert list(updates.reference) == ["base", "a@10"]
    kl = tables.kl_table([tmp_path / "a.json", tmp_path / "b.json"], runs)
    assert list(kl.reference) == ["base", "a@10"]


def test_tables_and_figures_take_an_imported_run(inputs):
    """A run of method import (issue 18), compared with another run's final checkpoint, through every table and
    figure as a trained one."""
    tmp_path, eval_files, diff_files, spec = inputs
    runs = {**RUNS, "2e-6": {"method": "import", "checkpoint_steps": [10, 20], "reference": "scalpel"}}
    spec.write_text(yaml.safe_dump({**yaml.safe_load(spec.read_text()), "runs": runs}, sort_keys=False))
    cli.main(["tables", "--eval", *map(str, eval_files), "--diff", *map(str, diff_files), "--spec", str(spec),
              "--outdir", str(tmp_path / "tables")])
    updates = tables.read_tsv(tmp_path / "tables" / "updates.tsv")
    assert set(updates[updates.run == "2e-6"].method) == {"import"}
    assert set(updates[updates.run == "2e-6"].reference) == {"scalpel@10"}
    assert list(tables.read_tsv(tmp_path / "tables" / "ratios.tsv").denominator) == ["scalpel"]
    assert list(tables.read_tsv(tmp_path / "tables" / "summary.tsv").run) == ["base", "hammer", "scalpel", "2e-6"]
    cli.main(["plots", "--tables", str(tmp_path / "tables"), "--spec", str(spec), "--outdir", str(tmp_path / "fig")])
    assert len(list((tmp_path / "fig").iterdir())) == 6


def test_a_stage_is_compared_with_its_reference_item_by_item_and_each_row_names_it(inputs):
    """2e-6 names scalpel as its reference: each of its checkpoints also gets a paired difference against scalpel's
    final checkpoint (exact here: the item noise is shared), and every row says what was subtracted."""
    _, eval_files, _, _ = inputs
    runs = {**RUNS, "2e-6": {**RUNS["2e-6"], "reference": "scalpel"}}
    diffs = intervals.differences(intervals.load_items(eval_files), runs, PRIMARY,
                                  {"in_domain": ["math"], "out_of_domain": ["facts"]})
    staged = diffs[diffs.comparison == "vs reference"]
    assert set(zip(staged.run, staged.step)) == {("2e-6", 10), ("2e-6", 20)} and len(staged) == 2 * 4
    assert set(staged.reference) == {"scalpel@10"} and set(staged.vs_step) == {10}
    row = staged[(staged.step == 20) & (staged.task == "math")].iloc[0]
    assert row["diff"] == pytest.approx(score("2e-6", 20, "math") - score("scalpel", 10, "math"))
    assert row.low == pytest.approx(row.high) and row.n == ITEMS
    assert set(diffs[diffs.comparison == "vs base"].reference) == {"base"}
    pairs = diffs[diffs.comparison == "run vs run"]
    assert list(pairs.reference) == [f"{r}@{s}" for r, s in zip(pairs.vs_run, pairs.vs_step)]


def test_pass_at_k_deltas_are_against_the_runs_reference():
    """dpo's reference is grpo: its delta at each k is against grpo's pass@k, not the base's."""
    def rows(run, step, counts):
        return pd.DataFrame({"run": run, "step": step, "task": "maths", "metric": "samples_correct",
                             "item": ["0", "1"], "value": counts, "cluster": ["0", "1"], "weight": 1.0, "samples": 4})
    items = pd.concat([rows("base", 0, [1.0, 1.0]), rows("grpo", 5, [4.0, 0.0]), rows("dpo", 2, [4.0, 2.0])],
                      ignore_index=True)
    runs = {"grpo": {"checkpoint_steps": [5]}, "dpo": {"checkpoint_steps": [2], "reference": "grpo"}}
    table = intervals.pass_at_k_table(items, runs).set_index(["run", "k"])
    assert table.loc[("dpo", 1), "reference"] == "grpo@5" and table.loc[("grpo", 1), "reference"] == "base"
    # pass@1: dpo (4/4 + 2/4) / 2 = 0.75 against grpo's 0.5; pass@4: 1 against 0.5
    assert table.loc[("dpo", 1), "delta"] == pytest.approx(0.25) and table.loc[("dpo", 4), "delta"] == 0.5
    assert table.loc[("grpo", 4), "delta"] == -0.5 and pd.isna(table.loc[("base", 1), "reference"])

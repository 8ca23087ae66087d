"""The weight commands (`scalpel weights`, `weight-tables`, `weight-plots`) on tiny real OLMo-2 checkpoints, and the
forgetting fit (`scalpel forgetting`) on tables of known values."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scalpel import cli
from scalpel.analysis.diff import MODULES
from scalpel.io import write_tsv
from scalpel.report import forgetting
from scipy import stats
from transformers import Olmo2Config, Olmo2ForCausalLM

LAYERS = 2
QK = ("q_proj", "k_proj")


def _perturb(model, modules, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.layers.") and name.split(".")[-2] in modules:
                p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A base and three runs of one checkpoint each (step 10): `frozen` (saved unchanged), `qk` (only q/k moved)
    and `full` (every matrix moved); the analysis spec of the workflow."""
    root = tmp_path_factory.mktemp("study")
    config = Olmo2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS,
                         num_attention_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    base = Olmo2ForCausalLM(config)
    base.save_pretrained(root / "base")
    folders = {"frozen": base, "qk": _perturb(Olmo2ForCausalLM(config).from_pretrained(root / "base"), QK, 0.01, 1),
               "full": _perturb(Olmo2ForCausalLM.from_pretrained(root / "base"), MODULES, 0.01, 2)}
    for run, model in folders.items():
        model.save_pretrained(root / run / "step-10")
    runs = {run: {"method": "grpo" if run == "qk" else "sft", "checkpoint_steps": [5, 10]} for run in folders}
    (root / "spec.yaml").write_text(yaml.safe_dump({"runs": runs}))
    return root


def _scalpel(*argv):
    cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def tables(study):
    root, parquets = study, {"update": [], "spectral": [], "align": []}
    for run in ("frozen", "qk", "full"):
        out = root / "out" / f"update_{run}.parquet"
        _scalpel("weights", "update", "--base", root / "base", "--checkpoint", root / run / "step-10", "--run", run,
                 "--step", 10, "--buffered", "--out", out)
        parquets["update"].append(out)
        out = root / "out" / f"spectral_{run}.parquet"
        _scalpel("weights", "spectral", "--base", root / "base", "--checkpoint", f"10={root / run / 'step-10'}",
                 "--run", run, "--ks", 2, 8, "--out", out)
        parquets["spectral"].append(out)
    for a, b in (("frozen", "qk"), ("qk", "full")):
        out = root / "out" / f"align_{a}_{b}.parquet"
        _scalpel("weights", "align", "--base", root / "base", "--checkpoint-a", root / a / "step-10", "--run-a", a,
                 "--step-a", 10, "--checkpoint-b", root / b / "step-10", "--run-b", b, "--step-b", 10, "--out", out)
        parquets["align"].append(out)
    _scalpel("weight-tables", "--update", *parquets["update"], "--spectral", *parquets["spectral"], "--align",
             *parquets["align"], "--spec", root / "spec.yaml", "--outdir", root / "tables")
    return {name: pd.read_csv(root / "tables" / f"weights_{name}.tsv", sep="\t")
            for name in ("update", "spectral", "means", "align", "align_means")}


def test_frozen_checkpoint_is_unchanged_everywhere(tables):
    update = tables["update"].query("run == 'frozen'")
    assert len(update) == LAYERS * len(MODULES)
    assert (update.unchanged_bitwise == 1).all() and (update.unchanged_tol == 1).all()
    assert (update.rel_update == 0).all() and update.overlap_top.isna().all()
    spectral = tables["spectral"].query("run == 'frozen'")
    assert (spectral.nss == 0).all() and (spectral.angle_left_k8 == 0).all() and spectral.stable_rank.isna().all()
    means = tables["means"].set_index("run")
    assert means.loc["frozen", "unchanged_tol"] == 1 and means.loc["frozen", "pct_training"] == 100.0
    assert means.loc["frozen", "method"] == "sft" and means.loc["frozen", "matrices"] == LAYERS * len(MODULES)


def test_qk_only_update_leaves_every_other_matrix_unchanged(tables):
    update = tables["update"].query("run == 'qk'")
    moved = update.module.isin(QK)
    assert (update[moved].unchanged_tol < 0.01).all()  # a Gaussian update moves almost every element
    assert (update[~moved].unchanged_bitwise == 1).all() and (update[~moved].rel_update == 0).all()
    spectral = tables["spectral"].query("run == 'qk'")
    assert (spectral[spectral.module.isin(QK)].angle_left_k2 > 0).all()
    assert (spectral[~spectral.module.isin(QK)].nss == 0).all()
    full = tables["update"].query("run == 'full'")
    assert (full.unchanged_tol < 0.01).all()


def test_alignment_of_frozen_qk_and_full(tables):
    align = tables["align"]
    frozen_qk = align.query("run_a == 'frozen'")
    assert frozen_qk.cosine.isna().all()  # a zero update has no direction
    assert (frozen_qk[frozen_qk.module.isin(QK)].jaccard == 0).all()
    assert frozen_qk[~frozen_qk.module.isin(QK)].jaccard.isna().all()  # neither run updated them
    qk_full = align.query("run_a == 'qk'")
    both = qk_full.module.isin(QK)
    assert qk_full[both].cosine.abs().lt(0.5).all()  # independent Gaussian updates: nearly orthogonal
    assert qk_full[~both].cosine.isna().all() and (qk_full[~both].jaccard == 0).all()
    assert (qk_full[both].jaccard > 0.9).all()
    means = tables["align_means"].set_index("run_a")
    qk_share = 2 * 32 * 32 / (4 * 32 * 32 + 3 * 48 * 32)  # q and k's elements of all: full updated (almost) all
    assert 0.8 * qk_share < means.loc["qk", "jaccard"] <= qk_share
    # full updated (almost) every element: any mask of qk's size overlaps it as much
    assert means.loc["qk", "jaccard_random"] == pytest.approx(means.loc["qk", "jaccard"], abs=0.01)


def test_weight_plots_draw_every_run_and_pair(study, tables):
    from scalpel.report import weight_plots

    grids = weight_plots.heatmaps(tables["update"], tables["spectral"], study / "h.png")
    assert (grids[("unchanged_tol", "frozen")].to_numpy() == 1).all()
    assert set(grids) == {(m, r) for m in ("unchanged_tol", "stable_rank", "angle_left_k2")
                          for r in ("frozen", "qk", "full")}
    assert set(weight_plots.alignment(tables["align"], tables["align_means"], study / "a.png")) == {
        ("frozen", "qk"), ("qk", "full")}
    _scalpel("weight-plots", "--tables", study / "tables", "--outdir", study / "figures")
    for name in ("heatmaps", "trajectories", "alignment"):
        assert (study / "figures" / f"weights_{name}.png").read_bytes()[:4] == b"\x89PNG"


# ---- forgetting ---------------------------------------------------------------------------------------------------

def test_r2_of_an_exact_line_is_one_and_of_noise_matches_scipy():
    x = np.arange(8.0)
    fit = forgetting.fit(x, 1 + 2 * x, n_resamples=200)
    assert fit["r2"] == pytest.approx(1.0) and fit["slope"] == pytest.approx(2.0)
    assert fit["intercept"] == pytest.approx(1.0) and fit["r2_low"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    y = x + rng.normal(0, 3, size=8)
    fit = forgetting.fit(x, y, n_resamples=500)
    assert fit["r2"] == pytest.approx(stats.linregress(x, y).rvalue ** 2, rel=1e-12)
    assert fit["r2_low"] < fit["r2"] < fit["r2_high"]
    assert forgetting.r2([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) == 0.0
    assert math.isnan(forgetting.fit([1.0, 2.0], [1.0, 2.0])["r2"])  # fewer than 3 points


SPEC = {"primary": {"math": "acc", "facts": "acc", "chat": "strict"}, "in_domain": ["math"],
        "out_of_domain": ["facts", "chat"]}


def _scores(rows):
    return pd.DataFrame([{"run": r, "step": s, "task": t, "metric": SPEC["primary"][t], "value": v, "stderr": 0.0}
                         for r, s, t, v in rows])


def test_ood_change_uses_checkpoints_with_every_ood_task():
    scores = _scores([("base", 0, "facts", 0.8), ("base", 0, "chat", 0.4), ("base", 0, "math", 0.1),
                      ("a", 5, "facts", 0.6), ("a", 5, "math", 0.9),  # no chat (final_only): left out
                      ("a", 10, "facts", 0.7), ("a", 10, "chat", 0.2), ("a", 10, "math", 0.9)])
    scores = pd.concat([scores, scores.iloc[[0]].assign(metric="other", value=9.0)])  # not the primary metric
    ood, left_out = forgetting.ood_change(scores, SPEC)
    assert left_out == 1 and ood.to_dict("records") == [
        {"run": "a", "step": 10, "ood_change": pytest.approx(((0.7 - 0.8) + (0.2 - 0.4)) / 2)}]
    with pytest.raises(ValueError, match="base model has no chat,strict"):
        forgetting.ood_change(scores[scores.task != "chat"].pipe(
            lambda d: pd.concat([d, _scores([("a", 10, "chat", 0.2)])])), SPEC)
    with pytest.raises(ValueError, match="out_of_domain lists no task"):
        forgetting.ood_change(scores, {**SPEC, "out_of_domain": []})


def test_forgetting_command_ranks_kl_first_when_it_is_the_exact_predictor(tmp_path):
    steps = [(run, step) for run in ("g", "s") for step in (1, 2, 3, 4)]
    kl = np.array([0.01, 0.02, 0.05, 0.06, 0.3, 0.5, 0.9, 1.1])
    rel = np.array([0.5, 0.1, 0.4, 0.2, 0.3, 0.9, 0.2, 0.8])  # unrelated to the drop
    drop = -0.2 * kl
    rows = [("base", 0, "facts", 0.8), ("base", 0, "chat", 0.5)]
    rows += [(r, s, t, (0.8 if t == "facts" else 0.5) + d) for (r, s), d in zip(steps, drop) for t in ("facts", "chat")]
    frame = pd.DataFrame(steps, columns=["run", "step"]).assign(method=lambda d: d.run.map({"g": "grpo", "s": "sft"}),
                                                                  pct_training=lambda d: 25.0 * d.step)
    write_tsv(_scores(rows), tmp_path / "scores.tsv")
    write_tsv(frame.assign(kl_per_token=kl), tmp_path / "kl.tsv")
    write_tsv(frame.assign(rel_update=rel, stable_rank=[np.nan] * 3 + [2.0] + [np.nan] * 3 + [5.0]),
              tmp_path / "means.tsv")
    runs = {"g": {"method": "grpo", "sweep_of": "g", "swept": {}},  # s is one combination of a sweep
            "s": {"method": "sft", "sweep_of": "sft", "swept": {"learning_rate": 1e-4, "steps": 4}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**SPEC, "runs": runs}))
    _scalpel("forgetting", "--scores", tmp_path / "scores.tsv", "--kl", tmp_path / "kl.tsv", "--weights",
             tmp_path / "means.tsv", "--spec", tmp_path / "spec.yaml", "--table", tmp_path / "f.tsv", "--points",
             tmp_path / "p.tsv", "--pairs", tmp_path / "pairs.tsv", "--figure", tmp_path / "f.png", "--resamples", 300)
    table = pd.read_csv(tmp_path / "f.tsv", sep="\t")
    assert list(table.predictor) == ["kl_per_token", "rel_update", "stable_rank"]
    kl_row = table.iloc[0]
    assert kl_row.r2 == pytest.approx(1.0) and kl_row.slope == pytest.approx(-0.2) and kl_row.n == 8
    assert table.iloc[1].r2 == pytest.approx(stats.pearsonr(rel, drop)[0] ** 2)
    assert table.iloc[2].n == 2 and math.isnan(table.iloc[2].r2)  # the spectral measure: final checkpoints only
    assert (table.checkpoints_left_out == 0).all()
    points = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    assert len(points) == 8 and points.ood_change.to_numpy() == pytest.approx(drop)
    # The swept values are columns (NaN for the run without them), after the step.
    assert list(points.columns[:5]) == ["run", "step", "sweep", "learning_rate", "steps"]
    assert points.sweep.tolist() == ["g"] * 4 + ["sft"] * 4
    assert points.learning_rate.isna().sum() == 4 and (points.learning_rate.dropna() == 1e-4).all()
    pairs = pd.read_csv(tmp_path / "pairs.tsv", sep="\t")
    assert pairs[["predictor_a", "predictor_b"]].values.tolist() == [
        ["kl_per_token", "rel_update"], ["kl_per_token", "stable_rank"], ["rel_update", "stable_rank"]]
    first = pairs.iloc[0]
    assert first["diff"] == pytest.approx(1 - stats.pearsonr(rel, drop)[0] ** 2) and first.runs == 2
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_weight_pairs_are_every_grpo_sft_pair_then_the_configs():
    from scalpel.config import ConfigError, weight_pairs

    runs = {"g": {"method": "grpo"}, "s1": {"method": "sft"}, "s2": {"method": "sft"}}
    assert weight_pairs({}, runs) == [("g", "s1"), ("g", "s2")]
    assert weight_pairs({"weights": {"pairs": [["s2", "g"], ["s1", "s2"]]}}, runs) == [("g", "s1"), ("g", "s2"),
                                                                                     ("s1", "s2")]
    with pytest.raises(ConfigError, match=r"weights.pairs\[0\]: 'x' is not a run"):
        weight_pairs({"weights": {"pairs": [["g", "x"]]}}, runs)
    with pytest.raises(ConfigError, match=r"weights.pairs\[0\]: a run compared with itself"):
        weight_pairs({"weights": {"pairs": [["g", "g"]]}}, runs)


# ---- forgetting: which predictor is better, resampling runs -------------------------------------------------------

def _clustered(runs=8, per_run=10, seed=0, within=0.05):
    """Points whose x and y vary mostly between runs (a run effect) and little within a run."""
    rng = np.random.default_rng(seed)
    x_run, y_run = rng.normal(size=runs), rng.normal(size=runs)
    y_run = 0.6 * x_run + 0.8 * y_run
    run = np.repeat(np.arange(runs), per_run)
    return (x_run[run] + within * rng.normal(size=run.size), y_run[run] + within * rng.normal(size=run.size),
            run.astype(str))


def test_r2_difference_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    run = np.repeat(np.arange(12), 3).astype(str)
    x_a, x_b = rng.normal(size=36), rng.normal(size=36)
    y = 2 * x_a + 0.5 * x_b + rng.normal(size=36)
    out = forgetting.r2_difference(x_a, x_b, y, run, n_resamples=1000)
    direct = np.corrcoef(x_a, y)[0, 1] ** 2 - np.corrcoef(x_b, y)[0, 1] ** 2
    assert out["diff"] == pytest.approx(direct, rel=1e-12) and out["n"] == 36 and out["runs"] == 12
    assert out["r2_a"] == pytest.approx(stats.pearsonr(x_a, y)[0] ** 2, rel=1e-12)
    assert 0 < out["diff_low"] < out["diff"] < out["diff_high"]  # x_a is the better predictor, and it shows
    # The resampled R^2 are those of the drawn runs' points, repeated as often as drawn.
    labels = pd.factorize(run)[0]
    counts = np.random.default_rng(5).multinomial(12, np.full(12, 1 / 12), size=3)
    for c, got in zip(counts, forgetting.resampled_r2([x_a, x_b], y, run, n_resamples=3, seed=5)):
        idx = np.concatenate([np.flatnonzero(labels == k).repeat(m) for k, m in enumerate(c)])
        assert got == pytest.approx([forgetting.r2(x_a[idx], y[idx]), forgetting.r2(x_b[idx], y[idx])], rel=1e-9)


def test_r2_difference_of_equally_good_predictors_covers_zero():
    rng = np.random.default_rng(2)
    run = np.repeat(np.arange(15), 2).astype(str)
    x_a, x_b = rng.normal(size=30), rng.normal(size=30)
    y = x_a + x_b + rng.normal(size=30)
    out = forgetting.r2_difference(x_a, x_b, y, run, n_resamples=2000)
    assert out["diff_low"] < 0 < out["diff_high"]
    # A mirror image predicts exactly as well: the difference is 0 in every resample.
    out = forgetting.r2_difference(x_a, 3 - 2 * x_a, y, run, n_resamples=500)
    assert out["diff"] == pytest.approx(0, abs=1e-12) and out["diff_low"] <= 0 <= out["diff_high"]


def test_intervals_resample_runs_not_checkpoints():
    x, y, run = _clustered()
    by_run = forgetting.fit(x, y, n_resamples=2000, clusters=run)
    by_checkpoint = forgetting.fit(x, y, n_resamples=2000)
    assert by_run["runs"] == 8 and by_checkpoint["runs"] == 80
    # 8 runs carry the information of 8 points: resampling the 80 checkpoints would claim far more.
    assert by_checkpoint["r2_high"] - by_checkpoint["r2_low"] < 0.5 * (by_run["r2_high"] - by_run["r2_low"])
    # The unit is the run: repeating each run's checkpoints 5 times adds nothing to the run-resampled interval, and
    # narrows the checkpoint-resampled one.
    rep = (np.repeat(x, 5), np.repeat(y, 5), np.repeat(run, 5))
    again = forgetting.fit(*rep[:2], n_resamples=2000, clusters=rep[2])
    assert (again["r2_low"], again["r2_high"]) == pytest.approx((by_run["r2_low"], by_run["r2_high"]), rel=1e-9)
    narrower = forgetting.fit(*rep[:2], n_resamples=2000)
    assert narrower["r2_high"] - narrower["r2_low"] < by_checkpoint["r2_high"] - by_checkpoint["r2_low"]
    # The same for the paired difference, which forgetting_pairs.tsv reports.
    rng = np.random.default_rng(3)
    x_b = x + 0.5 * rng.normal(size=8)[pd.factorize(run)[0]]
    clustered = forgetting.r2_difference(x, x_b, y, run)
    naive = forgetting.r2_difference(x, x_b, y)
    assert naive["diff_high"] - naive["diff_low"] < 0.5 * (clustered["diff_high"] - clustered["diff_low"])


def _pairs(rows):
    return pd.DataFrame([dict(zip(forgetting.PAIR_COLUMNS, (a, b, 21, 21, np.nan, np.nan, d, lo, hi)))
                         for a, b, d, lo, hi in rows])


def test_razor_verdict_follows_the_pre_registered_rule():
    better = [("kl_per_token", "rel_update", 0.5, 0.3, 0.7), ("kl_per_token", "nss", 0.4, 0.1, 0.6),
              ("rel_update", "nss", -0.1, -0.3, 0.1)]
    assert forgetting.razor_verdict(_pairs(better), 21) == "reproduced"
    assert forgetting.razor_verdict(_pairs(better), 19) == "inconclusive"  # fewer checkpoints than registered
    # A weight measure ranked above KL: its row reads the other way round; KL is worse, shown below the margin.
    worse = better[:1] + [("nss", "kl_per_token", 0.2, 0.05, 0.35)]
    assert forgetting.kl_differences(_pairs(worse)).loc[1, ["diff", "diff_low", "diff_high"]].tolist() == \
        pytest.approx([-0.2, -0.35, -0.05])
    assert forgetting.razor_verdict(_pairs(worse), 21) == "not reproduced"
    covers = better[:1] + [("kl_per_token", "nss", 0.1, -0.1, 0.3)]
    assert forgetting.razor_verdict(_pairs(covers), 21) == "inconclusive"
    equal = better[:1] + [("kl_per_token", "nss", 0.0, -0.05, 0.05)]  # shown within 0.10: not better
    assert forgetting.razor_verdict(_pairs(equal), 21) == "not reproduced"

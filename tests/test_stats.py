"""scalpel.stats against published intervals, closed forms, brute-force enumeration and simulations whose true
standard errors are known."""
import itertools
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scalpel import stats
from scipy import stats as sps

Z95 = 1.959963984540054


@pytest.mark.parametrize("k, n, low, high", [
    # Wilson score intervals tabulated by Newcombe 1998, Statistics in Medicine 17:857-872 (4 decimals)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_interval_matches_published_values(k, n, low, high):
    out = stats.score_interval([1.0] * k + [0.0] * (n - k))
    assert out["interval"] == "wilson"
    assert (round(out["low"], 4), round(out["high"], 4)) == (low, high)
    assert out["mean"] == pytest.approx(k / n)


def test_wilson_8_of_10_is_the_closed_form_and_normal_is_wald():
    scores = [1.0] * 8 + [0.0] * 2
    centre = (0.8 + Z95 ** 2 / 20) / (1 + Z95 ** 2 / 10)
    half = Z95 * math.sqrt(0.8 * 0.2 / 10 + Z95 ** 2 / 400) / (1 + Z95 ** 2 / 10)
    out = stats.score_interval(scores)
    assert (out["low"], out["high"]) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (out["low"], out["high"]) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    # the SE is lm-eval's: sample sd (n - 1) / sqrt(n); the normal interval is mean +- z * SE
    se = math.sqrt(0.8 * 0.2 * 10 / 9 / 10)
    wald = stats.score_interval(scores, interval="normal")
    assert wald["stderr"] == out["stderr"] == pytest.approx(se)
    assert (wald["interval"], wald["low"], wald["high"]) == ("normal", pytest.approx(0.8 - Z95 * se),
                                                             pytest.approx(0.8 + Z95 * se))
    with pytest.raises(ValueError, match="interval='wilson' needs 0/1 scores"):
        stats.score_interval([0.5, 1.0], interval="wilson")


def test_all_wrong_gets_a_wilson_interval_not_a_point():
    out = stats.score_interval(np.zeros(30))  # AIME24-sized, nothing solved
    assert (out["mean"], out["stderr"], out["low"]) == (0.0, 0.0, 0.0)
    assert out["high"] == pytest.approx(Z95 ** 2 / (30 + Z95 ** 2))  # Wilson's upper bound at 0/n


def test_cluster_robust_se_by_hand():
    scores, clusters = [1, 1, 0, 0, 0, 1], list("AAABBC")
    # mean 0.5; residual sums per cluster 0.5, -1, 0.5; CR1: 3/2 * 1.5 / 6^2 = 1/16
    out = stats.score_interval(scores, clusters=clusters)
    assert (out["mean"], out["stderr"], out["n"], out["n_clusters"]) == (0.5, 0.25, 6, 3)
    assert out["stderr_unclustered"] == pytest.approx(math.sqrt(0.3 / 6))
    assert out["interval"] == "t2" and out["high"] == pytest.approx(0.5 + 4.302652729911275 * 0.25)
    # every item its own cluster: exactly the plain SE
    own = stats.score_interval(scores, clusters=range(6))
    assert own["stderr"] == pytest.approx(math.sqrt(0.3 / 6), rel=1e-12)
    # the same vector as paired differences (b all zero) gets the same clustered SE
    paired = stats.paired_difference(scores, np.zeros(6), clusters=clusters)
    assert (paired["diff"], paired["stderr"], paired["interval"]) == (0.5, pytest.approx(0.25), "t2")


def test_clustering_widens_only_when_items_in_a_cluster_are_alike():
    rng = np.random.default_rng(0)
    g, m = 200, 20
    clusters = np.repeat(np.arange(g), m)
    # each cluster's accuracy ~ Beta(2, 2): intra-cluster correlation 1/(2+2+1) = 0.2, design effect 1 + 19 * 0.2
    p = np.repeat(rng.beta(2, 2, g), m)
    alike = (rng.random(g * m) < p).astype(float)
    out = stats.score_interval(alike, clusters=clusters)
    assert out["stderr"] / out["stderr_unclustered"] == pytest.approx(math.sqrt(4.8), rel=0.15)
    assert out["stderr"] == pytest.approx(math.sqrt(0.25 * 4.8 / (g * m)), rel=0.15)
    # independent items under arbitrary labels: the clustered SE stays the plain one
    independent = (rng.random(g * m) < 0.5).astype(float)
    out = stats.score_interval(independent, clusters=rng.permutation(clusters))
    assert out["stderr"] / out["stderr_unclustered"] == pytest.approx(1.0, abs=0.15)


def test_macro_mean_over_clusters():
    scores = [1, 1, 0, 0, 1, 0, 0, 0, 0, 1]
    subjects = list("AAABBCCCCC")
    weights = stats.macro_weights(subjects)
    assert list(weights) == pytest.approx([1 / 3] * 3 + [1 / 2] * 2 + [1 / 5] * 5)
    means = np.array([2 / 3, 1 / 2, 1 / 5])
    out = stats.score_interval(scores, clusters=subjects, weights=weights)
    # unweighted mean of subject means; CR1 SE = that of a mean over 3 subjects
    assert out["mean"] == pytest.approx(means.mean())
    assert out["stderr"] == pytest.approx(means.std(ddof=1) / math.sqrt(3))


def test_paired_interval_is_much_narrower_for_correlated_items():
    base = np.r_[np.ones(500), np.zeros(500)]
    tuned = base.copy()
    tuned[500:550] = 1.0  # 50 items fixed, nothing else changes
    paired = stats.paired_difference(tuned, base)
    unpaired = stats.unpaired_difference(tuned, base)
    assert (paired["diff"], unpaired["diff"]) == pytest.approx((0.05, 0.05))
    # d: 50 ones in 1000 -> var (n-1) = 0.05 * 0.95 * 1000/999; the sides: 0.5 * 0.5 and 0.55 * 0.45, same factor
    assert paired["stderr"] == pytest.approx(math.sqrt(0.0475 / 999))
    assert unpaired["stderr"] == pytest.approx(math.sqrt((0.25 + 0.2475) / 999))
    assert paired["stderr"] / unpaired["stderr"] == pytest.approx(math.sqrt(0.0475 / 0.4975))  # 0.309
    # cov = E[ab] - 0.55 * 0.5 = 0.5 - 0.275 (every item base solves, tuned solves too)
    assert paired["corr"] == pytest.approx(0.225 / math.sqrt(0.2475 * 0.25))
    assert paired["significant"] and paired["p_value"] < 1e-10
    assert unpaired["p_value"] == pytest.approx(2 * sps.norm.sf(0.05 / math.sqrt((0.25 + 0.2475) / 999)))  # 0.025
    assert (paired["mean_a"], paired["mean_b"], paired["n"]) == (0.55, 0.5, 1000)


def test_paired_difference_joins_on_item_ids():
    rng = np.random.default_rng(1)
    a = rng.random(40)
    b = a - 0.1 + 0.01 * rng.standard_normal(40)
    ids = np.array([f"q{i}" for i in range(40)])
    aligned = stats.paired_difference(a[:30], b[:30])
    order = rng.permutation(np.arange(5, 40))  # b lacks q0-q4, a lacks q30-q39 below, b shuffled
    joined = stats.paired_difference(a[:30], b[order], items_a=ids[:30], items_b=ids[order])
    assert joined["n"] == 25 and (joined["n_only_a"], joined["n_only_b"]) == (5, 10)
    expected = stats.paired_difference(a[5:30], b[5:30])
    assert (joined["diff"], joined["stderr"]) == pytest.approx((expected["diff"], expected["stderr"]))
    assert aligned["n"] == 30
    with pytest.raises(ValueError, match=r"share no item: a has 3 items .* b has 2"):
        stats.paired_difference([1, 0, 1], [1, 1], items_a=["x", "y", "z"], items_b=["u", "v"])
    with pytest.raises(ValueError, match="a has 3 items and b 2"):
        stats.paired_difference([1, 0, 1], [1, 1])


def test_samples_per_item_reduce_the_se_as_millers_formula_says():
    rng = np.random.default_rng(2)
    n, k = 2000, 16
    p = rng.beta(2, 2, n)  # Var(x) = 4 / (16 * 5) = 0.05, E[p(1-p)] = 0.5 - (0.05 + 0.25) = 0.2
    samples = (rng.random((n, k)) < p[:, None]).astype(float)
    one, many = stats.score_interval(samples[:, :1]), stats.score_interval(samples)
    assert one["stderr"] == pytest.approx(math.sqrt((0.05 + 0.2) / n), rel=0.05)
    assert many["stderr"] == pytest.approx(math.sqrt((0.05 + 0.2 / k) / n), rel=0.05)
    assert many["stderr"] == pytest.approx(math.sqrt(np.var(samples.mean(axis=1), ddof=1) / n))
    assert (many["between_var"], many["within_var"]) == (pytest.approx(0.05, rel=0.15), pytest.approx(0.2, rel=0.05))
    assert many["samples_per_item"] == k and many["interval"] == "normal"
    predicted = stats.stderr_with_samples(many["between_var"], many["within_var"], n, 1)
    assert predicted == pytest.approx(one["stderr"], rel=0.05)
    # the same samples as a long frame (rows shuffled) give the same numbers
    long = pd.DataFrame({"item": np.repeat(np.arange(n), k), "value": samples.ravel()}).sample(frac=1, random_state=0)
    again = stats.score_interval(long.value, items=long.item)
    assert (again["mean"], again["stderr"], again["within_var"]) == pytest.approx(
        (many["mean"], many["stderr"], many["within_var"]))


def test_item_scores_refuses_inconsistent_rows():
    with pytest.raises(ValueError, match="clusters: item 'q1' has rows with different clusters"):
        stats.item_scores([1, 0, 1], items=["q1", "q1", "q2"], clusters=["A", "B", "B"])
    with pytest.raises(ValueError, match="clusters: 2 values for 3 score rows"):
        stats.score_interval([1, 0, 1], clusters=["A", "B"])
    with pytest.raises(ValueError, match="scores: value 1 .* is NaN"):
        stats.score_interval([1, math.nan])


def _brute_pass_at_k(n, c, k):
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_of_all_subsets():
    cases = [(n, c, k) for n in range(1, 9) for c in range(n + 1) for k in range(1, n + 1)]
    n, c, k = (np.array(x) for x in zip(*cases))
    got = stats.pass_at_k(n, c, k)
    assert got == pytest.approx([_brute_pass_at_k(*case) for case in cases], abs=1e-12)
    assert len(cases) == 240


def test_pass_at_k_is_exact_for_many_samples():
    for n, c, k in [(256, 3, 128), (1000, 1, 1), (1000, 999, 500), (2048, 20, 64)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert stats.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-10)
    with pytest.raises(ValueError, match="k must lie in"):
        stats.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c .* must lie in"):
        stats.pass_at_k(4, 5, 1)


def test_pass_at_k_curve():
    rng = np.random.default_rng(3)
    correct = (rng.random((60, 8)) < rng.beta(0.5, 2, 60)[:, None]).astype(int)
    curve = stats.pass_at_k_curve(correct)
    assert list(curve.k) == list(range(1, 9)) and set(curve.n_items) == {60}
    assert curve.pass_at_k[0] == pytest.approx(correct.mean())
    assert curve.pass_at_k[7] == pytest.approx(correct.any(axis=1).mean())
    per_item = stats.pass_at_k(np.full(60, 8), correct.sum(axis=1), 3)
    third = stats.score_interval(per_item, interval="normal")
    assert curve.loc[2, ["pass_at_k", "stderr"]].tolist() == pytest.approx([third["mean"], third["stderr"]])
    assert curve.loc[2, "low"] == pytest.approx(max(0.0, third["low"]))
    assert curve.pass_at_k.is_monotonic_increasing and (curve.high <= 1).all()


def test_bootstrap_agrees_with_the_analytic_intervals():
    rng = np.random.default_rng(4)
    scores = (rng.random(2000) < 0.3).astype(float)
    analytic = stats.score_interval(scores, interval="normal")
    boot = stats.bootstrap_interval(scores, seed=0)
    se = analytic["stderr"]
    assert boot["stderr"] == pytest.approx(se, rel=0.05)
    assert (boot["low"], boot["high"]) == pytest.approx((analytic["low"], analytic["high"]), abs=0.1 * se)

    other = np.clip(scores + (rng.random(2000) < 0.05), 0, 1)
    paired = stats.paired_difference(other, scores)
    boot = stats.bootstrap_interval(other, scores, method="percentile", seed=0)
    assert boot["diff"] == pytest.approx(paired["diff"]) and boot["significant"]
    assert boot["stderr"] == pytest.approx(paired["stderr"], rel=0.05)

    clusters = np.repeat(np.arange(100), 20)
    alike = (rng.random(2000) < np.repeat(rng.beta(2, 2, 100), 20)).astype(float)
    analytic = stats.score_interval(alike, clusters=clusters)
    boot = stats.bootstrap_interval(alike, clusters=clusters, seed=0)
    assert boot["n_clusters"] == 100
    assert boot["stderr"] == pytest.approx(analytic["stderr"], rel=0.05)
    assert boot["high"] - boot["low"] == pytest.approx(analytic["high"] - analytic["low"], rel=0.1)


def test_seed_summary_keeps_every_seed():
    frame = pd.DataFrame({"run": ["grpo"] * 3 + ["sft"] * 2, "task": "math", "seed": [0, 1, 2, 0, 1],
                          "value": [0.50, 0.54, 0.52, 0.30, 0.40]})
    out = stats.seed_summary(frame, "value", by=["run", "task"]).set_index("run")
    assert out.loc["grpo", ["mean", "sd", "min", "max", "n_seeds"]].tolist() == pytest.approx(
        [0.52, 0.02, 0.50, 0.54, 3])
    assert out.loc["grpo", "high"] - 0.52 == pytest.approx(sps.t.ppf(0.975, 2) * 0.02 / math.sqrt(3))
    assert out.loc["sft", ["value@seed=0", "value@seed=1"]].tolist() == [0.30, 0.40]
    assert math.isnan(out.loc["sft", "value@seed=2"])
    with pytest.raises(ValueError, match="several rows for .*'run': 'sft'"):
        stats.seed_summary(pd.concat([frame, frame.tail(1)]), "value", by=["run", "task"])
    with pytest.raises(ValueError, match=r"no column \['step'\]"):
        stats.seed_summary(frame, "value", by=["step"])


def test_benjamini_hochberg():
    adjusted, significant = stats.benjamini_hochberg([0.01, 0.04, 0.03, 0.005, math.nan, 0.2], alpha=0.045)
    # sorted 0.005, 0.01, 0.03, 0.04, 0.2 (m = 5): p * m / rank = .025, .025, .05, .05, .2 (running min from the top)
    assert adjusted[:4] == pytest.approx([0.025, 0.05, 0.05, 0.025]) and adjusted[5] == pytest.approx(0.2)
    assert math.isnan(adjusted[4])
    assert list(significant) == [True, False, False, True, False, False]


def test_seeded_difference_adds_item_and_seed_variance():
    # three seeds disagree on the same four items: seed estimates 1/2, 3/4, 1/4
    per_seed = [[np.array([1, 0, 0, 1])], [np.array([1, 1, 0, 1])], [np.array([0, 0, 0, 1])]]
    out = stats.seeded_difference(per_seed)
    # items: D = (2/3, 1/3, 0, 1), sd^2 = 5/27, over n = 4; seeds: sd^2 of (1/2, 3/4, 1/4) = 1/16, over S = 3
    v_items, v_seeds = Fraction(5, 108), Fraction(1, 48)
    df = (v_items + v_seeds) ** 2 / (v_items ** 2 / 3 + v_seeds ** 2 / 2)
    half = sps.t.ppf(0.975, float(df)) * math.sqrt(v_items + v_seeds)
    assert out["diff"] == pytest.approx(0.5) and out["df"] == pytest.approx(float(df))
    assert (out["se_items"] ** 2, out["se_seeds"] ** 2) == pytest.approx((float(v_items), float(v_seeds)))
    assert (out["low"], out["high"]) == pytest.approx((0.5 - half, 0.5 + half))
    assert (out["n"], out["n_seeds"]) == (4, 3)
    # seeds that agree exactly: the items' interval alone, t with n - 1 degrees of freedom; two parts: their mean
    same = stats.seeded_difference([[np.array([1.0, 0, 0, 1]), np.array([0.5, 0.5])]] * 2)
    assert same["se_seeds"] == 0 and same["df"] == pytest.approx(3) and same["diff"] == pytest.approx(0.5)
    assert same["se_items"] == pytest.approx(math.sqrt(1 / 3 / 4) / 2)
    with pytest.raises(ValueError, match="two seeds or more"):
        stats.seeded_difference(per_seed[:1])

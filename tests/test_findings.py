"""The report's first page: claims, changes from the base and the authors' numbers as the tables give them."""
import pandas as pd
import pytest
from scalpel import cli
from scalpel.report import findings

SUMMARY = pd.DataFrame([
    {"run": "base", "method": "base", "step": 0, "in_domain": 0.2, "out_of_domain": 0.8, "mean_rel_update": None},
    {"run": "grpo", "method": "grpo", "step": 4, "in_domain": 0.35, "in_domain_delta": 0.15, "in_domain_delta_low": 0.1,
     "in_domain_delta_high": 0.2, "in_domain_delta_significant": True, "out_of_domain": 0.79,
     "out_of_domain_delta": -0.01, "out_of_domain_delta_low": -0.03, "out_of_domain_delta_high": 0.01,
     "out_of_domain_delta_significant": False, "mean_rel_update": 0.00123},
])
CLAIMS = pd.DataFrame([
    {"claim": "1a", "comparison": "grpo - base", "task": "mini_math_l1+l2", "metric": "pass@1", "estimate": 0.164,
     "ci_low": 0.110, "ci_high": 0.218, "criterion": "low > 0", "verdict": "pass"},
    {"claim": "2", "comparison": "sft - grpo", "task": "ood", "metric": "mean", "estimate": -0.5, "ci_low": -0.55,
     "ci_high": -0.44, "criterion": "high < 0", "verdict": "fail"},
    {"claim": "5", "comparison": "grpo - base", "task": "mini_math_l1", "metric": "pass@16", "estimate": 0.0,
     "ci_low": None, "ci_high": None, "criterion": "reported", "verdict": None},
])


def test_domain_table_gives_each_change_with_its_interval():
    table = findings.domain_table(SUMMARY)
    assert table.run.tolist() == ["grpo"]
    row = table.iloc[0]
    assert row["in domain change [95% CI]"] == "+0.150 [+0.100, +0.200]"
    assert row["out of domain change [95% CI]"] == "-0.010 [-0.030, +0.010]"
    assert (row["in domain significant"], row["out of domain significant"]) == ("yes", "no")
    assert row["mean relative update"] == "0.00123"


def test_page_counts_the_decided_claims_and_marks_verdicts(tmp_path):
    html = findings.page(SUMMARY, CLAIMS, None, [], "Found")
    assert "Pre-registered claims: 1 of 2 pass" in html
    assert '<td class="pass">pass</td>' in html and '<td class="fail">fail</td>' in html
    assert "+0.164 [+0.110, +0.218]" in html and "+0.000</td>" in html  # no interval: the estimate alone
    assert "Beside the authors" not in html


def test_seeded_claims_are_counted_over_seeds():
    seeded = pd.DataFrame([
        {"claim": "1a", "comparison": "grpo - base", "task": "l1+l2", "metric": "pass@1", "n_seeds": 3,
         "estimate": 0.133, "ci_low": -0.1, "ci_high": 0.37, "criterion": "ci_low > 0", "seeds_pass": 2,
         "verdict": "fail"},
        {"claim": "3", "comparison": "grpo", "task": "KL", "metric": "kl", "n_seeds": 3, "estimate": 0.1,
         "ci_low": None, "ci_high": None, "criterion": "reported", "seeds_pass": None, "verdict": None}])
    html = findings.page(SUMMARY, CLAIMS, None, [], "Found", seeded)
    assert "over 3 training seeds: 0 of 1 pass" in html and "<td>2 of 3</td>" in html
    assert html.index("training seeds") < html.index("Pre-registered claims: 1 of 2")


def test_the_command_embeds_figures_and_the_authors_numbers(tmp_path):
    SUMMARY.to_csv(tmp_path / "summary.tsv", sep="\t", index=False)
    pd.DataFrame([{"run": "grpo", "authors_model": "GRPOv01.14", "quantity": "MATH-500", "ours": 0.412,
                   "ours_stderr": 0.022, "authors": 0.436, "authors_stderr": None}]).to_csv(
        tmp_path / "authors.tsv", sep="\t", index=False)
    png = tmp_path / "scores_final.png"
    png.write_bytes(b"\x89PNG fake")
    out = tmp_path / "findings.html"
    cli.main(["findings", "--summary", tmp_path / "summary.tsv", "--authors", tmp_path / "authors.tsv",
              "--figures", png, "--out", out])
    text = out.read_text()
    assert "<td>0.412 ± 0.022</td><td>0.436</td>" in text
    assert "data:image/png;base64,iVBORyBmYWtl" in text
    with pytest.raises(SystemExit, match="no caption for .*other.png"):
        cli.main(["findings", "--summary", tmp_path / "summary.tsv", "--figures", tmp_path / "other.png",
                  "--out", out])


def test_the_forgetting_section_gives_each_r2_the_kl_differences_and_the_razor_verdict(tmp_path):
    table = pd.DataFrame([
        {"predictor": "angle_left_k4", "n": 21, "runs": 21, "r2": 0.98, "r2_low": 0.96, "r2_high": 0.99},
        {"predictor": "kl_per_token", "n": 21, "runs": 21, "r2": 0.88, "r2_low": 0.74, "r2_high": 0.96},
        {"predictor": "nss", "n": 3, "runs": 3, "r2": None, "r2_low": None, "r2_high": None}])
    pairs = pd.DataFrame([{"predictor_a": "angle_left_k4", "predictor_b": "kl_per_token", "n": 21, "runs": 21,
                           "r2_a": 0.98, "r2_b": 0.88, "diff": 0.1, "diff_low": 0.03, "diff_high": 0.22}])
    rows = findings.forgetting_table(table, pairs).set_index("predictor")
    assert list(rows.index) == ["angle_left_k4", "kl_per_token"]  # no R^2, no row
    assert rows.loc["angle_left_k4", "R^2 [95% CI]"] == "0.980 [+0.960, +0.990]"
    # the pair read from KL's side: R^2(KL) - R^2(angle), the interval negated and swapped
    assert rows.loc["angle_left_k4", "R^2(KL) - R^2(predictor) [95% CI]"] == "-0.100 [-0.220, -0.030]"
    assert rows.loc["kl_per_token", "R^2(KL) - R^2(predictor) [95% CI]"] == ""
    html = findings.page(SUMMARY, None, None, [], "Found", forgetting_tables=(table, pairs))
    assert "over 21 checkpoints" in html and "<b>not reproduced</b>" in html  # the angle's D lies below the margin
    few = table.assign(n=[8, 8, 3])
    assert "<b>inconclusive</b>" in findings.page(SUMMARY, None, None, [], "Found", forgetting_tables=(few, pairs))

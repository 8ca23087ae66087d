"""The report's first page: what the study found, on one self-contained HTML page (`results/report/findings.html`).

From the tables the other report commands wrote, nothing recomputed: the pre-registered claims with their number,
interval and verdict (the miniature, `claims.tsv`), each run's in-domain and out-of-domain change from the base with
its paired interval (`summary.tsv`), our numbers beside the authors' (`authors_comparison.tsv`, the paper config), what
predicts forgetting with RL's Razor's pre-registered verdict (`forgetting.tsv`, `forgetting_pairs.tsv`), and the
figures that carry them, embedded.
"""
from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import pandas as pd

from scalpel.io import atomic_output
from scalpel.report import forgetting
from scalpel.report.tables import read_tsv

log = logging.getLogger(__name__)
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.92em}th,td{padding:.3em .6em;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}th{background:#f4f4f4}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;
font-weight:600}.note{color:#555;font-size:.9em}figure{margin:1em 0}figure img{max-width:100%}"""
VERDICTS = {"pass": "pass", "fail": "fail", "reproduced": "pass", "not reproduced": "fail"}


def interval(est, low, high) -> str:
    """`est [low, high]`, or the estimate alone where the interval is missing."""
    if pd.isna(est):
        return ""
    if pd.isna(low) or pd.isna(high):
        return f"{est:+.3f}"
    return f"{est:+.3f} [{low:+.3f}, {high:+.3f}]"


def _table(df: pd.DataFrame, verdict_column: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, row in df.iterrows():
        cells = []
        for col, value in row.items():
            text = "" if pd.isna(value) else str(value)
            css = VERDICTS.get(text, "") if col == verdict_column else ""
            cells.append(f'<td class="{css}">{html.escape(text)}</td>' if css else f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def claims_table(claims: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: what was compared, the estimate with its 95% interval, the criterion and the verdict."""
    return pd.DataFrame({
        "claim": claims["claim"], "comparison": claims["comparison"],
        "on": claims["task"].fillna("") + " " + claims["metric"].fillna(""),
        "estimate [95% CI]": [interval(e, lo, hi) for e, lo, hi in
                              zip(claims.estimate, claims.ci_low, claims.ci_high)],
        "criterion": claims["criterion"], "verdict": claims["verdict"].fillna(""),
    })


def seeded_table(seeded: pd.DataFrame) -> pd.DataFrame:
    """Each decided claim over training seeds: the seed-averaged estimate with its interval over items and seeds,
    how many seeds pass on their own, and the verdict on the seed-averaged interval."""
    decided = seeded[seeded.criterion.fillna("reported") != "reported"]
    return pd.DataFrame({
        "claim": decided["claim"], "comparison": decided["comparison"],
        "on": decided["task"].fillna("") + " " + decided["metric"].fillna(""),
        "estimate over seeds [95% CI]": [interval(e, lo, hi) for e, lo, hi in
                                         zip(decided.estimate, decided.ci_low, decided.ci_high)],
        "seeds passing": [f"{int(p)} of {int(n)}" for p, n in zip(decided.seeds_pass, decided.n_seeds)],
        "criterion": decided["criterion"], "verdict": decided["verdict"].fillna(""),
    })


def domain_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Each run's final checkpoint against the base: the in-domain and out-of-domain change with its paired 95%
    interval, significant after Benjamini-Hochberg or not, and the mean relative update."""
    runs = summary[summary.run != "base"]
    out = pd.DataFrame({"run": runs.run, "method": runs.method, "step": runs.step})
    for domain in ("in_domain", "out_of_domain"):
        if f"{domain}_delta" not in runs:
            continue
        out[f"{domain.replace('_', ' ')} change [95% CI]"] = [
            interval(d, lo, hi) for d, lo, hi in
            zip(runs[f"{domain}_delta"], runs[f"{domain}_delta_low"], runs[f"{domain}_delta_high"])]
        out[f"{domain.replace('_', ' ')} significant"] = runs[f"{domain}_delta_significant"].map(
            {True: "yes", False: "no"})
    out["mean relative update"] = runs.mean_rel_update.map(lambda x: f"{x:.3g}")
    return out


def authors_table(authors: pd.DataFrame) -> pd.DataFrame:
    """Our number beside the authors', each with its standard error where one exists."""
    def with_se(value, se):
        return f"{value:.4g}" + ("" if pd.isna(se) else f" ± {se:.2g}")
    return pd.DataFrame({
        "run": authors.run, "authors' model": authors.authors_model, "quantity": authors.quantity,
        "ours": [with_se(v, s) for v, s in zip(authors.ours, authors.ours_stderr)],
        "authors'": [with_se(v, s) for v, s in zip(authors.authors, authors.authors_stderr)],
    })


def forgetting_table(table: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Each predictor of the out-of-domain change in R^2 order: its R^2 with the run-resampling interval, and
    R^2(per-token KL) minus its R^2 with the paired interval (report.forgetting)."""
    d = forgetting.kl_differences(pairs).set_index("predictor")
    fitted = table.dropna(subset=["r2"])
    return pd.DataFrame({
        "predictor": fitted.predictor, "checkpoints": fitted.n, "runs": fitted.runs,
        "R^2 [95% CI]": [interval(r, lo, hi).lstrip("+") for r, lo, hi in
                         zip(fitted.r2, fitted.r2_low, fitted.r2_high)],
        "R^2(KL) - R^2(predictor) [95% CI]": [
            interval(*d.loc[p, ["diff", "diff_low", "diff_high"]]) if p in d.index else "" for p in fitted.predictor],
    })


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption class=note>{html.escape(caption)}</figcaption></figure>")


def page(summary: pd.DataFrame, claims: pd.DataFrame | None, authors: pd.DataFrame | None,
         figures: list[tuple[Path, str]], title: str, seeded: pd.DataFrame | None = None,
         forgetting_tables: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if seeded is not None and not seeded.empty:
        table = seeded_table(seeded)
        passed = int((table.verdict == "pass").sum())
        parts += [f"<h2>Pre-registered claims over {int(seeded.n_seeds.iloc[0])} training seeds: {passed} of "
                  f"{len(table)} pass</h2>",
                  "<p class=note>The paired difference averaged over seeds, its 95% interval carrying the noise of "
                  "the eval items and of the training seeds (docs/miniature-claims.md, \"Over training seeds\"); "
                  "the table below is seed 0's.</p>", _table(table, "verdict")]
    if claims is not None and not claims.empty:
        decided = claims[claims.verdict.fillna("") != ""]
        passed = int((decided.verdict == "pass").sum())
        parts += [f"<h2>Pre-registered claims: {passed} of {len(decided)} pass</h2>",
                  "<p class=note>Paired 95% intervals over the same eval items, KL reference examples or weight "
                  "matrices; criteria as pre-registered in docs/miniature-claims.md (rows without a verdict are "
                  "descriptive).</p>", _table(claims_table(claims), "verdict")]
    parts += ["<h2>Each run against the base</h2>",
              "<p class=note>Final checkpoints; in domain: the maths suites, out of domain: the others (config "
              "<code>eval.in_domain</code>); change = run - base, paired over items; significant after "
              "Benjamini-Hochberg over every comparison of the study.</p>", _table(domain_table(summary))]
    if authors is not None and not authors.empty:
        parts += ["<h2>Beside the authors' numbers</h2>",
                  "<p class=note>Every cell both have (config <code>report.authors</code>); ± one standard "
                  "error.</p>", _table(authors_table(authors))]
    if forgetting_tables is not None:
        table, pairs = forgetting_tables
        points = int(table.n.max()) if not table.empty else 0
        parts += ["<h2>What predicts forgetting</h2>",
                  f"<p class=note>Least-squares R^2 of the out-of-domain change on each predictor over {points} "
                  "checkpoints, 95% intervals resampling runs; the last column is paired. RL's Razor's claim "
                  "(per-token forward KL predicts better than each weight measure) by the rule pre-registered in "
                  "docs/razor-claims.md, which needs at least 20 checkpoints: <b>"
                  f"{html.escape(forgetting.razor_verdict(pairs, points))}</b>.</p>",
                  _table(forgetting_table(table, pairs))]
    parts += [_figure(path, caption) for path, caption in figures]
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


FIGURES = {
    "differences_final.png": "Change from the base per task and domain, final checkpoints, 95% paired intervals "
                             "(filled: significant after Benjamini-Hochberg).",
    "scores_final.png": "Scores of the base and each run's final checkpoint, 95% intervals.",
    "update_heatmaps.png": "Relative update ||W - W_base||_F / ||W_base||_F per layer and matrix, final checkpoints "
                           "(the paper's Figure 3 metric).",
    "forgetting.png": "The out-of-domain change against each predictor, with its line and R^2; below, R^2 of the "
                      "per-token KL minus each other's, paired intervals resampling runs.",
    "sweeps.png": "What each sweep did: in-domain and out-of-domain change from the base (95% intervals) and the "
                  "mean relative update against the swept value.",
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("findings", help="the report's first page: claims, changes from the base, figures")
    p.add_argument("--summary", required=True, help="summary.tsv")
    p.add_argument("--authors", help="authors_comparison.tsv")
    p.add_argument("--claims", help="claims.tsv (the miniature)")
    p.add_argument("--claims-seeds", help="claims_seeds.tsv (the miniature over training seeds)")
    p.add_argument("--forgetting", nargs=2, metavar=("TABLE", "PAIRS"),
                   help="forgetting.tsv and forgetting_pairs.tsv (rule forgetting)")
    p.add_argument("--figures", nargs="*", default=[], help=f"any of {', '.join(FIGURES)}, in order")
    p.add_argument("--title", default="What the study found")
    p.add_argument("--out", required=True)
    p.set_defaults(func=main)


def main(args) -> None:
    unknown = [f for f in args.figures if Path(f).name not in FIGURES]
    if unknown:
        raise SystemExit(f"scalpel findings: --figures: no caption for {', '.join(unknown)}")
    text = page(read_tsv(args.summary), read_tsv(args.claims) if args.claims else None,
                read_tsv(args.authors) if args.authors else None,
                [(Path(f), FIGURES[Path(f).name]) for f in args.figures], args.title,
                read_tsv(args.claims_seeds) if args.claims_seeds else None,
                tuple(read_tsv(f) for f in args.forgetting) if args.forgetting else None)
    with atomic_output(args.out) as tmp:
        Path(tmp).write_text(text)
    log.info("findings page: %s", args.out)

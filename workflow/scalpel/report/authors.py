"""The authors' published numbers beside ours, for every cell where both exist.

`mapping` (config `report.authors`) names which of the authors' models each of our runs reproduces
(`runs: {grpo: GRPOv01.14, ...}`; `base` is the base model) and which of our task metrics measures each of the
authors' benchmarks (`benchmarks: {MATH-500: minerva_math500,math_verify, ...}`). The comparison covers the final
checkpoints: benchmark scores, mean relative update per module, the SFT/GRPO update ratio and KL per token.
"""
from __future__ import annotations

import pandas as pd

COLUMNS = ["run", "authors_model", "quantity", "ours", "ours_stderr", "authors", "authors_stderr"]


def _row(run, model, quantity, ours, authors, ours_se=float("nan"), authors_se=None) -> dict:
    return {"run": run, "authors_model": model, "quantity": quantity, "ours": float(ours),
            "ours_stderr": float(ours_se), "authors": float(authors),
            "authors_stderr": float("nan") if authors_se is None else float(authors_se)}


def _final(scores: pd.DataFrame, run: str, step: int, task: str, metric: str) -> pd.Series | None:
    hit = scores[(scores.run == run) & (scores.step == step) & (scores.task == task) & (scores.metric == metric)]
    return None if hit.empty else hit.iloc[0]


def compare(authors: dict, mapping: dict, final_steps: dict[str, int], scores: pd.DataFrame,
            module_means: pd.DataFrame, kl: pd.DataFrame | None, methods: dict[str, str]) -> pd.DataFrame:
    """One row per (run, quantity) measured by both; `final_steps` maps each run (and base: 0) to its last step."""
    runs = {run: model for run, model in mapping.get("runs", {}).items() if run in final_steps}
    rows = []
    for benchmark, target in mapping.get("benchmarks", {}).items():
        if benchmark not in authors["scores"]:
            raise ValueError(f"report.authors.benchmarks: the authors report no {benchmark!r} "
                             f"(they report {', '.join(authors['scores'])})")
        task, metric = target.split(",", 1)
        for run, model in runs.items():
            theirs = authors["scores"][benchmark].get(model)
            ours = _final(scores, run, final_steps[run], task, metric)
            if theirs is not None and ours is not None:
                rows.append(_row(run, model, benchmark, ours.value, theirs[0], ours.stderr, theirs[1]))
    final_updates = module_means.merge(pd.DataFrame({"run": list(final_steps), "step": list(final_steps.values())}))
    for run, model in runs.items():
        theirs = authors["updates"].get(model)
        ours = final_updates[final_updates.run == run]
        if theirs is None or ours.empty:
            continue
        for module, value in ours.set_index("module").mean_rel_update.items():
            rows.append(_row(run, model, f"mean relative update {module}", value, theirs[module]))
        rows.append(_row(run, model, "mean relative update, all matrices", ours.mean_rel_update.mean(), theirs["all"]))
    grpo = [(r, m) for r, m in runs.items() if methods.get(r) == "grpo" and m in authors["updates"]]
    mean_of = final_updates.groupby("run").mean_rel_update.mean()
    for run, model in runs.items():
        if methods.get(run) != "sft" or model not in authors["updates"] or run not in mean_of:
            continue
        for g_run, g_model in grpo:
            if g_run in mean_of:
                rows.append(_row(run, model, f"update ratio to {g_run} ({g_model})", mean_of[run] / mean_of[g_run],
                                 authors["updates"][model]["all"] / authors["updates"][g_model]["all"]))
    if kl is not None:
        for run, model in runs.items():
            theirs = authors["kl_per_token"].get(model)
            ours = kl[(kl.run == run) & (kl.step == final_steps.get(run))]
            if theirs is not None and not ours.empty:
                rows.append(_row(run, model, "KL(base || final) per token", ours.kl_per_token.iloc[0], theirs))
    return pd.DataFrame(rows, columns=COLUMNS)

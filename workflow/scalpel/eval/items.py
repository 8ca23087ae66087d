"""Per-item scores from lm-eval's logged samples: what confidence intervals and paired differences are computed from.

One row per (task, metric, item): task, metric, item, value, cluster, weight, samples (the completions per document:
the task's `repeats`). `item` is lm-eval's doc_id (as text),
so that two models evaluated on the same task line up item by item. An item's value is the metric lm-eval computed
for that document: with several samples per document (a task's `repeats`), the task's own mean over them.

Only metrics that lm-eval aggregates as a mean of per-document numbers have items. A metric whose per-document value
is a list (IFEval's instruction-level accuracies) gives one item per list element, clustered by its document. Groups
(MMLU's subjects under `paper_mmlu`) get their members' items again under the group's name, clustered by member task
and, when the group does not weight by size, weighted so that each member counts equally (as lm-eval's group score).
`cluster_fields` maps a task to a document field that clusters its items (MMLU-Pro's `category`).
"""
from __future__ import annotations

import numbers

import pandas as pd

COLUMNS = ["task", "metric", "item", "value", "cluster", "weight", "samples"]


def metric_name(metric: str, filt: str) -> str:
    """A (metric, filter) pair as the eval tables and the item tables name it."""
    return metric if filt == "none" else f"{metric},{filt}"


def _mean_aggregated(config: dict) -> set[str]:
    return {m["metric"] for m in config.get("metric_list") or [] if m.get("aggregation", "mean") == "mean"}


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, complex)


def task_items(task: str, samples: list[dict], config: dict, cluster_field: str | None = None) -> pd.DataFrame:
    """Item rows of one task from lm-eval's logged samples (each with doc_id, doc, filter, metrics)."""
    means = _mean_aggregated(config)
    k = int(config.get("repeats") or 1)
    rows = []
    for s in samples:
        doc_id = str(s["doc_id"])
        cluster = doc_id
        if cluster_field is not None:
            if cluster_field not in s["doc"]:
                raise ValueError(f"eval.item_clusters: task {task} has no document field {cluster_field!r} "
                                 f"(fields: {sorted(s['doc'])})")
            cluster = str(s["doc"][cluster_field])
        for metric in s["metrics"]:
            value, name = s[metric], metric_name(metric, s.get("filter", "none"))
            if isinstance(value, (list, tuple)) and value and all(_is_number(v) for v in value):
                rows += [(task, name, f"{doc_id}.{j}", float(v), doc_id if cluster_field is None else cluster, 1.0, k)
                         for j, v in enumerate(value)]
            elif _is_number(value) and metric in means:
                rows.append((task, name, doc_id, float(value), cluster, 1.0, k))
    return pd.DataFrame(rows, columns=COLUMNS)


def leaves(group: str, group_subtasks: dict[str, list[str]]) -> list[str]:
    """The tasks under a group, through nested groups."""
    out = []
    for member in group_subtasks.get(group, []):
        out += leaves(member, group_subtasks) if group_subtasks.get(member) else [member]
    return out


def group_items(group: str, per_task: dict[str, pd.DataFrame], group_subtasks: dict[str, list[str]],
                weight_by_size: bool) -> pd.DataFrame:
    """A group's items: its leaf tasks' items, clustered by leaf task; equal weight per leaf unless by size."""
    frames = []
    for leaf in leaves(group, group_subtasks):
        rows = per_task.get(leaf)
        if rows is None or rows.empty:
            continue
        rows = rows.assign(task=group, item=leaf + "/" + rows["item"], cluster=leaf)
        if not weight_by_size:
            counts = rows.groupby("metric")["item"].transform("size")
            rows["weight"] = 1.0 / counts
        frames.append(rows)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def from_results(res: dict, group_weight_by_size: dict[str, bool] | None = None,
                 cluster_fields: dict[str, str] | None = None) -> pd.DataFrame:
    """All item rows of one lm-eval run (its `samples`, `configs` and `group_subtasks`)."""
    cluster_fields = cluster_fields or {}
    per_task = {task: task_items(task, samples, res["configs"].get(task, {}), cluster_fields.get(task))
                for task, samples in res["samples"].items()}
    groups = res.get("group_subtasks") or {}
    frames = list(per_task.values())
    for group in groups:
        if groups[group]:
            frames.append(group_items(group, per_task, groups, (group_weight_by_size or {}).get(group, True)))
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def group_weighting(manager, groups) -> dict[str, bool]:
    """Whether each group's first aggregate metric weights by size (lm-eval's default: yes)."""
    out = {}
    for group in groups:
        entry = manager.task_index.get(group)
        aggregate = (getattr(entry, "cfg", None) or {}).get("aggregate_metric_list") or [{}]
        out[group] = bool(aggregate[0].get("weight_by_size", True))
    return out

"""Per-item scores from lm-eval samples: the numbers every interval and paired difference is computed from."""
import json

import pandas as pd
import pytest
from conftest import TINY_WORLD, write_tiny_study
from scalpel.data import synthetic
from scalpel.eval import evaluate, items
from scalpel.tasks import mini as tasks


def sample(doc_id, doc, filt="none", **metrics):
    return {"doc_id": doc_id, "doc": doc, "filter": filt, "metrics": list(metrics), **metrics}


MEAN = {"metric_list": [{"metric": "acc", "aggregation": "mean"}, {"metric": "prompt_level", "aggregation": "mean"},
                        {"metric": "inst_level", "aggregation": "agg_inst_level_acc"},
                        {"metric": "bleu", "aggregation": "bleu"}]}


def test_list_metrics_are_one_item_per_element_clustered_by_document():
    rows = items.task_items("ifeval", [sample(0, {}, prompt_level=0.0, inst_level=[True, False, True]),
                                       sample(1, {}, prompt_level=1.0, inst_level=[True])], MEAN)
    inst = rows[rows.metric == "inst_level"]
    assert list(inst["item"]) == ["0.0", "0.1", "0.2", "1.0"]
    assert list(inst["cluster"]) == ["0", "0", "0", "1"]
    assert inst.value.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert rows[rows.metric == "prompt_level"].value.tolist() == [0.0, 1.0]


def test_corpus_level_metrics_have_no_items_and_filters_name_the_metric():
    rows = items.task_items("t", [sample(3, {}, filt="strict-match", acc=1.0, bleu=0.4)], MEAN)
    assert rows[["metric", "item", "value"]].values.tolist() == [["acc,strict-match", "3", 1.0]]


def test_cluster_field_is_read_from_the_document_and_a_missing_one_is_named():
    rows = items.task_items("mmlu_pro", [sample(0, {"category": "law"}, acc=1.0)], MEAN, "category")
    assert rows.cluster.tolist() == ["law"]
    with pytest.raises(ValueError, match="eval.item_clusters: task mmlu_pro has no document field 'subject'"):
        items.task_items("mmlu_pro", [sample(0, {"category": "law"}, acc=1.0)], MEAN, "subject")


def test_group_items_weight_each_member_equally_unless_by_size():
    res = {"samples": {"a": [sample(i, {}, acc=1.0) for i in range(3)], "b": [sample(0, {}, acc=0.0)]},
           "configs": {"a": MEAN, "b": MEAN}, "group_subtasks": {"g": ["a", "b"], "a": [], "b": []}}
    rows = items.from_results(res, {"g": False})
    group = rows[rows.task == "g"]
    assert sorted(group.cluster.unique()) == ["a", "b"]
    # The weighted mean over items is the macro mean over members: (1 + 0) / 2, not 3/4.
    assert (group.value * group.weight).sum() / group.weight.sum() == pytest.approx(0.5)
    by_size = items.from_results(res, {"g": True})
    assert by_size[by_size.task == "g"].weight.tolist() == [1.0] * 4


def test_evaluate_writes_items_equal_to_the_table(tmp_path):
    """Real lm-eval on a tiny model: the item means are the task scores lm-eval reports."""
    write_tiny_study(tmp_path)
    synthetic.write_world(0, {**TINY_WORLD, "eval_problems": 3}, tmp_path / "data")
    tasks.write_tasks(tmp_path / "data", tmp_path / "tasks", max_gen_toks=8)
    out = tmp_path / "eval/step-0.tsv"
    table = evaluate.run(str(tmp_path / "base"), ["mini_math_l1", "mini_facts"], str(tmp_path / "tasks"), str(out),
                         run="base", step=0, batch_size=8)
    rows = pd.read_csv(evaluate.items_path(out), sep="\t", dtype={"item": str})
    assert set(rows.task) == {"mini_math_l1", "mini_facts"}
    for r in table.itertuples():  # every metric of these tasks is a mean of per-document numbers
        hit = rows[(rows.task == r.task) & (rows.metric == r.metric)]
        assert len(hit) == (3 if r.task == "mini_math_l1" else 12) and hit.value.mean() == pytest.approx(r.value)
    assert sorted(rows[rows.task == "mini_math_l1"].item.unique()) == ["0", "1", "2"]
    logged = [json.loads(line) for line in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert {"doc_id", "metrics"} <= set(logged[0])
    assert set(rows.samples) == {1}

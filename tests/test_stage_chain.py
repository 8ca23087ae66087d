"""A stage chain of imported models through the whole workflow (issue 18): three folders imported as runs a, b and c,
each compared with its parent (a with the base, b with a, c with b), and c imported a second time as c_vs_base,
compared with the base; run with the local profile. Every table and figure of the report is made, each row names
its reference, c's updates against b and against the base are computed directly here, and c is evaluated once."""
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT
from safetensors.torch import load_file, save_file
from scalpel.analysis.matrices import layer_module

pytestmark = pytest.mark.integration
REFERENCES = {"a": "base", "b": "a@1", "c": "b@2", "c_vs_base": "base"}


def _snakemake(workdir, config, *targets):
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", *targets, "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(workdir), "--profile", str(ROOT / "profiles/local"), "--configfile", str(workdir / "config.yaml")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _stage(parent: dict, folder, template, change, dtype=None):
    """A copy of the model in `template` with `change` applied to each in-scope matrix of `parent`'s tensors."""
    tensors = {k: (change(k, v) if layer_module(k) else v.clone()) for k, v in parent.items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    folder.mkdir(parents=True)
    for f in template.iterdir():
        if f.name != "model.safetensors" and f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return tensors


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    work = tmp_path_factory.mktemp("chain")
    smoke = yaml.safe_load((ROOT / "tests/smoke/config.yaml").read_text())
    samples = {"mini_math_l1": 2}
    config = {**smoke, "eval": {**smoke["eval"], "limit": 4, "final_only": [], "samples": {"final": samples,
                                                                                            "intermediate": samples},
                                "tasks": {"math": ["mini_math_l1"], "knowledge": ["mini_facts"]},
                                "primary_metrics": {"mini_math_l1": "pass@1", "mini_facts": "acc"}},
              "kl": {"limit": 4}, "report": {"authors": {}}}
    config["model"]["build"] = {**config["model"]["build"], "pretrain_steps": 10}
    # the base first: the stages are made from it (a folder an import names must exist when the study is planned)
    (work / "stages/a").mkdir(parents=True)
    _snakemake(work, {**config, "runs": {"a": {"method": "import", "source": {"folder": "stages/a", "subfolder": ".",
                                                                               "steps": [1]}}}},
               "results/models/base")
    (work / "stages/a").rmdir()
    base = work / "results/models/base"
    gen = torch.Generator().manual_seed(0)
    tensors = {"base": load_file(base / "model.safetensors")}
    tensors["a"] = _stage(tensors["base"], work / "stages/a", base,
                          lambda k, w: w * 1.05 if "q_proj" in k else w.clone())
    tensors["b"] = _stage(tensors["a"], work / "stages/b", base,
                          lambda k, w: w * 0.9 if "up_proj" in k else w.clone())
    # c is stored in bfloat16, against b's float32: compared in bfloat16, the reference cast
    tensors["c"] = _stage(tensors["b"], work / "stages/c", base,
                          lambda k, w: w + 0.01 * torch.randn(w.shape, generator=gen), dtype=torch.bfloat16)
    runs = {name: {"method": "import", "source": {"folder": f"stages/{name}", "subfolder": ".", "steps": [step]},
                   **({"reference": parent} if parent else {})}
            for name, step, parent in (("a", 1, None), ("b", 2, "a"), ("c", 3, "b"))}
    runs["c_vs_base"] = {"method": "import", "source": {"folder": "stages/c", "subfolder": ".", "steps": [3]}}
    proc = _snakemake(work, {**config, "runs": runs, "weights": {**config["weights"], "pairs": [["b", "c"]]}})
    return work, tensors, proc


def _table(work, name):
    return pd.read_csv(work / "results/tables" / name, sep="\t", dtype={"run": str, "reference": str})


def test_every_table_and_figure_is_made_with_no_training(chain):
    work, _, proc = chain
    assert "train_" not in proc.stderr and "base_model" not in proc.stderr  # the base was there already
    rules = (ROOT / "workflow/rules/common.smk").read_text()
    outputs = re.findall(r'"(results/[^"]+)"', rules[rules.index("def get_final_outputs"):])
    outputs.remove("results/tables/claims.tsv")  # the miniature's pre-registered claims: not planned here
    outputs.remove("results/tables/throughput.tsv")  # nothing trained, no rate measured: not planned here
    assert not (work / "results/tables/throughput.tsv").exists()
    assert "results/report/findings.html" in outputs and "results/tables/references.tsv" in outputs
    for out in outputs:
        assert (work / out).stat().st_size > 0, out
    for figure in ("update_heatmaps", "scores_final", "kl_trajectories", "differences_final", "weights_alignment",
                   "forgetting", "pass_at_k"):
        assert (work / f"results/figures/{figure}.png").stat().st_size > 10_000, figure


def test_each_row_names_its_reference(chain):
    work, _, _ = chain
    for name, column in (("updates.tsv", "reference"), ("kl.tsv", "reference"), ("weights_update.tsv", "reference"),
                         ("weights_means.tsv", "reference"), ("references.tsv", "reference")):
        table = _table(work, name)
        assert dict(zip(table.run, table[column])) == REFERENCES, name
    align = _table(work, "weights_align_means.tsv")
    assert (align.run_a.item(), align.reference_a.item(), align.run_b.item(), align.reference_b.item()) == (
        "b", "a@1", "c", "b@2")
    diffs = _table(work, "differences.tsv")
    staged = diffs[diffs.comparison == "vs reference"]
    assert dict(zip(staged.run, staged.reference)) == {"b": "a@1", "c": "b@2"}
    assert set(diffs[diffs.comparison == "vs base"].reference) == {"base"}
    passes = _table(work, "pass_at_k.tsv")
    assert dict(zip(passes.run, passes.reference.fillna("-"))) == {"base": "-", **REFERENCES}


def _assert_updates_are_direct(rel_update, checkpoint: dict, reference: dict):
    """rel_update (by layer, module) = ||W - R|| / ||R||, R rounded to the checkpoint's dtype (the cast rule)."""
    for name, w in checkpoint.items():
        if (lm := layer_module(name)) is None:
            continue
        ref = reference[name].to(w.dtype).double()
        expected = float(torch.linalg.norm(w.double() - ref) / torch.linalg.norm(ref))
        assert rel_update[lm] == pytest.approx(expected, rel=1e-5), name


def test_the_update_of_c_is_against_b_as_computed_directly(chain):
    """||W_c - W_b|| / ||W_b|| per matrix, b rounded to c's bfloat16 as the cast rule says; references.tsv says so."""
    work, tensors, _ = chain
    updates = _table(work, "updates.tsv")
    c = updates[updates.run == "c"].set_index(["layer", "module"])
    assert len(c) == 4 * 7 and set(c.dtype) == {"bfloat16"} and set(c.reference_dtype) == {"float32"}
    _assert_updates_are_direct(c.rel_update, tensors["c"], tensors["b"])
    b = updates[updates.run == "b"].set_index(["layer", "module"])
    assert b.rel_update[(0, "up_proj")] == pytest.approx(0.1, rel=1e-5)  # b scaled up_proj by 0.9 of a's
    assert b.rel_update.drop(index="up_proj", level="module").abs().max() == 0
    checks = _table(work, "references.tsv").set_index("run")
    assert checks.loc["c", "note"].startswith("compared in the checkpoint's bfloat16: the reference cast")
    assert checks.loc["b", "note"] == "same dtype"
    kl = _table(work, "kl.tsv").set_index("run")
    assert (kl.kl_per_token > 0).all() and list(kl.reference) == ["base", "a@1", "b@2", "base"]
    provenance = json.loads((work / "results/runs/c/import.json").read_text())
    assert provenance["steps"]["3"]["dtypes"] == ["BF16"]


def test_a_stage_imported_twice_is_evaluated_once_and_diffed_against_each_reference(chain):
    """c_vs_base reads c's folder: it takes c's evaluation relabelled (no second lm-eval job) and its own diff and KL
    against the base, equal to a direct computation."""
    work, tensors, _ = chain
    assert (work / "logs/evaluate/c/step-3.log").exists()
    assert not (work / "logs/evaluate/c_vs_base").exists() and not (work / "benchmarks/evaluate/c_vs_base").exists()
    ours = pd.read_csv(work / "results/eval/c_vs_base/step-3.tsv", sep="\t")
    theirs = pd.read_csv(work / "results/eval/c/step-3.tsv", sep="\t")
    assert set(ours.run) == {"c_vs_base"} and len(ours) == len(theirs) > 0
    pd.testing.assert_frame_equal(ours.drop(columns="run"), theirs.drop(columns="run"))
    assert (work / "results/eval/c_vs_base/step-3.items.tsv").read_bytes() == \
        (work / "results/eval/c/step-3.items.tsv").read_bytes()
    assert json.loads((work / "results/eval/c_vs_base/step-3.shared.json").read_text())["run"] == "c"
    updates = _table(work, "updates.tsv")
    against_base = updates[updates.run == "c_vs_base"].set_index(["layer", "module"])
    _assert_updates_are_direct(against_base.rel_update, tensors["c"], tensors["base"])
    kl = _table(work, "kl.tsv").set_index("run")
    assert kl.kl_per_token["c_vs_base"] > kl.kl_per_token["c"]  # c differs from the base by a's, b's and c's changes
    summary = _table(work, "summary.tsv").set_index("run")
    for column in ("mini_math_l1", "mini_facts", "in_domain_delta", "out_of_domain_delta_low"):
        assert summary.loc["c", column] == summary.loc["c_vs_base", column], column  # one evaluation, one score
    # b equals the base except in q_proj (a's change) and up_proj (b's): c's two updates agree exactly elsewhere
    against_b = updates[updates.run == "c"].set_index(["layer", "module"]).rel_update
    differs = against_base.rel_update != against_b
    assert set(differs[differs].index.get_level_values("module")) == {"q_proj", "up_proj"}

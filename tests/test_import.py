"""Imported runs (method import, issue 18): checkpoints that already exist, on the hub (one revision per checkpoint)
or in a local folder, enter the DAG where trained ones do, with no training job. The hub is a real HF cache layout
(refs/<revision> -> snapshots/<commit>) read offline."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, write_tiny_study
from scalpel import config as study_config
from scalpel import prefetch
from scalpel.model import imported
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")
REPO = "org/olmo-stages"


def _runs(**runs):
    cfg = {"runs": {"g": {"method": "grpo", "steps": 2, "checkpoints": 1}, **runs}}
    validate(cfg, schema=SCHEMA)
    return study_config.resolve_runs(cfg)


def test_hub_source_expands_a_revision_template_over_the_steps():
    runs = _runs(p={"method": "import", "source": {"repo": REPO, "revision": "v01.14-step-{step:09d}",
                                                   "steps": [29, 571]}})
    spec = runs["p"]
    assert spec["method"] == "import" and spec["checkpoint_steps"] == [29, 571] and spec["group"] == "p"
    assert spec["revisions"] == {29: "v01.14-step-000000029", 571: "v01.14-step-000000571"}
    assert spec["repos"] == {29: REPO, 571: REPO}
    listed = _runs(p={"method": "import", "source": {"repo": REPO, "revisions": ["main", "abc123"], "steps": [1, 2]}})
    assert listed["p"]["revisions"] == {1: "main", 2: "abc123"}


def test_a_stage_chain_takes_one_repo_per_step_at_main_by_default():
    stages = ["allenai/OLMo-2-1124-7B-SFT", "allenai/OLMo-2-1124-7B-DPO", "allenai/OLMo-2-1124-7B-Instruct"]
    spec = _runs(c={"method": "import", "source": {"repo": stages, "steps": [1, 2, 3]}})["c"]
    assert spec["repos"] == dict(zip([1, 2, 3], stages)) and spec["revisions"] == {1: "main", 2: "main", 3: "main"}
    pinned = _runs(c={"method": "import", "source": {"repo": stages[:2], "revisions": ["a" * 40, "b" * 40],
                                                     "steps": [1, 2]}})["c"]
    assert pinned["revisions"] == {1: "a" * 40, 2: "b" * 40}


def test_folder_source_has_one_subfolder_per_step_or_is_the_checkpoint():
    runs = _runs(a={"method": "import", "source": {"folder": "ckpts", "steps": [5, 10]}},
                 b={"method": "import", "source": {"folder": "ckpts", "subfolder": "checkpoint-{step}", "steps": [5]}},
                 c={"method": "import", "source": {"folder": "one", "subfolder": ".", "steps": [7]}})
    assert runs["a"]["folders"] == {5: "ckpts/step-5", 10: "ckpts/step-10"}
    assert runs["b"]["folders"] == {5: "ckpts/checkpoint-5"}
    assert runs["c"]["folders"] == {7: "one"}
    assert "g" in runs and runs["g"]["method"] == "grpo"


def test_a_checkpoint_imported_by_two_runs_is_evaluated_once():
    """One hub revision (as written) or one folder, with the same tasks, samples and template: the first run that
    imports it evaluates it; a final checkpoint against an intermediate one (other samples), another revision,
    another template or a trained run is evaluated on its own."""
    eval_cfg = {"tasks": {"math": ["m"], "facts": ["f"]}, "final_only": [], "samples": {"final": {"m": 4}}}
    cfg = {"eval": eval_cfg, "runs": {
        "g": {"method": "grpo", "steps": 2, "checkpoints": 1},
        "sft": {"method": "import", "source": {"repo": "o/sft", "steps": [1]}},
        "dpo": {"method": "import", "reference": "sft", "source": {"repo": "o/dpo", "steps": [1]}},
        "dpo_vs_base": {"method": "import", "source": {"repo": "o/dpo", "steps": [1]}},
        "dpo_pinned": {"method": "import", "source": {"repo": "o/dpo", "revision": "a" * 40, "steps": [1]}},
        "dpo_study": {"method": "import", "chat_template": "study", "source": {"repo": "o/dpo", "steps": [1]}},
        "chain": {"method": "import", "source": {"repo": ["o/sft", "o/dpo"], "steps": [1, 2]}},
        "saved": {"method": "import", "source": {"folder": "ckpts", "steps": [5, 10]}},
        "last": {"method": "import", "source": {"folder": "ckpts", "subfolder": "step-10", "steps": [20]}},
        "middle": {"method": "import", "source": {"folder": "ckpts", "subfolder": "step-5", "steps": [5]}}}}
    validate(cfg, schema=SCHEMA)
    shared = study_config.shared_evaluations(cfg, study_config.resolve_runs(cfg))
    # chain's step 1 (o/sft, intermediate: 1 sample of m) is not sft's (final: 4); its final o/dpo is dpo's
    assert shared == {("dpo_vs_base", 1): ("dpo", 1), ("chain", 2): ("dpo", 1), ("last", 20): ("saved", 10)}
    eval_cfg["samples"] = {}  # the same samples everywhere: intermediate and final checkpoints of one folder alike
    shared = study_config.shared_evaluations(cfg, study_config.resolve_runs(cfg))
    assert shared[("chain", 1)] == ("sft", 1) and shared[("middle", 5)] == ("saved", 5)


def test_a_shared_evaluation_is_the_first_relabelled_with_its_items_and_its_source(tmp_path):
    import pandas as pd
    from scalpel.eval import shared

    first = tmp_path / "dpo/step-1.tsv"
    first.parent.mkdir()
    pd.DataFrame({"run": ["dpo", "dpo"], "step": [1, 1], "task": ["m", "f"], "metric": ["pass@1", "acc"],
                  "value": [0.25, 0.5], "stderr": [0.1, 0.2]}).to_csv(first, sep="\t", index=False)
    (tmp_path / "dpo/step-1.items.tsv").write_text("task\tmetric\titem\tvalue\nm\tpass@1\t0\t0.25\n")
    out = tmp_path / "dpo_vs_base/step-1.tsv"
    out.parent.mkdir()
    shared.share(first, out, "dpo_vs_base", 1)
    table = pd.read_csv(out, sep="\t")
    assert list(table.run) == ["dpo_vs_base"] * 2 and list(table.value) == [0.25, 0.5] and list(table.step) == [1, 1]
    assert (tmp_path / "dpo_vs_base/step-1.items.tsv").read_text() == (tmp_path / "dpo/step-1.items.tsv").read_text()
    assert json.loads(out.with_suffix(".shared.json").read_text()) == {"run": "dpo", "step": 1, "table": str(first)}


def test_each_run_has_a_reference_the_base_by_default_or_another_run():
    runs = _runs(p={"method": "import", "reference": "g", "source": {"folder": "f", "steps": [1]}},
                 q={"method": "sft", "steps": 2, "checkpoints": 1, "reference": "p"})
    assert (runs["g"]["reference"], runs["p"]["reference"], runs["q"]["reference"]) == ("base", "g", "p")
    for ref, message in (("nope", "runs.p.reference: no run named 'nope'"), ("p", "runs.p.reference: itself")):
        with pytest.raises(study_config.ConfigError, match=re.escape(message)):
            _runs(p={"method": "import", "reference": ref, "source": {"folder": "f", "steps": [1]}})


@pytest.mark.parametrize("run, message", [
    ({"method": "import", "steps": 3, "source": {"folder": "f", "steps": [1]}}, "runs.p.steps: a run with method"),
    ({"method": "import", "args": {"seed": 1}, "source": {"folder": "f", "steps": [1]}}, "runs.p.args"),
    ({"method": "import"}, "runs.p.source is required"),
    ({"method": "import", "source": {"repo": REPO, "folder": "f", "steps": [1]}}, "give repo (a hub repository)"),
    ({"method": "import", "source": {"steps": [1]}}, "give repo (a hub repository)"),
    ({"method": "import", "source": {"folder": "f", "steps": [2, 1]}}, "runs.p.source.steps must increase"),
    ({"method": "import", "source": {"repo": REPO, "steps": [1, 2]}},
     "runs.p.source: a hub source of several steps in one repo needs revision"),
    ({"method": "import", "source": {"repo": [REPO], "steps": [1, 2]}}, "runs.p.source.repo: 1 repositories for 2"),
    ({"method": "import", "source": {"repo": REPO, "revision": "main", "steps": [1, 2]}},
     "runs.p.source.revision: 'main' names one revision for 2 steps"),
    ({"method": "import", "source": {"repo": REPO, "revision": "s{stp}", "steps": [1]}},
     "runs.p.source.revision: 's{stp}' is not a template"),
    ({"method": "import", "source": {"repo": REPO, "revisions": ["a"], "steps": [1, 2]}},
     "runs.p.source.revisions: 1 revisions for 2 steps"),
    ({"method": "import", "source": {"folder": "f", "revision": "main", "steps": [1]}},
     "runs.p.source.revision applies to a hub repo"),
    ({"method": "import", "source": {"folder": "f", "subfolder": ".", "steps": [1, 2]}},
     "runs.p.source.subfolder: '.' names one folder for 2 steps"),
    ({"method": "sft", "steps": 2, "checkpoints": 1, "source": {"folder": "f", "steps": [1]}},
     "runs.p.source: only a run with method: import"),
    ({"method": "sft", "steps": 2, "checkpoints": 1, "chat_template": "study"},
     "runs.p.chat_template: only a run with method: import"),
])
def test_import_errors_name_the_key(run, message):
    with pytest.raises(study_config.ConfigError) as err:
        _runs(p=run)
    assert message in str(err.value)


def test_schema_rejects_an_unknown_source_key_and_requires_steps():
    for source in ({"folder": "f", "steps": [1], "branch": "x"}, {"folder": "f"}):
        with pytest.raises(WorkflowError):
            validate({"runs": {"p": {"method": "import", "source": source}}}, schema=SCHEMA)


# ---- the hub: a real HF cache layout, read offline ----

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    write_tiny_study(folder)
    return folder / "base"


def _cache_revision(hf_home, repo_id, revision, commit, files_from=None, files=None):
    """One revision of a model repository in the HF cache's layout: refs/<revision> holds the commit, whose snapshot
    holds the files (here copied, where the hub links them to blobs/)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    if files_from is not None:
        shutil.copytree(files_from, snapshot)
    for name, text in (files or {}).items():
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(text)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


OFFLINE_JOB = """
import json, sys
from scalpel import prefetch
from scalpel.model import imported
imports, spec, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
result = {}
try:
    result["manifest"] = {"checkpoints": prefetch.fetch_checkpoints(imports)}
    result["provenance"] = imported.link_checkpoints(spec, result["manifest"], out)
except Exception as err:
    result["error"] = f"{type(err).__name__}: {err}"
print(json.dumps(result))
"""


def _offline(hf_home, imports, spec, out):
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "workflow"))
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", OFFLINE_JOB, json.dumps(imports), json.dumps(spec), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hub_cache(tiny, tmp_path_factory):
    """Two revisions of one repository (stage branches), a branch of pickled weights only, and a second repository
    standing in for a later stage."""
    hf_home = tmp_path_factory.mktemp("hf")
    commits = {"stage1-step-000000001": "1" * 40, "stage1-step-000000002": "2" * 40}
    for revision, commit in commits.items():
        _cache_revision(hf_home, REPO, revision, commit, files_from=tiny)
    _cache_revision(hf_home, REPO, "pickled", "3" * 40, files={"config.json": "{}", "pytorch_model.bin": "x"})
    _cache_revision(hf_home, "org/olmo-stage2", "main", "4" * 40, files_from=tiny)
    return {"home": hf_home, "commits": commits}


def _spec(repo, revisions):
    steps = sorted(revisions)
    return {"name": "p", "method": "import", "repos": dict.fromkeys(steps, repo), "revisions": revisions,
            "checkpoint_steps": steps}


def _imports(repo, revisions):
    return {"repos": dict.fromkeys(revisions, repo), "revisions": revisions}


def test_hub_revisions_resolve_to_commits_and_are_linked_by_commit(hub_cache, tmp_path):
    revisions = {1: "stage1-step-000000001", 2: "stage1-step-000000002"}
    imports = {"p": _imports(REPO, revisions), "q": _imports("org/olmo-stage2", {3: "main"})}
    result = _offline(hub_cache["home"], imports, _spec(REPO, revisions), tmp_path / "checkpoints")
    assert "error" not in result, result
    fetched = result["manifest"]["checkpoints"]
    assert {step: e["commit"] for step, e in fetched["p"]["steps"].items()} == {"1": "1" * 40, "2": "2" * 40}
    assert fetched["q"]["steps"]["3"]["commit"] == "4" * 40
    for step, commit in (("1", "1" * 40), ("2", "2" * 40)):
        assert result["provenance"][step]["commit"] == commit
        linked = tmp_path / "checkpoints" / f"step-{step}" / "model.safetensors"
        assert linked.is_symlink() and f"/snapshots/{commit}/" in os.readlink(linked)
    names = set(result["provenance"]["1"]["files"])
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names


def test_a_stage_chain_across_repositories_is_fetched_and_linked_one_repo_per_step(hub_cache, tmp_path):
    chain = {"name": "p", "method": "import", "repos": {1: REPO, 2: "org/olmo-stage2"},
             "revisions": {1: "stage1-step-000000002", 2: "main"}, "checkpoint_steps": [1, 2]}
    result = _offline(hub_cache["home"], {"p": {"repos": chain["repos"], "revisions": chain["revisions"]}}, chain,
                      tmp_path / "checkpoints")
    assert "error" not in result, result
    assert [(e["repo"], e["commit"]) for e in result["provenance"].values()] == [(REPO, "2" * 40),
                                                                                ("org/olmo-stage2", "4" * 40)]
    assert "models--org--olmo-stage2/snapshots/" in os.readlink(tmp_path / "checkpoints/step-2/model.safetensors")


def test_a_missing_revision_and_a_pickled_only_revision_name_repo_and_revision(hub_cache, tmp_path):
    missing = _offline(hub_cache["home"], {"p": _imports(REPO, {3: "stage1-step-000000003"})}, {}, tmp_path / "a")
    assert f"{REPO} at revision stage1-step-000000003: not in the HF cache" in missing["error"]
    pickled = _offline(hub_cache["home"], {"p": _imports(REPO, {1: "pickled"})}, {}, tmp_path / "b")
    assert f"{REPO} at revision pickled: no *.safetensors weights" in pickled["error"]


def test_a_moved_branch_is_still_read_at_the_recorded_commit(hub_cache, tmp_path):
    """Jobs read the commit prefetch recorded, not what the branch points to later; a commit not in the cache (or a
    manifest missing the revision) is an error naming them."""
    revisions = {1: "stage1-step-000000001"}
    manifest = {"checkpoints": {"p": {"steps": {"1": {"repo": REPO, "revision": revisions[1], "commit": "2" * 40}}}}}
    script = ("import json, sys; from scalpel.model import imported; "
              "print(json.dumps(imported.link_checkpoints(json.loads(sys.argv[1]), json.loads(sys.argv[2]), "
              "sys.argv[3])))")
    env = dict(os.environ, HF_HOME=str(hub_cache["home"]), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "workflow"))
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(_spec(REPO, revisions)), json.dumps(manifest),
                           str(tmp_path / "c")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["1"]["commit"] == "2" * 40
    with pytest.raises(FileNotFoundError, match="stage1-step-000000002 \\(step 2\\) is not in the prefetch manifest"):
        imported.link_checkpoints(_spec(REPO, {2: "stage1-step-000000002"}), manifest, tmp_path / "d")


def test_prefetch_args_list_the_hub_imports_only():
    cfg = {"runs": {"g": {"method": "grpo", "steps": 2, "checkpoints": 1},
                    "p": {"method": "import", "source": {"repo": REPO, "revision": "s-{step}", "steps": [1, 2]}},
                    "f": {"method": "import", "source": {"folder": "x", "steps": [1]}}}}
    validate(cfg, schema=SCHEMA)
    args = prefetch.command_args(cfg, "checkpoints")
    assert args[0] == "--checkpoints"
    assert json.loads(args[1]) == {"p": {"repos": {"1": REPO, "2": REPO}, "revisions": {"1": "s-1", "2": "s-2"}}}


# ---- a local folder ----

def test_folder_checkpoints_are_linked_and_a_pickled_only_folder_is_refused(tiny, tmp_path):
    shutil.copytree(tiny, tmp_path / "copy" / "step-1")
    (tmp_path / "copy" / "step-1" / "training_args.bin").write_text("pickle")
    spec = _runs(p={"method": "import", "source": {"folder": str(tmp_path / "copy"), "steps": [1]}})["p"]
    provenance = imported.link_checkpoints(spec, None, tmp_path / "out")
    linked = tmp_path / "out" / "step-1"
    assert (linked / "model.safetensors").resolve() == (tmp_path / "copy/step-1/model.safetensors").resolve()
    assert not (linked / "training_args.bin").exists()
    assert provenance["1"]["folder"] == str(tmp_path / "copy" / "step-1") and provenance["1"]["dtypes"] == ["F32"]
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_text("pickle")
    spec = _runs(p={"method": "import", "source": {"folder": str(tmp_path / "pickled"), "subfolder": ".",
                                                   "steps": [3]}})["p"]
    with pytest.raises(FileNotFoundError, match="run p step 3: no \\*.safetensors weights in .*pickled \\(only "
                                                "pickled weights, never read: pytorch_model.bin\\)"):
        imported.link_checkpoints(spec, None, tmp_path / "out2")


# ---- the DAG ----

def _dry_run(workdir, config, *args):
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "1", "-n", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _job_counts(stdout):
    table = stdout.split("Job stats:")[1].split("total")[0]
    return {line.split()[0]: int(line.split()[1]) for line in table.splitlines()[3:] if line.strip()}


def test_dry_run_plans_an_imported_run_beside_a_trained_one_with_no_training(tmp_path):
    for step in (1, 2):
        (tmp_path / "copy" / f"step-{step}").mkdir(parents=True)
    config = {"runs": {"grpo": {"method": "grpo", "steps": 2, "checkpoints": 1},
                       "copied": {"method": "import", "source": {"folder": "copy", "steps": [1, 2]}}}}
    proc = _dry_run(tmp_path, config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = _job_counts(proc.stdout)
    assert counts["import_checkpoints"] == 1 and counts["train_grpo"] == 1 and "train_sft" not in counts
    assert counts["evaluate"] == 4 and counts["diff"] == 3 and counts["kl"] == 3 and counts["weights_update"] == 3
    for path in ("results/eval/copied/step-1.tsv", "results/diff/copied/step-2.parquet",
                 "results/kl/copied/step-2.json", "results/weights/update/copied/step-1.parquet"):
        assert path in proc.stdout
    assert "copied  import" in proc.stderr  # the settings table


def test_a_run_with_another_runs_reference_is_compared_with_its_final_checkpoint(tmp_path):
    (tmp_path / "copy" / "step-1").mkdir(parents=True)
    config = {"runs": {"grpo": {"method": "grpo", "steps": 2, "checkpoints": 1},
                       "copied": {"method": "import", "reference": "grpo", "source": {"folder": "copy", "steps": [1]}}}}
    proc = _dry_run(tmp_path, config, "-p", "results/diff/copied/step-1.parquet", "results/kl/copied/step-1.json",
                    "results/diff/grpo/step-2.parquet")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shells = [line for line in proc.stdout.splitlines() if "scalpel weights update" in line or "scalpel kl" in line]
    assert len(shells) == 3
    for line in shells:
        against = "results/references/grpo" if "--run copied" in line else "results/models/base"
        assert f"--base {against} " in line, line
    counts = _job_counts(proc.stdout)
    assert counts["train_grpo"] == counts["reference_model"] == 1  # the reference's checkpoints are made first
    assert "results/references/grpo" in proc.stdout and "results/runs/grpo/checkpoints/step-2" in proc.stdout


def test_dry_run_of_a_hub_import_plans_its_prefetch_and_a_missing_folder_fails_the_plan(tmp_path):
    config = {"runs": {"stages": {"method": "import", "source": {"repo": REPO, "revision": "s-{step}", "steps": [1]}}}}
    proc = _dry_run(tmp_path, config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = _job_counts(proc.stdout)
    assert counts["prefetch"] == 1 and counts["import_checkpoints"] == 1 and not any(j.startswith("train_")
                                                                                     for j in counts)
    assert "results/prefetch/checkpoints.json" in proc.stdout
    config = {"runs": {"copied": {"method": "import", "source": {"folder": "nowhere", "steps": [1]}}}}
    proc = _dry_run(tmp_path, config)
    assert proc.returncode != 0 and "nowhere/step-1" in proc.stdout + proc.stderr


# ---- through the workflow: the imported checkpoints analysed as trained ones ----

@pytest.mark.integration
def test_imported_folder_checkpoints_are_diffed_against_the_base(tiny, tmp_path):
    """A folder of two checkpoints (one with q_proj moved, one stored in bfloat16) imported and run through
    import_checkpoints -> diff and weights_update with real Snakemake, on a local base; nothing is trained."""
    import pandas as pd
    from safetensors.torch import load_file, save_file

    base = load_file(tiny / "model.safetensors")
    moved = "model.layers.0.self_attn.q_proj.weight"
    for step, tensors in ((1, {**base, moved: base[moved] * 1.5}), (2, {k: v.bfloat16() for k, v in base.items()})):
        folder = tmp_path / "work" / "copy" / f"step-{step}"
        shutil.copytree(tiny, folder)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = {"model": {"base": str(tiny)}, "hub": {"cache": str(tmp_path / "hf")},
              "runs": {"copied": {"method": "import", "source": {"folder": "copy", "steps": [1, 2]}},
                       "again": {"method": "import", "reference": "copied",
                                 "source": {"folder": "copy", "steps": [1]}}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    targets = ["results/diff/copied/step-1.parquet", "results/diff/copied/step-2.parquet",
               "results/weights/update/copied/step-1.parquet", "results/diff/again/step-1.parquet"]
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(tmp_path / "work"), "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", *targets]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    work = tmp_path / "work"
    assert not (work / "results/runs/copied/state").exists() and "train_" not in proc.stderr
    provenance = json.loads((work / "results/runs/copied/import.json").read_text())
    assert provenance["steps"]["1"]["folder"] == str(work / "copy" / "step-1")
    assert (provenance["steps"]["1"]["dtypes"], provenance["steps"]["2"]["dtypes"]) == (["F32"], ["BF16"])
    log = (work / "logs/import_checkpoints/copied.log").read_text()
    assert "copied step 2 is stored in BF16, not the study's float32" in log and "step 1 is stored" not in log
    assert (work / "results/runs/copied/checkpoints/step-1/model.safetensors").is_symlink()
    first = pd.read_parquet(work / targets[0])
    q = first[(first["layer"] == 0) & (first["module"] == "q_proj")]["rel_update"].item()
    assert q == pytest.approx(0.5, rel=1e-4)
    assert first[(first["layer"] != 0) | (first["module"] != "q_proj")]["rel_update"].abs().max() == 0
    second = pd.read_parquet(work / targets[1])
    assert set(second["dtype"]) == {"bfloat16"}  # the float32 base compared cast to the checkpoint's bf16, and said
    assert second["rel_update"].abs().max() == 0
    # against copied's final checkpoint (the bf16 copy of the base), cast to this float32 checkpoint's dtype
    against = pd.read_parquet(work / targets[3])
    assert set(against["dtype"]) == {"float32"}
    assert against[(against["layer"] == 0) & (against["module"] == "q_proj")]["rel_update"].item() == \
        pytest.approx(0.5, rel=1e-2)
    assert 0 < against[against["module"] != "q_proj"]["rel_update"].max() < 1e-2  # bf16 rounding only


STAGES_7B = {"sft": "base", "dpo": "sft", "rlvr": "dpo", "dpo_vs_base": "base", "rlvr_vs_base": "base"}
STAGES_1B = {"sft": "base", "dpo": "sft", "rlvr1": "dpo", "instruct": "rlvr1", "dpo_vs_base": "base",
             "rlvr1_vs_base": "base", "instruct_vs_base": "base"}


@pytest.mark.parametrize("name, references, runs, checkpoints, evaluated", [
    ("olmo2-stages", STAGES_7B, dict.fromkeys(STAGES_7B, [1]), 5, 3),
    ("olmo2-1b-stages", STAGES_1B, dict.fromkeys(STAGES_1B, [1]), 7, 4),
    ("paper-published", None, {"grpo": [29 * k for k in range(1, 20)] + [571]}, 59, 59),
])
def test_published_checkpoint_configs_dry_run_with_no_training(name, references, runs, checkpoints, evaluated,
                                                                tmp_path):
    """Each stage against its parent and against the base: one diff and KL per (stage, reference), one evaluation
    per stage, shared by the runs that import it."""
    cfg = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
    validate(cfg, schema=SCHEMA)
    resolved = study_config.resolve_runs(cfg)
    assert all(spec["method"] == "import" for spec in resolved.values())
    for run, steps in runs.items():
        assert resolved[run]["checkpoint_steps"] == steps
    if references:
        assert {run: spec["reference"] for run, spec in resolved.items()} == references
    from scalpel import slurm_preview

    # as `snakemake -n -p --profile profiles/slurm --configfile config/<name>.yaml` plans it
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
               SLURM_ACCOUNT="acct", SLURM_PARTITION="cpu", SLURM_GPU_PARTITION="gpu")
    jobs = slurm_preview.dry_run_jobs(ROOT / "config" / f"{name}.yaml", ROOT / "profiles/slurm", tmp_path, env)
    counts = {}
    for job in jobs:
        counts[job["rule"]] = counts.get(job["rule"], 0) + 1
    assert not any(job.startswith("train_") for job in counts)
    assert counts["import_checkpoints"] == len(resolved) and counts["diff"] == counts["kl"] == checkpoints
    assert counts["evaluate"] == evaluated + 1 and counts["prefetch"] >= 1
    assert counts.get("shared_evaluation", 0) == checkpoints - evaluated
    assert all(job["local"] for job in jobs if job["rule"] == "shared_evaluation")  # no sbatch job to copy a table
    assert all(job["resources"].get("gpu") for job in jobs if job["rule"] == "evaluate")


@pytest.mark.integration
def test_a_trained_runs_checkpoints_imported_from_a_folder_give_identical_results(tmp_path):
    """The done-when of issue 18 in small: a trained SFT run's checkpoint copied to a folder and imported as a second
    run is evaluated, diffed, KL-measured and weight-analysed exactly as the trained one."""
    import pandas as pd

    smoke = yaml.safe_load((ROOT / "tests/smoke/config.yaml").read_text())
    config = {**smoke, "runs": {"sft": {"method": "sft", "steps": 2, "checkpoints": 1}},
              "eval": {**smoke["eval"], "tasks": {"knowledge": ["mini_facts"]}, "final_only": [], "samples": {},
                       "primary_metrics": {"mini_facts": "acc"}}}
    config["model"]["build"] = {**config["model"]["build"], "pretrain_steps": 10}
    work = tmp_path / "work"
    outputs = ["results/eval/{run}/step-2.tsv", "results/diff/{run}/step-2.parquet", "results/kl/{run}/step-2.json",
               "results/weights/update/{run}/step-2.parquet"]
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")

    def run(cfg, name):
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
               "--configfile", str(tmp_path / "config.yaml"), "--cores", "2", *[o.format(run=name) for o in outputs]]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        return proc

    run(config, "sft")
    shutil.copytree(work / "results/runs/sft/checkpoints", tmp_path / "copy")
    config["runs"]["copied"] = {"method": "import", "source": {"folder": str(tmp_path / "copy"), "steps": [2]}}
    proc = run(config, "copied")
    assert "train_sft" not in proc.stderr  # the trained run is not retrained by adding the imported one

    def same(a, b):
        return a.drop(columns="run").reset_index(drop=True).equals(b.drop(columns="run").reset_index(drop=True))

    evals = [tables_read(work / outputs[0].format(run=r)) for r in ("sft", "copied")]
    assert len(evals[0]) and same(*evals)
    for template in (outputs[1], outputs[3]):
        assert same(*[pd.read_parquet(work / template.format(run=r)) for r in ("sft", "copied")])
    kls = [json.loads((work / outputs[2].format(run=r)).read_text()) for r in ("sft", "copied")]
    paths = ("run", "checkpoint", "load_s", "seconds")  # the run's name, its checkpoint's path, the timings
    assert {k: v for k, v in kls[0].items() if k not in paths} == {k: v for k, v in kls[1].items() if k not in paths}
    assert kls[0]["mean_kl"] > 0


def tables_read(path):
    from scalpel.io import read_tsv

    return read_tsv(path)


def test_changing_a_reference_rewrites_no_run_spec(tmp_path):
    """The reference is no training setting: it stays out of spec.yaml, so changing it retrains and reimports
    nothing."""
    (tmp_path / "copy" / "step-1").mkdir(parents=True)
    config = {"runs": {"grpo": {"method": "grpo", "steps": 2, "checkpoints": 1},
                       "copied": {"method": "import", "reference": "grpo", "source": {"folder": "copy", "steps": [1]}}}}
    specs = ["results/runs/grpo/spec.yaml", "results/runs/copied/spec.yaml"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", *specs]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert all("reference" not in yaml.safe_load((tmp_path / s).read_text()) for s in specs)
    config["runs"]["copied"]["reference"] = "base"
    proc = _dry_run(tmp_path, config, *specs)
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]

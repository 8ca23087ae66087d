"""config/paper.yaml against the authors' recipes (Neelectric/open-r1_olmo@2ea0f68: recipes/), so that no
hyperparameter drifts silently.

Each row: where the value lives in the resolved run spec or config, the authors' value, and ours when it differs on
purpose; a deliberate difference must be explained by a comment on its line (or the line above) in paper.yaml.
"""
import copy
import re

import pytest
import yaml
from conftest import ROOT
from scalpel import config as study_config
from scalpel.train import params
from snakemake.utils import validate

PAPER = ROOT / "config/paper.yaml"
SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")
SAME = object()


@pytest.fixture(scope="module")
def paper():
    cfg = yaml.safe_load(PAPER.read_text())
    validate(cfg, schema=SCHEMA)  # fills the schema's defaults, as the workflow does
    return cfg


@pytest.fixture(scope="module")
def runs(paper):
    return study_config.resolve_runs(paper)


GRPO_STEPS = [29 * k for k in range(1, 20)] + [571]
SFT_STEPS = [24 * k for k in range(1, 20)] + [462]

# (run or None for the config, dotted key, authors' value, ours when different on purpose)
AUTHORS = [
    (None, "model.base", "allenai/OLMo-2-1124-7B-Instruct", SAME),
    (None, "model.dtype", "bfloat16", SAME),
    (None, "seed", 42, SAME),
    (None, "data.openr1.dataset", "open-r1/OpenR1-Math-220k", SAME),
    (None, "data.openr1.config", "extended", SAME),
    (None, "data.openr1.source_filter", "cn_k12", SAME),
    (None, "data.openr1.max_prompt_tokens", 512, SAME),
    (None, "data.openr1.max_sft_tokens", 4096, SAME),
    (None, "data.openr1.math500", "HuggingFaceH4/MATH-500", SAME),
    ("grpo", "method", "grpo", SAME),
    ("grpo", "steps", 571, SAME),
    ("grpo", "checkpoint_steps", GRPO_STEPS, SAME),
    ("grpo", "global_batch_size", 448, SAME),
    ("grpo", "seed", 42, SAME),
    ("grpo", "args.learning_rate", 1e-6, SAME),
    ("grpo", "args.lr_scheduler_type", "constant_with_warmup", SAME),
    ("grpo", "args.warmup_steps", 0.1, SAME),
    ("grpo", "args.optim", "adamw_torch", SAME),
    ("grpo", "args.max_grad_norm", 0.2, SAME),
    ("grpo", "args.beta", 0.0, SAME),
    ("grpo", "args.epsilon", 0.2, SAME),
    ("grpo", "args.num_iterations", 1, SAME),
    ("grpo", "args.loss_type", "dr_grpo", SAME),
    ("grpo", "args.scale_rewards", "none", SAME),
    ("grpo", "args.reward_weights", [1.0, 0.2], SAME),
    ("grpo", "args.num_generations", 28, SAME),
    ("grpo", "args.per_device_train_batch_size", 16, SAME),
    ("grpo", "args.max_completion_length", 1500, SAME),
    ("grpo", "args.mask_truncated_completions", True, SAME),
    ("grpo", "args.temperature", 0.6, SAME),
    ("grpo", "args.vllm_importance_sampling_correction", False, SAME),
    ("grpo", "args.disable_dropout", True, SAME),
    ("grpo", "args.bf16", True, SAME),
    ("grpo", "args.gradient_checkpointing", True, SAME),
    ("sft", "method", "sft", SAME),
    ("sft", "steps", 462, SAME),
    ("sft", "checkpoint_steps", SFT_STEPS, SAME),
    ("sft", "global_batch_size", 448, SAME),
    ("sft", "args.learning_rate", 5e-5, SAME),
    ("sft", "args.lr_scheduler_type", "constant_with_warmup", SAME),
    ("sft", "args.warmup_steps", 0.1, SAME),
    ("sft", "args.optim", "adamw_torch", SAME),
    ("sft", "args.max_grad_norm", 0.2, SAME),
    ("sft", "args.max_length", 4096, SAME),
    ("sft", "args.packing", False, SAME),
    ("sft", "args.padding_free", True, False),
    ("sft", "args.completion_only_loss", False, SAME),
    ("sft", "args.bf16", True, SAME),
    ("sft", "args.gradient_checkpointing", True, SAME),
    ("sft_1epoch", "steps", 154, SAME),  # 462 / 3 (618 batches / 4 accumulation); 152 is its last save before 154
    ("sft_1epoch", "args.learning_rate", 5e-5, SAME),
    ("sft_matched_lr", "steps", 571, SAME),
    ("sft_matched_lr", "args.learning_rate", 1e-6, SAME),
    ("sft_frozen_mid_mlp", "steps", 462, SAME),
    ("sft_frozen_mid_mlp", "args.learning_rate", 5e-5, SAME),
    ("sft_qk_only", "steps", 462, SAME),
    ("sft_qk_only", "args.learning_rate", 5e-5, SAME),
    (None, "eval.generation.temperature", 0.6, SAME),
    (None, "eval.generation.top_p", 0.95, SAME),
    (None, "eval.generation.do_sample", True, SAME),
    (None, "eval.generation.max_gen_toks", 4096, SAME),
    (None, "eval.model_args.max_model_len", 4096, SAME),
    (None, "eval.fewshot_as_multiturn.leaderboard_mmlu_pro", False, SAME),  # lm-eval 0.4.8's single-turn few-shot
    (None, "launch.deepspeed.enabled", True, SAME),
    (None, "launch.deepspeed.zero_stage", 2, 3),
    (None, "launch.vllm.enabled", True, SAME),
    (None, "launch.vllm.mode", "server", "colocate"),
    (None, "launch.vllm.gpu_memory_utilization", 0.7, 0.3),
]


def _get(obj, dotted):
    for key in dotted.split("."):
        obj = obj[key]
    return obj


def _line_comment(run: str | None, key: str) -> str:
    """The comment on the paper.yaml line that sets `key` (its last component; within the block of `run` when
    given), or on the line above it."""
    leaf = key.split(".")[-1]
    lines = PAPER.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"  {run}:", line)) if run else 0
    for i, line in enumerate(lines[start:], start):
        if re.match(rf"\s*{leaf}:", line) or re.search(rf"[{{,]\s*{leaf}:", line):
            comments = [c.split("#", 1)[1] for c in (line, lines[i - 1]) if "#" in c]
            if comments:
                return " ".join(comments)
    return ""


@pytest.mark.parametrize("run, key, authors, ours", AUTHORS, ids=lambda v: v if isinstance(v, str) else None)
def test_paper_config_matches_the_authors(paper, runs, run, key, authors, ours):
    value = _get(paper if run is None else runs[run], key)
    expected = authors if ours is SAME else ours
    assert value == pytest.approx(expected) if isinstance(expected, float) else value == expected, (run, key)
    if ours is not SAME:
        assert len(_line_comment(run, key)) > 20, f"paper.yaml differs from the authors on {key} without saying why"


def test_paper_runs_are_the_authors_runs(runs):
    assert set(runs) == {"grpo", "sft", "sft_1epoch", "sft_matched_lr", "sft_frozen_mid_mlp", "sft_qk_only"}


# allenai/OLMo-2-1124-7B-Instruct config.json (the same values as allenai/OLMo-2-1124-7B's).
OLMO2_7B = dict(vocab_size=100352, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-6,
                tie_word_embeddings=False, attention_bias=False, pad_token_id=100277, eos_token_id=100257,
                bos_token_id=None)


@pytest.fixture(scope="module")
def olmo2_7b():
    """OLMo-2-1124-7B's real module tree on the meta device: its parameter names and shapes, no weights."""
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    with torch.device("meta"):
        return Olmo2ForCausalLM(Olmo2Config(**OLMO2_7B))


def test_the_7b_layout(olmo2_7b):
    names = [n for n, _ in olmo2_7b.named_parameters()]
    assert len(names) == 32 * 11 + 3 and "lm_head.weight" in names  # untied: a parameter of its own
    assert sum(p.numel() for p in olmo2_7b.parameters()) == 7_298_617_344


def test_frozen_mlp_run_freezes_the_authors_tensors(runs, olmo2_7b):
    params.apply_trainable(olmo2_7b, runs["sft_frozen_mid_mlp"].get("freeze"), None, "runs.sft_frozen_mid_mlp")
    frozen = {n for n, p in olmo2_7b.named_parameters() if not p.requires_grad}
    assert frozen == {f"model.layers.{i}.mlp.{m}.weight" for i in range(19, 26)
                      for m in ("gate_proj", "up_proj", "down_proj")}


def test_qk_run_trains_q_k_and_the_output_head_as_the_authors(runs, olmo2_7b):
    """open-r1_olmo sft.py (2ea0f68): everything under model.model frozen, then its q_proj/k_proj tensors unfrozen;
    lm_head, outside model.model, keeps requires_grad."""
    spec = runs["sft_qk_only"]
    params.apply_trainable(olmo2_7b, spec.get("freeze"), spec.get("train_only"), "runs.sft_qk_only")
    trained = {n for n, p in olmo2_7b.named_parameters() if p.requires_grad}
    assert trained == {f"model.layers.{i}.self_attn.{m}.weight" for i in range(32)
                       for m in ("q_proj", "k_proj")} | {"lm_head.weight"}
    summary = params.trainable_summary(olmo2_7b).splitlines()
    # q/k: 64 x 4096^2 = 1,073,741,824; lm_head: 100352 x 4096 = 411,041,792
    assert summary[0] == ("trainable: 65 of 355 parameter tensors, 1,484,783,616 of 7,298,617,344 parameters "
                          "(20.34%)")
    assert "  lm_head.weight (100352, 4096)" in summary and len(summary) == 1 + 65


@pytest.mark.parametrize("run", ["grpo", "sft", "sft_1epoch", "sft_matched_lr", "sft_frozen_mid_mlp", "sft_qk_only"])
def test_trl_accepts_every_run(runs, run, tmp_path, monkeypatch):
    """The real GRPOConfig / SFTConfig take each run's arguments, with the batch derived for one 8-GPU node."""
    from scalpel.train import trainer as train
    from trl import GRPOConfig, SFTConfig

    monkeypatch.setenv("WORLD_SIZE", "8")
    spec = copy.deepcopy(runs[run])
    args = train.trainer_args(spec, tmp_path)
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] * 8 == 448
    monkeypatch.delenv("WORLD_SIZE")  # accelerate would otherwise expect the other 7 processes
    args.update(use_cpu=True, bf16=False)  # this machine has no GPU; the rest is as on the cluster
    cfg = (GRPOConfig if spec["method"] == "grpo" else SFTConfig)(**args)
    assert cfg.max_steps == spec["steps"] and cfg.learning_rate == spec["args"]["learning_rate"]
    assert getattr(cfg, "use_vllm", False) == (spec["method"] == "grpo")


# The authors' benchmarks -> lm-eval tasks and their few-shot counts (lighteval task strings of the authors'
# evaluation scripts, Neelectric/open-r1_olmo@2ea0f68; arXiv 2507.10616, section 4).
AUTHORS_SHOTS = {"paper_aime24": 0, "paper_math500": 0, "paper_gsm8k": 5, "paper_gpqa_diamond": 0, "paper_mmlu": 5,
                 "leaderboard_mmlu_pro": 5, "paper_ifeval": 0}


def _task_config(manager, task: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(manager.task_index[task].yaml_path, resolve_func=False)


def _manager():
    """lm-eval's task index as evaluate and prefetch search it (the shipped paper tasks included)."""
    from lm_eval.tasks import TaskManager
    from scalpel.eval.evaluate import task_paths

    return TaskManager(include_path=task_paths(None))


def test_eval_tasks_exist_in_lm_eval_with_the_authors_shots(paper):
    manager = _manager()
    tasks = [t for suite in paper["eval"]["tasks"].values() for t in suite]
    assert sorted(tasks) == sorted(AUTHORS_SHOTS)
    for task in tasks:
        cfg = _task_config(manager, task)
        default = cfg.get("num_fewshot", 0)
        assert paper["eval"]["num_fewshot"].get(task, default) == AUTHORS_SHOTS[task], task


def test_primary_metrics_are_metrics_the_tasks_report(paper):
    manager = _manager()
    for task, metric in paper["eval"]["primary_metrics"].items():
        cfg = _task_config(manager, task)
        names = [m["metric"] for m in cfg.get("metric_list", []) + cfg.get("aggregate_metric_list", [])]
        filters = [f["name"] for f in cfg.get("filter_list") or []]
        name, _, filt = metric.partition(",")
        assert name in names, (task, metric, names)
        assert (filt in filters) if filt else not filters, (task, metric, filters)


def test_intermediate_checkpoints_run_the_cheaper_subset(paper):
    assert study_config.eval_suites(paper, final=False) == ["math"]
    assert paper["eval"]["tasks"]["math"] == ["paper_aime24", "paper_math500"]
    assert study_config.eval_suites(paper, final=True) == list(paper["eval"]["tasks"])


MINUTES = {"h": 60, "m": 1}


def _minutes(value) -> int:
    if isinstance(value, int):
        return value
    return int(value[:-1]) * MINUTES[value[-1]]


@pytest.fixture(scope="module")
def paper_dag(tmp_path_factory):
    """The paper-scale DAG as `snakemake -n -p --profile profiles/slurm` plans it, job by job, in an empty folder."""
    import os

    from scalpel import slurm_preview

    env = dict(os.environ, SLURM_ACCOUNT="acct", SLURM_PARTITION="cpu", SLURM_GPU_PARTITION="gpu")
    return slurm_preview.dry_run_jobs(PAPER, ROOT / "profiles/slurm", tmp_path_factory.mktemp("paper"), env)


def test_paper_dag_has_every_run_checkpoint_and_benchmark(paper_dag):
    counts = {}
    for job in paper_dag:
        counts[job["rule"]] = counts.get(job["rule"], 0) + 1
    checkpoints = 6 * 20
    assert counts == {"prefetch": 3, "base_model": 1, "data": 1, "launch_files": 1, "run_spec": 6, "train_grpo": 1,
                      "train_sft": 5, "evaluate": 1 + checkpoints, "diff": checkpoints, "kl": checkpoints,
                      "analysis_spec": 1, "tables": 1, "plots": 1, "all": 1, "weights_update": checkpoints,
                      "weights_spectral": 6, "weights_align": 5, "weight_tables": 1, "weight_plots": 1,
                      "forgetting": 1, "findings": 1, "reference_check": 1, "throughput": 1}
    evals = [j["shell"] for j in paper_dag if j["rule"] == "evaluate"]
    every = "paper_aime24,paper_math500,paper_gsm8k,paper_gpqa_diamond,paper_mmlu,leaderboard_mmlu_pro,paper_ifeval"
    assert sum(f"--tasks {every} " in s for s in evals) == 1 + 6  # the base and each run's final checkpoint
    assert sum("--tasks paper_aime24,paper_math500 " in s for s in evals) == checkpoints - 6
    assert all("--backend vllm" in s and '"temperature": 0.6' in s for s in evals)
    assert all(""" --fewshot-as-multiturn '{"leaderboard_mmlu_pro": false}' """ in s for s in evals)
    trains = [j["shell"] for j in paper_dag if j["rule"].startswith("train_")]
    assert all("accelerate launch" in s and "--num_processes 8" in s for s in trains)


def test_paper_dag_diffs_compare_in_the_checkpoints_dtype(paper_dag):
    """diff takes the update pass's sums: each pair is read once, by weights_update, in the checkpoint's dtype."""
    diffs = [j["shell"] for j in paper_dag if j["rule"] == "diff"]
    updates = [j["shell"] for j in paper_dag if j["rule"] == "weights_update"]
    assert len(diffs) == len(updates) == 6 * 20 and all(" --dtype-mismatch cast " in s for s in updates)
    assert all(" diff --update results/weights/update/" in s and "--checkpoint" not in s for s in diffs)


def test_paper_dag_weight_analyses(paper_dag):
    """Sparsity for every checkpoint; SVDs on each run's final checkpoint only, at k 16 and 64; GRPO against each
    SFT run."""
    spectral = [j["shell"] for j in paper_dag if j["rule"] == "weights_spectral"]
    assert sum(s.count("--checkpoint ") for s in spectral) == 6 and all("--ks 16 64 " in s for s in spectral)
    assert any("--checkpoint 571=results/runs/grpo/checkpoints/step-571 " in s for s in spectral)
    aligns = sorted(j["shell"].split("--out ")[1].split()[0] for j in paper_dag if j["rule"] == "weights_align")
    assert aligns == [f"results/weights/align/grpo_vs_{run}.parquet" for run in
                      ("sft", "sft_1epoch", "sft_frozen_mid_mlp", "sft_matched_lr", "sft_qk_only")]


def test_paper_dag_jobs_get_the_profile_resources(paper_dag):
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    env = {"$SLURM_ACCOUNT": "acct", "$SLURM_PARTITION": "cpu", "$SLURM_GPU_PARTITION": "gpu"}
    checked = set()
    for job in paper_dag:
        if job["rule"] == "all" or not job["resources"]:
            continue
        wanted = {**profile["default-resources"], **profile["set-resources"].get(job["rule"], {})}
        for key, value in wanted.items():
            value = env.get(value, value)
            got = job["resources"][key]
            assert (int(got) == _minutes(value)) if key == "runtime" else got == str(value), (job["rule"], key)
        checked.add(job["rule"])
    gpu_rules = {r for r, res in profile["set-resources"].items() if "gpu" in res}
    assert gpu_rules == {"train_grpo", "train_sft", "evaluate", "kl"} and gpu_rules <= checked
    assert {"data", "diff", "prefetch", "weights_update", "weights_spectral", "weights_align"} <= checked


def test_report_maps_every_authors_model_and_benchmark(paper):
    authors = yaml.safe_load((ROOT / "workflow/report/authors.yaml").read_text())
    mapping = paper["report"]["authors"]
    models = {m for per_model in authors["scores"].values() for m in per_model}
    assert set(mapping["runs"].values()) == models
    assert set(mapping["runs"]) - {"base"} == set(paper["runs"])
    assert set(mapping["benchmarks"]) == set(authors["scores"])
    tasks = {t for suite in paper["eval"]["tasks"].values() for t in suite}
    for benchmark, target in mapping["benchmarks"].items():
        task, metric = target.split(",", 1)
        assert task in tasks, benchmark
        assert metric == paper["eval"]["primary_metrics"][task] or benchmark == "IFEval (inst, strict)", benchmark


def test_dry_run_settings_show_what_the_gpus_depend_on(paper, runs):
    text = study_config.settings_table(paper, runs)
    assert "dtype bfloat16" in text and "DeepSpeed ZeRO-3" in text and "vLLM colocate at 0.3" in text
    row = next(line.split() for line in text.splitlines() if line.startswith("sft_matched_lr"))
    assert row == ["sft_matched_lr", "sft", "571", "20", "1e-06", "448", "16", "True", "True", "-"]


def test_sbatch_lines_of_the_paper_dag(paper_dag):
    """The plugin's own sbatch builder on the dry run's resources: what the cluster would be asked for."""
    from scalpel import slurm_preview

    lines = {job["rule"]: slurm_preview.sbatch_line(job["resources"], job["threads"])
             for job in paper_dag if not job["local"] and job["rule"] != "all"}
    assert lines["train_grpo"].startswith("-A 'acct' -p 'gpu' -t 2880 --mem 512000")
    assert "--gpus=8" in lines["train_sft"] and "--cpus-per-gpu=8" in lines["train_sft"]
    assert "--signal=TERM@900" in lines["train_grpo"]
    assert lines["evaluate"].endswith("--cpus-per-gpu=8 --gpus=1") and "--gpus=1" in lines["kl"]
    assert "-p 'cpu'" in lines["weights_update"] and "gpu" not in lines["weights_update"]
    assert lines["data"].endswith("--cpus-per-task=16")  # the profile's threads reach Slurm, not capped locally
    trains = [j["shell"] for j in paper_dag if j["rule"].startswith("train_")]
    assert all(s.startswith("OMP_NUM_THREADS=8 accelerate launch") for s in trains)  # 64 threads / 8 processes
    assert lines["weights_spectral"] == "-A 'acct' -p 'cpu' -t 240 --mem 8000 --ntasks=1 --cpus-per-task=4"
    assert lines["weights_update"] == "-A 'acct' -p 'cpu' -t 20 --mem 1500 --ntasks=1 --cpus-per-task=2"
    assert {j["rule"] for j in paper_dag if j["local"]} == {"run_spec", "launch_files", "prefetch", "analysis_spec",
                                                              "diff", "tables", "plots", "weight_tables",
                                                              "weight_plots", "forgetting", "findings", "throughput",
                                                              "reference_check"}


def test_vllm_server_mode_gives_one_gpu_to_vllm_as_the_authors_ran(tmp_path):
    import os

    from scalpel import slurm_preview

    cfg = yaml.safe_load(PAPER.read_text())
    cfg["launch"]["vllm"].update(mode="server", gpu_memory_utilization=0.7)
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, SLURM_ACCOUNT="acct", SLURM_PARTITION="cpu", SLURM_GPU_PARTITION="gpu")
    jobs = slurm_preview.dry_run_jobs(tmp_path / "server.yaml", ROOT / "profiles/slurm", tmp_path / "wd", env)
    grpo = next(j["shell"] for j in jobs if j["rule"] == "train_grpo")
    serve, train = grpo.split(" -- ")
    assert "python -m scalpel vllm-server --model results/models/base --gpu-memory-utilization 0.7" in serve
    assert train.startswith("accelerate launch") and "--num_processes 7 " in train  # 8 GPUs: 7 train, 1 serves
    assert all("--num_processes 8 " in j["shell"] and "vllm-server" not in j["shell"]
               for j in jobs if j["rule"] == "train_sft")


SMOKE_OVERLAY = ROOT / "config/paper-smoke.yaml"
SLURM_ENV = {"SLURM_ACCOUNT": "acct", "SLURM_PARTITION": "cpu", "SLURM_GPU_PARTITION": "gpu"}


@pytest.fixture(scope="module")
def smoke_dag(tmp_path_factory):
    """`snakemake -n -p --profile profiles/slurm --configfile config/paper.yaml config/paper-smoke.yaml`."""
    import os

    from scalpel import slurm_preview

    return slurm_preview.dry_run_jobs([PAPER, SMOKE_OVERLAY], ROOT / "profiles/slurm",
                                      tmp_path_factory.mktemp("smoke"), dict(os.environ, **SLURM_ENV))


def _by_rule(dag) -> dict[str, dict]:
    return {job["rule"]: job for job in dag}


def test_smoke_overlay_plans_the_paper_rules_with_the_same_resources(paper_dag, smoke_dag):
    paper, smoke = _by_rule(paper_dag), _by_rule(smoke_dag)
    assert set(smoke) == set(paper)
    for rule, job in paper.items():
        assert smoke[rule]["resources"] == job["resources"], rule  # gpu, cpus_per_gpu, mem_mb, partition, runtime
        assert smoke[rule]["threads"] == job["threads"] and smoke[rule]["local"] == job["local"], rule
    gpu_rules = {rule for rule, job in smoke.items() if "gpu" in job["resources"]}
    assert gpu_rules == {"train_grpo", "train_sft", "evaluate", "kl"}


def test_smoke_overlay_has_one_checkpoint_per_run_and_every_benchmark(smoke_dag):
    counts = {}
    for job in smoke_dag:
        counts[job["rule"]] = counts.get(job["rule"], 0) + 1
    assert counts == {"prefetch": 3, "base_model": 1, "data": 1, "launch_files": 1, "run_spec": 6, "train_grpo": 1,
                      "train_sft": 5, "evaluate": 1 + 6, "diff": 6, "kl": 6, "analysis_spec": 1, "tables": 1,
                      "plots": 1, "all": 1, "weights_update": 6, "weights_spectral": 6, "weights_align": 5,
                      "weight_tables": 1, "weight_plots": 1, "forgetting": 1, "findings": 1, "reference_check": 1,
                      "throughput": 1}
    every = "paper_aime24,paper_math500,paper_gsm8k,paper_gpqa_diamond,paper_mmlu,leaderboard_mmlu_pro,paper_ifeval"
    evals = [j["shell"] for j in smoke_dag if j["rule"] == "evaluate"]
    assert all(f"--tasks {every} " in s and "--backend vllm" in s and " --limit 4 " in s for s in evals)
    assert all('"paper_aime24": 16' in s for s in evals)  # every evaluated model is a final one: 16 samples
    assert all(" --limit 8 " in j["shell"] for j in smoke_dag if j["rule"] == "kl")
    trains = [j["shell"] for j in smoke_dag if j["rule"].startswith("train_")]
    assert all(s.startswith("OMP_NUM_THREADS=8 accelerate launch") and "--num_processes 8" in s for s in trains)


def test_smoke_overlay_runs_the_same_conda_envs(tmp_path):
    import os

    from scalpel import slurm_preview

    env = dict(os.environ, **SLURM_ENV)
    paper = slurm_preview.rule_envs([PAPER], tmp_path / "paper", env)
    smoke = slurm_preview.rule_envs([PAPER, SMOKE_OVERLAY], tmp_path / "smoke", env)
    assert smoke == paper and paper["train_grpo"] == "../../envs/train.yaml"
    assert paper["evaluate"] == "../../envs/eval.yaml" and paper["data"] == "../../envs/data.yaml"


def test_smoke_overlay_shrinks_only_counts(paper):
    """The merged config (Snakemake's update_config, as `--configfile a b` merges) differs from the paper's only in
    steps, checkpoints, the batch per step and the item limits; every TRL argument and launch setting is the same."""
    from snakemake.utils import update_config

    merged = copy.deepcopy(yaml.safe_load(PAPER.read_text()))
    update_config(merged, yaml.safe_load(SMOKE_OVERLAY.read_text()))
    validate(merged, schema=SCHEMA)
    smoke, full = study_config.resolve_runs(merged), study_config.resolve_runs(paper)
    assert set(smoke) == set(full)
    for name, spec in smoke.items():
        assert spec["checkpoint_steps"] == [2] and spec["global_batch_size"] == 112, name
        assert spec["args"] == full[name]["args"] and spec.get("freeze") == full[name].get("freeze"), name
        assert spec.get("train_only") == full[name].get("train_only"), name
    # 112 keeps the paper's micro-batch on 8 processes (14 each, 448 = 14 x 4 accumulation) and on 7 (server mode)
    for processes, per_device in ((8, 14), (7, 16)):
        assert study_config.micro_batches(112, processes, 16, 28) == (per_device, 1)
        assert study_config.micro_batches(448, processes, 16, 28) == (per_device, 4)
    for key in ("model", "data", "launch", "hub", "diff", "weights", "report"):
        assert merged[key] == paper[key], key
    assert {k: v for k, v in merged["eval"].items() if k != "limit"} == {k: v for k, v in paper["eval"].items()
                                                                          if k != "limit"}
    assert (merged["eval"]["limit"], merged["kl"]["limit"]) == (4, 8)

"""The RL's Razor study (config/razor.yaml, docs/razor-claims.md) as planned: enough runs to resample, not run here."""
import subprocess
import sys

import yaml
from conftest import ROOT
from scalpel import config as study_config
from scalpel.slurm_preview import deployment_args, parse_jobs
from snakemake.utils import validate

RAZOR = ROOT / "config/razor.yaml"


def test_razor_dry_run_plans_at_least_20_final_checkpoints(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(ROOT / "Snakefile"), "--configfile",
         str(RAZOR), "--directory", str(tmp_path), *deployment_args()],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = {}
    for job in parse_jobs(out.stdout + out.stderr):
        counts[job["rule"]] = counts.get(job["rule"], 0) + 1
    trains = counts["train_grpo"] + counts["train_sft"]
    assert (counts["train_grpo"], counts["train_sft"]) == (9, 12)
    # One checkpoint per run, the final one: every diff and KL is a final checkpoint, a point of the regression.
    assert counts["diff"] == counts["kl"] == trains == 21 >= 20
    assert counts["evaluate"] == 1 + trains and counts["forgetting"] == 1
    # A swept study draws its sweeps (the plots rule's extra output), which a study without sweeps lacks.
    assert "results/figures/sweeps.png" in out.stdout


def test_razor_runs_spread_learning_rate_and_length():
    cfg = yaml.safe_load(RAZOR.read_text())
    validate(cfg, schema=str(ROOT / "workflow/schemas/config.schema.yaml"))
    runs = study_config.resolve_runs(cfg)
    assert len(runs) == 21 and all(len(spec["checkpoint_steps"]) == 1 for spec in runs.values())
    for method in ("grpo", "sft"):
        swept = [spec["swept"] for spec in runs.values() if spec["method"] == method]
        assert len({s["learning_rate"] for s in swept}) >= 3 and {s["steps"] for s in swept} == {20, 40, 80}

"""The workflow on a real Slurm cluster through profiles/slurm-test, and a dry run of profiles/slurm.

The `slurm` tests are skipped unless `sinfo` reaches a cluster; start the local one with
`.ci/slurm/start-local-slurm.sh` (as root). Every Snakemake run is bounded by `timeout -s KILL`:
a stuck Slurm executor ignores SIGTERM.
"""
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from scalpel import slurm_preview

SMOKE = ROOT / "tests/smoke/config.yaml"
TEST_PROFILE = ROOT / "profiles/slurm-test"


@pytest.fixture(scope="session")
def cluster():
    # `scontrol ping` fails at once where sinfo retries for seconds when slurmctld is down.
    for probe in (["scontrol", "ping"], ["sinfo", "-h"]):
        try:
            if subprocess.run(probe, capture_output=True, timeout=30).returncode != 0:
                pytest.skip("no Slurm cluster (.ci/slurm/start-local-slurm.sh)")
        except (OSError, subprocess.TimeoutExpired):
            pytest.skip("no Slurm cluster (.ci/slurm/start-local-slurm.sh)")


def snakemake(workdir: Path, *args: str, bound: int,
              env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Snakemake in workdir, killed after `bound` seconds; returns the process and its wall time."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {}))
    cmd = ["timeout", "-s", "KILL", str(bound), sys.executable, "-m", "snakemake", "--directory", str(workdir), *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode == 137:
        cancel_jobs_of(workdir)
    (workdir / "snakemake.log").write_text(proc.stdout + proc.stderr)
    return proc, time.monotonic() - start


def cancel_jobs_of(workdir: Path) -> None:
    """A killed Snakemake leaves its Slurm jobs behind."""
    queue = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True).stdout.split("\n")
    jobs = [line.split()[0] for line in queue if line.split()[1:] == [str(workdir)]]
    if jobs:
        subprocess.run(["scancel", *jobs])


def job_counts(output: str) -> Counter:
    """Jobs per rule from the first 'Job stats' table Snakemake prints."""
    lines = output.split("Job stats:", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    return Counter({rule: int(n) for rule, n in (line.split() for line in lines) if rule != "total"})


def planned_resources(output: str) -> dict[str, dict]:
    """Resources of each rule's (last) job in Snakemake's job listing."""
    return {job["rule"]: job["resources"] for job in slurm_preview.parse_jobs(output) if job["resources"]}


def expected_resources(rule: str) -> dict:
    profile = yaml.safe_load((TEST_PROFILE / "config.yaml").read_text())
    return {**profile["default-resources"], **profile["set-resources"].get(rule, {})}


def timelimit(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


@pytest.fixture(scope="module")
def study(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc, _ = snakemake(workdir, "--snakefile", str(ROOT / "Snakefile"), "--profile", str(TEST_PROFILE),
                        "--configfile", str(SMOKE), "--verbose", bound=1800)
    return workdir, proc, started


def sacct(*args: str) -> list[dict]:
    fields = ["JobID", "WorkDir", "Comment", "State", "Account", "Partition", "AllocTRES", "ReqMem", "Timelimit"]
    out = subprocess.run(["sacct", "--parsable2", "--noheader", "--allusers", f"--format={','.join(fields)}", *args],
                         capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines()]


@pytest.mark.slurm
@pytest.mark.integration
def test_smoke_study_completes_on_slurm(study):
    workdir, proc, _ = study
    assert proc.returncode == 0, f"rc {proc.returncode} (137: killed at the bound):\n{proc.stderr[-5000:]}"
    assert (workdir / "results/tables/summary.tsv").is_file()
    assert (workdir / "results/figures/scores_final.png").is_file()


@pytest.mark.slurm
@pytest.mark.integration
def test_every_rule_job_is_a_slurm_job_with_its_profile_resources(study):
    workdir, proc, started = study
    assert proc.returncode == 0
    out = proc.stdout + proc.stderr
    local = set(re.findall(r"^localrule (\w+):", out, re.MULTILINE))
    assert {"all", "tables", "plots"} <= local
    jobs = [job for job in sacct("-X", "--starttime", started) if job["WorkDir"] == str(workdir)]
    rules = Counter(job["Comment"].removeprefix("rule_").split("_wildcards_")[0] for job in jobs)
    assert rules == Counter({rule: n for rule, n in job_counts(out).items() if rule not in local})
    assert {"train_grpo", "train_sft", "evaluate", "data", "weights_update"} <= set(rules)
    for job in jobs:
        rule = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        want = expected_resources(rule)
        assert job["State"] == "COMPLETED", job
        assert (job["Account"], job["Partition"]) == (want["slurm_account"], want["slurm_partition"]), job
        assert job["ReqMem"] == f"{want['mem_mb']}M", job
        assert job["Timelimit"] == timelimit(want["runtime"]), job
        tres = dict(item.split("=") for item in job["AllocTRES"].split(","))
        assert tres.get("gres/gpu") == (str(want["gpu"]) if "gpu" in want else None), job
        if "gpu" in want:
            # The rule runs in a job step; it must get every GPU of the job (snakemake-executor-plugin-slurm#459).
            steps = sacct("-j", job["JobID"])
            assert any(step["JobID"] == f"{job['JobID']}.0" and f"gres/gpu={want['gpu']}" in step["AllocTRES"]
                       for step in steps), steps


@pytest.mark.slurm
def test_a_failing_job_fails_the_run_without_hanging(cluster, tmp_path):
    (tmp_path / "Snakefile").write_text('rule fail:\n    output: "never.txt"\n    shell: "exit 3"\n')
    proc, seconds = snakemake(tmp_path, "--snakefile", str(tmp_path / "Snakefile"), "--profile", str(TEST_PROFILE),
                              "never.txt", bound=300)
    assert proc.returncode == 1, f"rc {proc.returncode} after {seconds:.0f} s:\n{proc.stderr[-3000:]}"
    assert "SLURM status is: 'FAILED'" in proc.stdout + proc.stderr
    assert seconds < 120


def test_slurm_profile_dry_run_takes_account_and_partitions_from_the_environment(tmp_path):
    env = {"SLURM_ACCOUNT": "acct-x", "SLURM_PARTITION": "cpu-x", "SLURM_GPU_PARTITION": "gpu-x"}
    common = ["-n", "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(SMOKE)]
    proc, _ = snakemake(tmp_path, *common, "--profile", str(ROOT / "profiles/slurm"), *slurm_preview.deployment_args(),
                        bound=300,
                       env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    plain, _ = snakemake(tmp_path, *common, bound=300)
    assert job_counts(out) == job_counts(plain.stdout + plain.stderr)
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())["set-resources"]
    planned = planned_resources(out)
    for rule, resources in planned.items():
        gpu_rule = "gpu" in profile.get(rule, {})
        assert resources["slurm_account"] == "acct-x", rule
        assert resources["slurm_partition"] == ("gpu-x" if gpu_rule else "cpu-x"), rule
        assert ("gpu" in resources) == gpu_rule, rule
    assert {"train_grpo", "train_sft", "evaluate"} <= {rule for rule in planned if "gpu" in profile.get(rule, {})}
    assert planned["train_grpo"]["gpu"] == "8" and planned["train_grpo"]["runtime"] == str(48 * 60)

"""What a Slurm profile would submit for a config, without submitting: one sbatch line per rule.

`python -m scalpel slurm-preview --configfile config/paper.yaml --profile profiles/slurm` plans the DAG with
`snakemake -n -p` (in an empty folder, so that every job is planned) and builds each rule's sbatch call with the
snakemake-executor-plugin-slurm's own functions from the resources the dry run reports; the `--wrap`/`--job-name`
parts, which depend on the submission, are left out.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]


def deployment_args() -> list[str]:
    """Without conda, a profile's conda deployment fails at once; environment modules stand in (no rule uses any)."""
    return ["--sdm", "env-modules"] if shutil.which("conda") is None else []


def dry_run_jobs(configfile, profile, workdir, env=None) -> list[dict]:
    """Every job of the dry run of `configfile` (a path, or a list merged in order, as `--configfile a b` does) with
    `profile`, run in `workdir` (see `parse_jobs`)."""
    files = [str(f) for f in configfile] if isinstance(configfile, (list, tuple)) else [str(configfile)]
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(ROOT / "Snakefile"), "--configfile",
         *files, "--profile", str(profile), "--directory", str(workdir), *deployment_args()],
        env=env, capture_output=True, text=True, timeout=300,
    )
    if out.returncode:
        raise RuntimeError(f"snakemake -n failed:\n{out.stderr[-3000:]}")
    return parse_jobs(out.stdout + out.stderr)


def rule_envs(configfiles, workdir, env=None) -> dict[str, str | None]:
    """rule -> its conda env file as the workflow of `configfiles` declares it (a rule's env may depend on the config:
    the data and model rules). Snakemake's `--list-conda-envs` needs conda itself, so the workflow is loaded through
    its API, in a child process (the Snakefile sets environment variables)."""
    code = ("import json, sys; from scalpel.slurm_preview import _print_envs; "
            "_print_envs(sys.argv[1], sys.argv[2:])")
    out = subprocess.run([sys.executable, "-c", code, str(workdir), *map(str, configfiles)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=ROOT / "workflow")
    if out.returncode:
        raise RuntimeError(f"loading the workflow failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def _print_envs(workdir: str, configfiles: list[str]) -> None:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(), storage_settings=StorageSettings(),
                                config_settings=ConfigSettings(configfiles=[Path(f) for f in configfiles]),
                                snakefile=ROOT / "Snakefile", workdir=Path(workdir))
        print(json.dumps({rule.name: rule.conda_env for rule in workflow._workflow.rules}))


def parse_jobs(output: str) -> list[dict]:
    """Snakemake's job listing (`-n`, with `-p` for the shell commands) as one dict per job: rule, whether it is a
    local rule, shell command, threads and resources (as printed)."""
    local = local_rules()
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        resources = re.search(r"resources: (.*)", block)
        shell = re.search(r"Shell command: (.*)", block)
        threads = re.search(r"threads: (\d+)", block)
        jobs.append({"rule": rule, "local": rule in local, "shell": shell.group(1) if shell else "",
                     "threads": int(threads.group(1)) if threads else 1,
                     "resources": dict(kv.split("=", 1) for kv in resources.group(1).split(", ")) if resources else {}})
    return jobs


def local_rules() -> set[str]:
    """Rules declared `localrule: True` in workflow/rules (the dry run does not mark them)."""
    found = set()
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        chunks = re.split(r"^\s*rule (\w+):$", smk.read_text(), flags=re.M)
        for name, body in zip(chunks[1::2], chunks[2::2]):
            if "localrule: True" in body:
                found.add(name)
    return found


class _Resources(dict):
    def __getattr__(self, name):
        return self[name]


def sbatch_line(resources: dict, threads: int = 1) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    res = _Resources({k: int(v) if v.isdigit() else v for k, v in resources.items() if v != "<TBD>"})
    job = SimpleNamespace(resources=res, threads=threads)
    params = {"run_uuid": "JOB", "slurm_logfile": "LOG", "comment_str": "RULE", "workdir": None,
              "account": f"-A '{res['slurm_account']}'", "partition": f"-p '{res['slurm_partition']}'"}
    line = get_submit_command(job, params) + set_gres_string(job)
    return line.split("--comment RULE ", 1)[1]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("slurm-preview", help="the sbatch line of every rule of a study, without a cluster",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--configfile", required=True)
    p.add_argument("--profile", default=str(ROOT / "profiles/slurm"))
    p.set_defaults(func=main)


def main(a) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        jobs = dry_run_jobs(Path(a.configfile).resolve(), Path(a.profile).resolve(), workdir, dict(os.environ))
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["rule"]] = counts.get(job["rule"], 0) + 1
    seen = set()
    for job in jobs:
        if job["rule"] in seen or job["rule"] == "all":
            continue
        seen.add(job["rule"])
        where = "local (no sbatch)" if job["local"] else sbatch_line(job["resources"], job["threads"])
        print(f"{job['rule']} x{counts[job['rule']]}: {where}")

"""Every rule's conda env pins exactly the versions CI installs and tests (pyproject.toml), and the GPU envs resolve."""
import json
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[\w,\-]+\])?==([^\s;]+)$")


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = PIN.match(line.strip())
        assert m, f"not an exact pin: {line!r}"
        pins[m.group(1).lower().replace("_", "-")] = (m.group(2) or "") + "==" + m.group(3)
    return pins


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TESTED = _pins(PROJECT["dependencies"] + PROJECT["optional-dependencies"]["gpu"])
ENVS = sorted((ROOT / "envs").glob("*.yaml"))


def _env_pip(env) -> list[str]:
    deps = yaml.safe_load(env.read_text())["dependencies"]
    return next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)


def test_every_rule_has_an_env_that_exists():
    rules = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    used = set(re.findall(r'conda:\s*"\.\./\.\./envs/([\w-]+\.yaml)"', rules))
    assert used == {p.name for p in ENVS}


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_match_the_tested_versions(env):
    pins = _pins(_env_pip(env))
    assert pins, env
    wrong = {name: (version, TESTED.get(name)) for name, version in pins.items() if TESTED.get(name) != version}
    assert not wrong, f"{env.name}: pinned vs tested {wrong}"


def test_gpu_envs_carry_vllm_and_cpu_envs_do_not():
    with_vllm = {env.name for env in ENVS if "vllm" in _pins(_env_pip(env))}
    assert with_vllm == {"train.yaml", "eval.yaml"}


def test_every_env_that_grades_maths_has_the_antlr_runtime_its_parser_was_generated_for():
    """math-verify parses LaTeX through latex2sympy2_extended, whose parser for antlr4 4.11 fails on percentages;
    lm-eval's `math` extra would pin that runtime (tests/test_rewards.py checks the installed one)."""
    grading = {env.name: _pins(_env_pip(env)) for env in ENVS if "math-verify" in _pins(_env_pip(env))}
    assert set(grading) == {"data.yaml", "train.yaml", "eval.yaml"}
    for name, pins in grading.items():
        assert pins["antlr4-python3-runtime"] == "==4.13.2", name
        assert pins["latex2sympy2-extended"] == "[antlr4-13-2]==1.11.0", name
    assert TESTED["lm-eval"] == "[ifeval]==0.4.13"


@pytest.mark.integration
@pytest.mark.parametrize("env", ["train.yaml", "eval.yaml"])
def test_gpu_env_resolves_against_pypi(env, tmp_path):
    """pip's resolver (metadata only, nothing installed) accepts the env as pinned: vllm, TRL, torch, transformers
    and lm-eval constrain each other, and a pin that breaks the set fails here rather than on the cluster."""
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
         str(report), *_env_pip(ROOT / "envs" / env)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    for name, pin in _pins(_env_pip(ROOT / "envs" / env)).items():
        assert chosen[name].split("+")[0] == pin.split("==")[1], (name, chosen[name], pin)


def test_report_commands_import_only_what_the_report_env_installs():
    """The report rules' commands run in envs/report.yaml, which has no torch, transformers, lm-eval or safetensors:
    importing them must not pull those in (a ModuleNotFoundError there would only show under --use-conda)."""
    report_env = {name.split("[")[0].lower() for name in _pins(_env_pip(ROOT / "envs/report.yaml"))}
    heavy = [m for m in ("torch", "transformers", "lm_eval", "safetensors") if m.replace("_", "-") not in report_env]
    rules = (ROOT / "workflow/rules/report.smk").read_text()
    commands = sorted(set(re.findall(r"python -m scalpel ([a-z-]+)", rules)))
    assert {"tables", "plots", "weight-tables", "weight-plots", "forgetting"} <= set(commands)
    from scalpel.cli import COMMANDS

    modules = [f"scalpel.{COMMANDS[c]}" for c in commands]
    code = f"import sys, importlib; [importlib.import_module(m) for m in {modules}]; print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT / "workflow").stdout
    assert [m for m in heavy if f"'{m}'" in loaded] == []

"""Every rule's conda env pins exactly the versions CI installs and tests (pyproject.toml)."""
import re
import tomllib

import pytest
import yaml

from conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = PIN.match(line.strip())
        assert m, f"not an exact pin: {line!r}"
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


TESTED = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
ENVS = sorted((ROOT / "envs").glob("*.yaml"))


def test_every_rule_has_an_env_that_exists():
    rules = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    used = set(re.findall(r'conda:\s*"\.\./\.\./envs/([\w-]+\.yaml)"', rules))
    assert used == {p.name for p in ENVS}


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_match_the_tested_versions(env):
    deps = yaml.safe_load(env.read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    pins = _pins(pip)
    assert pins, env
    wrong = {name: (version, TESTED.get(name)) for name, version in pins.items() if TESTED.get(name) != version}
    assert not wrong, f"{env.name}: pinned vs tested {wrong}"

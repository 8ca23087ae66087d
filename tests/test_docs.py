"""The docs match the code: every rule in the README's rule table, every config key in config/README.md, and no
citation of files a user does not have."""
import re
import subprocess

import yaml
from conftest import ROOT


def _is_section(node: dict) -> bool:
    named = node.get("additionalProperties")
    return "properties" in node or (isinstance(named, dict) and "properties" in named)


def schema_keys(node: dict, prefix: str = "") -> list[str]:
    """Dotted paths of every setting the schema declares (not the sections that group them; runs.<name>.* as
    runs.X.*)."""
    keys = []
    for name, sub in node.get("properties", {}).items():
        keys += schema_keys(sub, f"{prefix}{name}.") if _is_section(sub) else [prefix + name]
    for sub in [*node.get("patternProperties", {}).values(), node.get("additionalProperties")]:
        if isinstance(sub, dict) and _is_section(sub):
            keys += schema_keys(sub, f"{prefix}X.")
    return keys


def documented(key: str, rows: list[str]) -> bool:
    """`a.b.c` in a row of the table, or `c` (or `.c`) in the row of its parent `a.b` (`a.b.*`)."""
    key = key.replace("runs.X.", "runs.<name>.")
    parent, _, leaf = key.rpartition(".")
    return any(f"`{key}`" in row or (f"`{parent}" in row.split("|")[1] and (f"`{leaf}`" in row or f"`.{leaf}`" in row))
               for row in rows)


def test_every_config_key_is_documented():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    rows = [line for line in (ROOT / "config/README.md").read_text().splitlines() if line.startswith("| `")]
    keys = schema_keys(schema)
    assert "data.synthetic.pretrain_worked_fraction" in keys and len(keys) > 50
    assert not documented("data.synthetic.no_such_key", rows)
    missing = [key for key in keys if not documented(key, rows)]
    assert not missing, f"config/README.md does not document: {missing}"


def test_every_rule_is_in_the_readme():
    rules = set()
    for smk in [ROOT / "Snakefile", *(ROOT / "workflow/rules").glob("*.smk")]:
        rules |= {a or b for a, b in re.findall(r"^\s*(?:rule (\w+):|use rule \w+ as (\w+))", smk.read_text(), re.M)}
    assert {"kl", "prefetch", "train_grpo", "train_sft", "all"} <= rules
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| rule | what it does | output |"):]
    table = table[: table.index("\n\n")]
    assert not [rule for rule in rules if f"`{rule}`" not in table]


def test_no_citation_of_files_outside_the_repository():
    pattern = "(shared/|research/)[A-Za-z_-]+" + r"\.md"
    found = subprocess.run(["git", "grep", "-n", "-E", pattern, "--", "."], cwd=ROOT,
                           capture_output=True, text=True).stdout
    assert found == "", found


def test_the_readme_layout_names_every_sub_package_and_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n## ")]
    package = ROOT / "workflow/scalpel"
    stages = sorted(p.name for p in package.iterdir() if (p / "__init__.py").exists())
    assert len(stages) == 7
    modules = {p.stem for p in package.rglob("*.py") if p.stem != "__init__"} | {"lm_eval_tasks"}
    unnamed = [name for name in stages + sorted(modules) if not re.search(rf"\b{name}\b", layout)]
    assert unnamed == []

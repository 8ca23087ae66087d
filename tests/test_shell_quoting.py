"""Every config value that reaches a shell line is quoted by Snakemake (`{params.x:q}`): a stop string with quotes
and a data folder with a space reach the command as they are in the config."""
import json
import shlex

import yaml
from conftest import ROOT
from scalpel import slurm_preview

SMOKE = ROOT / "tests/smoke/config.yaml"
STOPS = ["it's", 'say "done"', "$(touch pwned)"]


def _argument(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_quotes_in_config_values_reach_the_commands_intact(tmp_path):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["eval"]["generation"] = {"until": STOPS, "max_gen_toks": 8}
    reference = tmp_path / "my data/it's.jsonl"
    reference.parent.mkdir()
    reference.write_text(json.dumps({"prompt": [{"role": "user", "content": "1+1"}], "completion": "2"}) + "\n")
    cfg["kl"] = {"reference": str(reference)}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    jobs = slurm_preview.dry_run_jobs(tmp_path / "config.yaml", ROOT / "profiles/local", tmp_path / "wd")
    shells = {job["rule"]: shlex.split(job["shell"]) for job in jobs if job["shell"]}

    evaluate = shells["evaluate"]
    assert json.loads(_argument(evaluate, "--gen-kwargs")) == {"until": STOPS, "max_gen_toks": 8}
    assert _argument(shells["kl"], "--reference") == str(reference)
    for rule, flag, given in [("data", "--synthetic", cfg["data"]["synthetic"]),
                              ("base_model", "--build", cfg["model"]["build"])]:
        received = json.loads(_argument(shells[rule], flag))  # the config's values, with the schema's defaults
        assert received | given == received, rule

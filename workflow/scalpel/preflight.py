"""Plan-time checks (the workflow's parse, so `snakemake -n` already fails) of what would otherwise fail only when a
training job starts: TRL argument names, and freeze/train_only patterns against the base model's parameter names.

Every `snakemake` invocation parses the workflow, so these checks stay cheap: the TRL argument names are recorded
in `train/trl_arguments.json` for the pinned TRL (importing TRL costs seconds; tests/test_preflight.py checks the
record against the installed TRL), and the miniature's parameter names come from its architecture, not from a
model built by transformers. Only a hub or local base model, once its config.json is here, loads transformers.
"""
from __future__ import annotations

import difflib
import json
from importlib.metadata import version
from pathlib import Path

from scalpel import hub
from scalpel.config import TRL_CLASSES, TRL_RECORD, ConfigError, installed_trl_arguments, trl_arguments
from scalpel.train import params


def record_trl_arguments(path: Path = TRL_RECORD) -> None:
    """Write the installed TRL's argument names (after a TRL upgrade: `python -c "from scalpel import preflight;
    preflight.record_trl_arguments()"`)."""
    names = {method: sorted(known) for method, known in installed_trl_arguments().items()}
    path.write_text(json.dumps({"trl": version("trl"), **names}, indent=0) + "\n")


def _unknown(args: dict, known: set[str], key: str, cls: str) -> list[str]:
    errors = []
    for name in args:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            errors.append(f"{key}.{name}: not a {cls} argument{hint}")
    return errors


def trl_argument_errors(config: dict, runs: dict[str, dict], known: dict[str, set[str]]) -> list[str]:
    """Each `train_defaults.<method>` key and each run's own `args` key that its method's TRL config lacks."""
    errors = []
    for method, args in (config.get("train_defaults") or {}).items():
        errors += _unknown(args, known[method], f"train_defaults.{method}", TRL_CLASSES[method])
    # Seeds and sweeps of a run share its method (sweep_of: the configured name; group: the name before the seed).
    methods = {spec.get("sweep_of") or spec.get("group", name): spec["method"] for name, spec in runs.items()}
    for name, run in config["runs"].items():
        method = methods[name]
        if method not in TRL_CLASSES:  # an imported run: not trained
            continue
        errors += _unknown(run.get("args") or {}, known[method], f"runs.{name}.args", TRL_CLASSES[method])
    return errors


def parameter_names(config: dict) -> tuple[list[str] | None, str]:
    """(the base model's parameter names, what it is), or (None, why they are not known yet).

    Built on the meta device (no weights) from the miniature's `model.build`, or from the config.json of a hub model
    in the HF cache (after prefetch) or of a local folder: the module tree training will load, tying included.
    """
    model = config["model"]
    if model["base"] == "build":
        return olmo2_parameter_names(model["build"]["num_hidden_layers"]), "the built OLMo-2 (model.build)"
    found = hub.cached_model_config(config)
    label = model["base"]
    if found is None:
        return None, f"{label} has no config.json in the HF cache yet (the prefetch rule fetches it)"
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        architecture = AutoConfig.from_pretrained(found.parent)
    except ValueError as err:  # an architecture this transformers does not know
        return None, f"{label}: its config.json ({found}) is not one transformers can build ({err})"
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(architecture)
    return [n for n, _ in net.named_parameters()], label


def olmo2_parameter_names(layers: int) -> list[str]:
    """Olmo2ForCausalLM's parameter names in order, untied head (transformers' models/olmo2/modeling_olmo2.py; the
    miniature's config, model.base.olmo2_config, unties it); tests/test_preflight.py compares them with a built one."""
    per_layer = [f"self_attn.{m}.weight" for m in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")]
    per_layer += [f"mlp.{m}_proj.weight" for m in ("gate", "up", "down")]
    per_layer += ["post_attention_layernorm.weight", "post_feedforward_layernorm.weight"]
    names = ["model.embed_tokens.weight"] + [f"model.layers.{i}.{n}" for i in range(layers) for n in per_layer]
    return names + ["model.norm.weight", "lm_head.weight"]


def pattern_errors(runs: dict[str, dict], names: list[str], label: str) -> list[str]:
    """Each run's freeze/train_only pattern that matches no parameter (params.trainable_names, as training uses)."""
    errors = []
    for name, spec in runs.items():
        try:
            params.trainable_names(names, spec.get("freeze"), spec.get("train_only"), f"runs.{name}", label)
        except ValueError as err:
            errors.append(str(err))
    return errors


def check(config: dict, runs: dict[str, dict]) -> list[str]:
    """Raise ConfigError listing every bad TRL argument and pattern; return notes for the dry run's log."""
    errors = trl_argument_errors(config, runs, trl_arguments())
    notes = []
    patterned = [name for name, spec in runs.items() if spec.get("freeze") or spec.get("train_only")]
    if patterned:
        names, label = parameter_names(config)
        if names is None:
            notes.append(f"freeze/train_only patterns of {', '.join(patterned)} not checked now: {label}; training "
                         "checks them when it starts")
        else:
            errors += pattern_errors({name: runs[name] for name in patterned}, names, label)
            notes.append(f"freeze/train_only patterns of {', '.join(patterned)} checked against the {len(names)} "
                         f"parameters of {label}")
    if errors:
        raise ConfigError("\n".join(errors))
    return notes

"""Plan-time checks (the workflow's parse, so `snakemake -n` already fails) of what would otherwise fail only when a
training job starts: TRL argument names, and freeze/train_only patterns against the base model's parameter names."""
from __future__ import annotations

import difflib
from dataclasses import fields

from scalpel import hub
from scalpel.train import params
from scalpel.config import ConfigError

TRL_CLASSES = {"grpo": "GRPOConfig", "sft": "SFTConfig"}


def trl_arguments() -> dict[str, set[str]]:
    """method -> the argument names its TRL config dataclass takes (read from its fields, nothing instantiated)."""
    import trl

    return {method: {f.name for f in fields(getattr(trl, cls)) if f.init} for method, cls in TRL_CLASSES.items()}


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
    methods = {spec.get("group", name): spec["method"] for name, spec in runs.items()}  # seeds share their run's
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
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model = config["model"]
    if model["base"] == "build":
        from scalpel.model.base import olmo2_config

        architecture = olmo2_config(model["build"], model["build"]["vocab_size"], 1, 0, 0)
        label = "the built OLMo-2 (model.build)"
    else:
        found = hub.cached_model_config(config)
        label = model["base"]
        if found is None:
            return None, f"{label} has no config.json in the HF cache yet (the prefetch rule fetches it)"
        try:
            architecture = AutoConfig.from_pretrained(found.parent)
        except ValueError as err:  # an architecture this transformers does not know
            return None, f"{label}: its config.json ({found}) is not one transformers can build ({err})"
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(architecture)
    return [n for n, _ in net.named_parameters()], label


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

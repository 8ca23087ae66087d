"""Where the study's model and datasets come from: a hub id, downloaded once by `prefetch` into the HF cache and then
read from that cache by every other job (offline), or a local folder standing in for it.

Hub ids resolve to a folder of the cache through `snapshot_download` with the same file patterns online (prefetch)
and offline (the jobs), so a job reads exactly the files prefetch fetched, and fails if one is missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from scalpel.config import ConfigError

# A model folder as transformers and safetensors read it; no pickled weights, no repository code.
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def is_local(source: str) -> bool:
    """A path that exists is a local copy (as transformers and datasets decide); anything else is a hub id."""
    return Path(source).exists()


def card_patterns(card_text: str, config: str | None, split: str, where: str) -> list[str] | None:
    """The data-file patterns a dataset card's `configs:` maps (config, split) to, or None when the card declares no
    configs (the hub then reads every data file). `config=None` picks the card's default config."""
    if not card_text.startswith("---"):
        return None
    meta = yaml.safe_load(card_text.split("---", 2)[1]) or {}
    configs = meta.get("configs")
    if not configs:
        return None
    by_name = {c.get("config_name", "default"): c for c in configs}
    if config is None:
        config = next((c.get("config_name", "default") for c in configs if c.get("default")), None) or \
            (next(iter(by_name)) if len(by_name) == 1 else "default")
    if config not in by_name:
        raise ValueError(f"{where}: no config {config!r} (configs: {', '.join(by_name)})")
    spec = by_name[config]["data_files"]
    if isinstance(spec, str):
        spec = [spec]
    if all(isinstance(x, str) for x in spec):
        return spec if split == "train" else []
    return [p for x in spec if x["split"] == split for p in ([x["path"]] if isinstance(x["path"], str) else x["path"])]


def model_snapshot(source: str, revision: str | None = None) -> Path:
    """The folder of a model: the local folder itself, or its snapshot in the HF cache (downloaded when online)."""
    if is_local(source):
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=revision, allow_patterns=MODEL_FILE_PATTERNS))


def checkpoint_snapshot(repo: str, revision: str, cached_only: bool = False) -> Path:
    """The snapshot of one revision (branch, tag or commit) of a hub repository holding checkpoints, downloaded with
    the model files only (no pickled weights, no code) when online, read from the HF cache offline or with
    `cached_only` (how jobs read a commit that prefetch recorded); an error naming the repository and revision when
    the revision is missing or holds no *.safetensors weights."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RevisionNotFoundError

    where = f"{repo} at revision {revision}"
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=MODEL_FILE_PATTERNS,
                                        local_files_only=cached_only))
    except RevisionNotFoundError as err:
        raise FileNotFoundError(f"{where}: no such revision on the hub ({err})") from None
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(f"{where}: not in the HF cache (run the prefetch rule with network) ({err})") from None
    except OfflineModeIsEnabled as err:  # a commit offline, without its cached file listing
        raise FileNotFoundError(f"{where}: not readable offline ({err})") from None
    if not any(f.name.endswith(".safetensors") for f in folder.iterdir() if f.is_file()):
        raise FileNotFoundError(f"{where}: no *.safetensors weights (pickled weights, *.bin or *.pt, are never read)")
    return folder


def weight_files(folder: Path, source: str) -> list[Path]:
    """The model's *.safetensors files (what training, diff and KL read); an error when there are none."""
    weights = sorted(f for f in Path(folder).iterdir() if f.is_file() and f.name.endswith(".safetensors"))
    if not weights:
        raise FileNotFoundError(f"model {source}: no *.safetensors weights in {folder}")
    return weights


def dataset_snapshot(source: str, config: str | None, split: str, revision: str | None = None) -> Path:
    """The folder (or file) of a dataset: the local path itself, or its snapshot in the HF cache holding the card and
    the files of one (config, split) only (OpenR1-Math-220k's `extended` is a third of the repository)."""
    if is_local(source):
        return Path(source)
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        card = Path(hf_hub_download(source, "README.md", repo_type="dataset", revision=revision)).read_text()
    except EntryNotFoundError:
        card = ""
    patterns = card_patterns(card, config, split, f"{source} (README.md)")
    allow = None if patterns is None else ["README.md", *patterns]
    return Path(snapshot_download(source, repo_type="dataset", revision=revision, allow_patterns=allow))


def commit_of(folder: Path) -> str | None:
    """The commit of a snapshot in the HF cache (`.../snapshots/<commit>`), None for a local folder."""
    parts = Path(folder).parts
    return parts[-1] if len(parts) > 1 and parts[-2] == "snapshots" else None


def default_hf_home(environ=os.environ) -> str:
    """HF_HOME as huggingface_hub resolves it, without importing it (the Snakemake process may not have it)."""
    return environ.get("HF_HOME") or os.path.join(environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                  "huggingface")


def hub_cache_dir(hub: dict, environ=os.environ) -> Path:
    """The hub cache (HF_HOME/hub) the jobs read: config `hub.cache`, else the environment's."""
    if hub["cache"]:
        return Path(os.path.abspath(os.path.expanduser(hub["cache"]))) / "hub"
    return Path(environ.get("HF_HUB_CACHE") or os.path.join(default_hf_home(environ), "hub"))


def cached_model_config(config: dict) -> Path | None:
    """config.json of model.base as the jobs will read it (the local folder, or the snapshot prefetch fetched into
    the HF cache); None while it is not there. Never goes online."""
    source = config["model"]["base"]
    if is_local(source):
        found = Path(source) / "config.json"
        return found if found.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, "config.json", cache_dir=hub_cache_dir(config["hub"]),
                                   revision=config["model"]["revision"])
    return Path(found) if isinstance(found, str) else None


def job_environment(hub: dict, environ=os.environ) -> dict[str, str]:
    """The variables every job of the workflow runs with (config `hub`): the HF cache, NLTK's data under it unless
    NLTK_DATA is already set, and, with `offline_jobs`, hub access switched off (the prefetch rule unsets those)."""
    env = {}
    if hub["cache"]:
        env["HF_HOME"] = os.path.abspath(os.path.expanduser(hub["cache"]))
    env["NLTK_DATA"] = environ.get("NLTK_DATA") or os.path.join(env.get("HF_HOME") or default_hf_home(environ),
                                                                "nltk_data")
    if hub["offline_jobs"]:
        env.update(dict.fromkeys(OFFLINE_VARS, "1"))
    return env


def describe_environment() -> str:
    """One log line: the HF cache a job reads and whether it may reach the hub (never a token)."""
    from huggingface_hub import constants

    flags = " ".join(f"{var}={os.environ.get(var, '')}" for var in OFFLINE_VARS)
    return f"hub: HF_HOME={constants.HF_HOME} offline={constants.HF_HUB_OFFLINE} ({flags})"


def check_config(config: dict) -> None:
    """Combinations of model, data and KL keys that the schema accepts but the study cannot run."""
    model, data = config["model"], config["data"]
    if model["base"] == "build":
        if data["source"] != "synthetic":
            raise ConfigError(f"data.source: {data['source']} needs a real base model (model.base: a hub id or a "
                              f"local HF folder); model.base: build pre-trains on the synthetic world")
        for key, neutral in (("revision", None), ("chat_template", "study")):
            if model[key] != neutral:
                raise ConfigError(f"model.{key}: {model[key]} applies to a hub or local model, not to model.base: "
                                  f"build (its tokenizer has the study's template)")
    elif model["revision"] is not None and is_local(model["base"]):
        raise ConfigError(f"model.revision: {model['revision']} is a hub revision, but model.base is the local "
                          f"folder {model['base']}")
    openr1 = data["openr1"]
    if openr1["revision"] is not None and is_local(openr1["dataset"]):
        raise ConfigError(f"data.openr1.revision: {openr1['revision']} is a hub revision, but data.openr1.dataset "
                          f"is the local path {openr1['dataset']}")
    if data["source"] == "openr1" and openr1["math500"] is None and config["kl"]["reference"] is None:
        raise ConfigError("kl.reference: null takes the KL reference set from data.openr1.math500, which is null; "
                          "set one of them")

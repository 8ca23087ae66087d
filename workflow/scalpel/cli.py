"""Every command the workflow's rules run: `python -m scalpel <command> ...`.

Each command lives in its module, which exposes `add_parser(subparsers)` (the command's arguments, with
`set_defaults(func=main)`) and `main(args)`; this file only lists the modules. A command imports its own module
only, so that a light command does not load torch or transformers.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command -> the module of the scalpel package that defines it (stage.module), in the order of the workflow
COMMANDS = {
    "prefetch": "prefetch",
    "data": "data.synthetic",
    "openr1": "data.openr1",
    "base-model": "model.base",
    "import-base": "model.base",
    "import-checkpoints": "model.imported",
    "launch": "train.launch",
    "vllm-server": "train.vllm_server",
    "train": "train.trainer",
    "publish": "train.publish",
    "evaluate": "eval.evaluate",
    "share-evaluation": "eval.shared",
    "diff": "analysis.diff",
    "kl": "analysis.kl",
    "weights": "analysis.weights",
    "reference-check": "analysis.reference",
    "tables": "report.tables",
    "plots": "report.plots",
    "claims": "report.claims",
    "weight-tables": "report.weight_tables",
    "weight-plots": "report.weight_plots",
    "forgetting": "report.forgetting",
    "findings": "report.findings",
    "throughput": "report.throughput",
    "slurm-preview": "slurm_preview",
}


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of `command` alone when it is known (its module only is imported), else of every command."""
    p = argparse.ArgumentParser(prog="scalpel", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values())
    for module in modules:
        importlib.import_module(f"scalpel.{module}").add_parser(sub)
    return p


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    args = parser(argv[0] if argv else None).parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

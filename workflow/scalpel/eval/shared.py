"""An evaluation shared by two runs that import one checkpoint (config.shared_evaluations): the first run's table
relabelled with the second's run and step, its per-item scores copied. lm-eval's own outputs (results, samples,
throughput) stay with the evaluation that made them, so nothing is counted twice."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd

from scalpel.eval.evaluate import items_path
from scalpel.io import atomic_output

log = logging.getLogger(__name__)


def share(table_tsv, out_tsv, run: str, step: int) -> pd.DataFrame:
    """Write `table_tsv`'s evaluation as run/step's, with the per-item scores beside it and a note of where both
    came from; the table last, atomically, as `evaluate` writes it."""
    table, out = pd.read_csv(table_tsv, sep="\t"), Path(out_tsv)
    source = {"run": str(table["run"].iloc[0]), "step": int(table["step"].iloc[0]), "table": str(table_tsv)}
    table["run"], table["step"] = run, step
    with atomic_output(items_path(out)) as tmp:
        shutil.copyfile(items_path(table_tsv), tmp)
    with atomic_output(out.with_suffix(".shared.json")) as tmp:
        tmp.write_text(json.dumps(source, indent=1) + "\n")
    with atomic_output(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    log.info("%s step %d: the evaluation of %s step %d", run, step, source["run"], source["step"])
    return table


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("share-evaluation", help="another run's evaluation of the same checkpoint, relabelled",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--table", required=True, help="the evaluation table (step-N.tsv, items beside it)")
    p.add_argument("--out", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--step", type=int, required=True)
    p.set_defaults(func=main)


def main(args) -> None:
    share(args.table, args.out, args.run, args.step)

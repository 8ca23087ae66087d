"""Every stage of the workflow as a command: `python -m scalpel <stage> ...` (the rules call exactly these)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path



def _data(a):
    from . import data, tasks
    counts = data.write_world(a.seed, json.loads(a.synthetic), a.outdir)
    names = tasks.write_tasks(a.outdir, a.task_dir, a.max_gen_toks)
    logging.info("rows written: %s; lm-eval tasks: %s", json.dumps(counts), ", ".join(names))


def _base_model(a):
    from . import model
    history = model.build_base(a.data, a.outdir, json.loads(a.build), a.seed)
    with open(a.log_history, "w") as fh:
        json.dump(history, fh, indent=1)


def _import_base(a):
    from . import hub, model
    logging.info(hub.describe_environment())
    model.import_base(a.source, a.outdir, a.revision, a.chat_template)


def _train(a):
    from . import train
    train.run(a.spec, a.base, a.data, a.state)


def _evaluate(a):
    from . import evaluate
    batch_size = a.batch_size if a.batch_size == "auto" else int(a.batch_size)
    table = evaluate.run(a.checkpoint, a.tasks.split(","), a.task_dir, a.out, run=a.run, step=a.step,
                         backend=a.backend, dtype=a.dtype, batch_size=batch_size, limit=a.limit, seed=a.seed,
                         device=a.device, gen_kwargs=json.loads(a.gen_kwargs), num_fewshot=json.loads(a.num_fewshot),
                         extra_model_args=json.loads(a.model_args),
                         chat_template=Path(a.chat_template).read_text() if a.chat_template else None,
                         fewshot_as_multiturn=json.loads(a.fewshot_as_multiturn))
    logging.info("\n%s", table.to_string(index=False))


def _forward(module_name):
    def call(a, rest):
        import importlib
        importlib.import_module(f"scalpel.{module_name}").main(rest)
    call.forwards = True
    return call


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scalpel", description=__doc__)
    sub = p.add_subparsers(dest="stage", required=True)

    s = sub.add_parser("data", help="generate the miniature world and its lm-eval tasks")
    s.add_argument("--synthetic", required=True, help="JSON of config data.synthetic")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--outdir", required=True)
    s.add_argument("--task-dir", required=True)
    s.add_argument("--max-gen-toks", type=int, default=96)
    s.set_defaults(func=_data)

    s = sub.add_parser("base-model", help="build and pre-train the miniature's tiny OLMo-2")
    s.add_argument("--build", required=True, help="JSON of config model.build")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data", required=True)
    s.add_argument("--outdir", required=True)
    s.add_argument("--log-history", required=True)
    s.set_defaults(func=_base_model)

    s = sub.add_parser("import-base", help="the base model from the hub (HF cache) or a local folder, weights linked")
    s.add_argument("--source", required=True, help="hub id or local HF model folder")
    s.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    s.add_argument("--chat-template", choices=["study", "model"], default="study")
    s.add_argument("--outdir", required=True)
    s.set_defaults(func=_import_base)

    s = sub.add_parser("train", help="one GRPO or SFT run from its resolved spec, into its state folder (then publish)")
    s.add_argument("--spec", required=True)
    s.add_argument("--base", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--state", required=True, help="trainer state, exported checkpoints and, once done, a stamp")
    s.set_defaults(func=_train)

    s = sub.add_parser("evaluate", help="lm-eval on one checkpoint, normalised to a tidy TSV")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    s.add_argument("--task-dir", default=None, help="folder of local task YAMLs (lm-eval include_path)")
    s.add_argument("--out", required=True)
    s.add_argument("--run", required=True)
    s.add_argument("--step", type=int, required=True)
    s.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    s.add_argument("--dtype", default="float32")
    s.add_argument("--device", default="cpu")
    s.add_argument("--batch-size", default="32", help="an integer, or auto")
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--gen-kwargs", default="{}", help="JSON of config eval.generation")
    s.add_argument("--num-fewshot", default="{}", help="JSON of config eval.num_fewshot (task -> shots)")
    s.add_argument("--model-args", default="{}", help="JSON of config eval.model_args")
    s.add_argument("--fewshot-as-multiturn", default="{}",
                   help="JSON of config eval.fewshot_as_multiturn (task -> examples as chat turns; default true)")
    s.add_argument("--chat-template", default=None,
                   help="a Jinja chat template file used instead of the checkpoint tokenizer's (eval.base_chat_template)")
    s.set_defaults(func=_evaluate)

    for name, module_name, help_ in [("diff", "diff", "relative update per layer x module vs the base"),
                                     ("tables", "tables", "aggregate evals and diffs into tables"),
                                     ("kl", "kl", "teacher-forced KL(base || checkpoint) on a reference set"),
                                     ("publish", "publish", "a finished training's checkpoints into the declared "
                                                            "outputs, then its state deleted"),
                                     ("openr1", "openr1", "the paper's data: OpenR1-Math cn_k12 for GRPO and SFT"),
                                     ("prefetch", "prefetch", "download the model, datasets and eval data into the "
                                                              "HF cache (needs network)"),
                                     ("plots", "plots", "the paper's figures from the tables")]:
        s = sub.add_parser(name, help=help_, add_help=False)  # its own parser reads the rest of the line
        s.set_defaults(func=_forward(module_name))
    return p


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = parser()
    args, rest = p.parse_known_args(argv)
    if getattr(args.func, "forwards", False):
        args.func(args, rest)
    elif rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    else:
        args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])

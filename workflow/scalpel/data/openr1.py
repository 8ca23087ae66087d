"""The paper-scale data: OpenR1-Math-220k (`extended`, cn_k12) as GRPO prompts and SFT conversations, and MATH-500
as the KL reference set. The rows have the miniature's format (`data.build_world`), so training is unchanged.

- GRPO: `{"prompt": [system, user(problem)], "solution": <worked solution>}` for every cn_k12 problem whose gold
  (the `solution` column, parsed as the accuracy reward parses it) is not empty and whose chat-templated prompt,
  with the generation prompt, is at most `max_prompt_tokens` long (TRL 1.16 has no max_prompt_length, so a
  longer prompt would reach generation whole). A row is counted under the first of these filters that drops it.
- SFT: the same cn_k12 problems' `messages` (user, assistant R1 trace) as `{"prompt": [system, user],
  "completion": [assistant]}`, kept when the whole chat-templated conversation is at most `max_sft_tokens` long.
  Only the length filter applies, as for the authors' `..._CN-K12_OLMo-2_4096toks` (69,132 of 91,449 rows).

Lengths are counted as the trainers see them: the tokenizer's chat template rendered to text (it carries bos), then
tokenized without added special tokens, as `apply_chat_template(tokenize=True)` does.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from scalpel.chat import SYSTEM_PROMPT, system_message
from scalpel.hub import card_patterns, dataset_snapshot, describe_environment
from scalpel.io import write_json, write_jsonl
from scalpel.tasks.rewards import parse_gold

log = logging.getLogger(__name__)

OPENR1_ID = "open-r1/OpenR1-Math-220k"
MATH500_ID = "HuggingFaceH4/MATH-500"
REQUIRED = ("problem", "solution", "source", "uuid", "messages")
MATH500_REQUIRED = ("problem", "solution")
COUNT_KEYS = ("rows_in", "after_source_filter", "gold_unparseable", "prompt_too_long", "sft_too_long", "grpo_rows",
              "sft_rows")
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
_TOKENIZE_CHUNK = 512


def _card_data_files(root: Path, config: str | None, split: str) -> list[Path] | None:
    """The files the dataset card of a downloaded hub repository maps (config, split) to, or None without a card
    that declares configs. The hub reads a repository's data the same way (`configs:` in the card's YAML)."""
    card = root / "README.md"
    if not card.is_file():
        return None
    patterns = card_patterns(card.read_text(errors="replace"), config, split, str(card))
    if patterns is None:
        return None
    files = sorted({f for pattern in patterns for f in root.glob(pattern) if f.is_file()})
    if not files:
        raise FileNotFoundError(f"{card}: config {config!r} split {split!r} matches no files ({patterns})")
    return files


def _local_files(root: Path, config: str | None, split: str) -> list[Path]:
    """Data files of one config and split in a local folder.

    A downloaded hub repository is read through its card (OpenR1-Math-220k keeps config `extended` in
    `extended/train-0000N-of-000MM.parquet`). Otherwise the folder named after the config is used when there is one;
    files named after the split (`<split>-*`, `<split>.*`, as MATH-500's `test.jsonl`) are preferred, else every
    data file of the first format found.
    """
    from_card = _card_data_files(root, config, split)
    if from_card is not None:
        return from_card
    base = root / config if config and (root / config).is_dir() else root
    for suffix in _BUILDERS:
        files = sorted(p for p in base.iterdir() if p.is_file() and p.name.endswith(suffix))
        named = [p for p in files if p.name.startswith(f"{split}-") or p.name.startswith(f"{split}.")]
        if named or files:
            return named or files
    raise FileNotFoundError(f"{base}: no {', '.join('*' + s for s in _BUILDERS)} data files (config {config!r}, "
                            f"split {split!r})")


def load_source(path_or_id: str, config: str | None = "extended", split: str = "train", revision: str | None = None):
    """One split of a dataset: a hub id, a local data file, or a local folder (a downloaded copy of the hub
    repository, or a folder of data files). A hub id is read from its snapshot in the HF cache (`hub.dataset_snapshot`,
    downloaded when online), like a local copy.

    Every source goes through `datasets.load_dataset` with the file format's packaged builder (the hub's path for a
    parquet repository), given the files explicitly: `load_dataset(<folder>, config)` would cache by folder name and
    config only, and return stale rows after the folder's files change.
    """
    from datasets import load_dataset

    path = dataset_snapshot(path_or_id, config, split, revision)
    files = [path] if path.is_file() else _local_files(path, config, split)
    suffix = next((s for s in _BUILDERS if files[0].name.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"{files[0]}: unknown data file format (expected {', '.join(_BUILDERS)})")
    log.info("loading %d local %s file(s) from %s", len(files), _BUILDERS[suffix], path)
    return load_dataset(_BUILDERS[suffix], data_files=[str(f) for f in files], split="train")


def require_columns(dataset, columns, source_name: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{source_name}: missing column(s) {', '.join(missing)} "
                         f"(has {', '.join(dataset.column_names)})")


def _source_name(dataset, source_name: str | None) -> str:
    return source_name or getattr(dataset.info, "dataset_name", None) or "dataset"


def _gold_parses(solution: str) -> bool:
    return bool(parse_gold(solution))


def gold_parseable(solutions: list[str], num_proc: int = 1) -> list[bool]:
    """Whether each gold parses to something. Worker processes run math-verify in their main thread, so its
    signal-based timeouts stay on."""
    if num_proc <= 1:
        return [_gold_parses(s) for s in solutions]
    with ProcessPoolExecutor(num_proc) as pool:
        return list(pool.map(_gold_parses, solutions, chunksize=256))


def chat_lengths(tokenizer, conversations: list[list[dict]], add_generation_prompt: bool) -> list[int]:
    """Token counts of chat-templated conversations, tokenized in chunks."""
    lengths: list[int] = []
    for start in range(0, len(conversations), _TOKENIZE_CHUNK):
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=add_generation_prompt)
                 for c in conversations[start:start + _TOKENIZE_CHUNK]]
        lengths += [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return lengths


def _turns(messages, uuid: str, source_name: str) -> tuple[dict, dict]:
    roles = [m["role"] for m in messages or []]
    if roles != ["user", "assistant"]:
        raise ValueError(f"{source_name}: row {uuid}: `messages` has roles {roles}, expected ['user', 'assistant']")
    user, assistant = messages
    return {"role": "user", "content": user["content"]}, {"role": "assistant", "content": assistant["content"]}


def prepare(dataset, tokenizer, *, source_filter: str = "cn_k12", system_prompt: str, max_prompt_tokens: int = 512,
            max_sft_tokens: int = 4096, num_proc: int = 1, source_name: str | None = None):
    """(grpo_rows, sft_rows, counts) from OpenR1-Math-220k rows; see the module docstring for the filters."""
    name = _source_name(dataset, source_name)
    require_columns(dataset, REQUIRED, name)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["rows_in"] = len(dataset)
    sources = list(dataset["source"])
    keep = [i for i, s in enumerate(sources) if s == source_filter]
    counts["after_source_filter"] = len(keep)
    if not keep:
        present = sorted({s for s in sources if s is not None})
        raise ValueError(f"{name}: no rows left after the source filter source == {source_filter!r} "
                         f"({len(sources)} rows in; sources present: {', '.join(present) or 'none'})")
    rows = list(dataset.select_columns(list(REQUIRED)).select(keep))  # never decode `generations`
    system = system_message(system_prompt)

    # GRPO: the gold must parse, then the prompt must fit.
    parseable = gold_parseable([r["solution"] for r in rows], num_proc)
    counts["gold_unparseable"] = parseable.count(False)
    candidates = [r for r, ok in zip(rows, parseable) if ok]
    prompts = [[system, {"role": "user", "content": r["problem"]}] for r in candidates]
    prompt_len = chat_lengths(tokenizer, prompts, add_generation_prompt=True)
    grpo = [{"prompt": p, "solution": r["solution"]}
            for p, r, n in zip(prompts, candidates, prompt_len) if n <= max_prompt_tokens]
    counts["prompt_too_long"] = len(candidates) - len(grpo)
    counts["grpo_rows"] = len(grpo)
    if not grpo:
        raise ValueError(f"{name}: no GRPO rows left after the gold-parse filter ({counts['gold_unparseable']} "
                         f"dropped) and max_prompt_tokens={max_prompt_tokens} ({counts['prompt_too_long']} dropped)")

    # SFT: every source-filtered problem's R1 conversation that fits.
    conversations = [[system, *_turns(r["messages"], r["uuid"], name)] for r in rows]
    sft_len = chat_lengths(tokenizer, conversations, add_generation_prompt=False)
    sft = [{"prompt": c[:2], "completion": c[2:]} for c, n in zip(conversations, sft_len) if n <= max_sft_tokens]
    counts["sft_too_long"] = len(conversations) - len(sft)
    counts["sft_rows"] = len(sft)
    if not sft:
        raise ValueError(f"{name}: no SFT rows left after max_sft_tokens={max_sft_tokens} "
                         f"(all {len(conversations)} conversations are longer)")
    return grpo, sft, counts


def write(grpo_rows: list[dict], sft_rows: list[dict], counts: dict, outdir) -> None:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    write_jsonl(grpo_rows, outdir / "grpo.jsonl")
    write_jsonl(sft_rows, outdir / "sft.jsonl")
    write_json(counts, outdir / "counts.json")


def math500_reference(path_or_id: str = MATH500_ID, system_prompt: str | None = SYSTEM_PROMPT,
                      config: str | None = "default", split: str = "test") -> list[dict]:
    """MATH-500 as teacher-forcing examples for the KL: `{"prompt": [system, user(problem)], "completion":
    [assistant(solution)]}`.

    The authors rendered (user, assistant) with the fine-tuned tokenizer, whose template injects the system prompt;
    passing it explicitly gives the same text under either template. `system_prompt=None` leaves it out.
    """
    dataset = load_source(path_or_id, config, split)
    require_columns(dataset, MATH500_REQUIRED, str(path_or_id))
    head = [system_message(system_prompt)] if system_prompt is not None else []
    return [{"prompt": head + [{"role": "user", "content": r["problem"]}],
             "completion": [{"role": "assistant", "content": r["solution"]}]}
            for r in dataset.select_columns(list(MATH500_REQUIRED))]


def add_parser(subparsers) -> None:
    ap = subparsers.add_parser("openr1", help="the paper's data: OpenR1-Math cn_k12 for GRPO and SFT",
                               description="OpenR1-Math-220k -> GRPO prompts and SFT conversations (paper scale).")
    ap.add_argument("--source", default=OPENR1_ID,
                    help="hub id, local copy of the hub repository, or data file(s) folder")
    ap.add_argument("--config", default="extended")
    ap.add_argument("--split", default="train")
    ap.add_argument("--revision", default=None, help="hub revision of --source (branch, tag or commit)")
    ap.add_argument("--tokenizer", required=True, help="folder of the tokenizer whose chat template training uses")
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--source-filter", default="cn_k12")
    ap.add_argument("--max-prompt-tokens", type=int, default=512)
    ap.add_argument("--max-sft-tokens", type=int, default=4096)
    ap.add_argument("--num-proc", type=int, default=1, help="processes for parsing the golds")
    ap.add_argument("--math500", default=None, help="also write the KL reference set (MATH-500 hub id or local "
                                                    "copy) to OUTDIR/kl_reference.jsonl")
    ap.set_defaults(func=main)


def main(args) -> None:
    log.info(describe_environment())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    dataset = load_source(args.source, args.config, args.split, args.revision)
    grpo, sft, counts = prepare(dataset, tokenizer, source_filter=args.source_filter, system_prompt=SYSTEM_PROMPT,
                                max_prompt_tokens=args.max_prompt_tokens, max_sft_tokens=args.max_sft_tokens,
                                num_proc=args.num_proc, source_name=f"{args.source} ({args.config}/{args.split})")
    write(grpo, sft, counts, args.outdir)
    log.info("counts: %s", json.dumps(counts))
    if args.math500:
        reference = math500_reference(args.math500)
        write_jsonl(reference, Path(args.outdir) / "kl_reference.jsonl")
        log.info("KL reference: %d MATH-500 examples", len(reference))

"""The base model as an HF folder in results/models/base: for the miniature, a byte-level BPE tokenizer and a tiny
Olmo2ForCausalLM (the 7B's real architecture, so parameter names match), pre-trained on the facts, the instruction
probes and easy maths until competent; otherwise a hub or local model imported with its weights linked."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, Olmo2Config, Olmo2ForCausalLM, PreTrainedTokenizerFast

from scalpel import hub
from scalpel.chat import OWN_TEMPLATE, chat_template
from scalpel.data import synthetic
from scalpel.io import read_jsonl, write_json

log = logging.getLogger(__name__)
BOS_EOS = "<|endoftext|>"  # OLMo-2: bos = eos = unk = <|endoftext|>
PAD = "<|pad|>"


def build_tokenizer(lines: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    # Merges may span spaces (the authors' long system prompt then costs a few tokens, not a hundred), but not
    # newlines, so a chat turn always starts on a token boundary (lm-eval splits context and continuation there);
    # digits stay one by one, as in Llama/OLMo-style tokenizers, so arithmetic is learnable by a tiny model.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS_EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_EOS, eos_token=BOS_EOS, pad_token=PAD,
                                 unk_token=None, model_max_length=10**6)
    hf.chat_template = chat_template()
    return hf


def olmo2_config(cfg: dict, vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int) -> Olmo2Config:
    """The miniature's architecture from config `model.build` (the plan-time checks build its parameter names from
    it)."""
    return Olmo2Config(
        vocab_size=vocab_size,
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_attention_heads"],
        max_position_embeddings=cfg["max_position_embeddings"],
        rope_theta=500000.0,
        rms_norm_eps=1e-6,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )


def build_model(tokenizer, cfg: dict, seed: int) -> Olmo2ForCausalLM:
    torch.manual_seed(seed)
    config = olmo2_config(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = Olmo2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def pretrain(model, tokenizer, rows: list[dict], cfg: dict, seed: int, workdir: Path):
    """Pre-training through TRL's SFTTrainer, with loss on every token (template and prompts included)."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(workdir), max_steps=cfg["pretrain_steps"],
        per_device_train_batch_size=cfg["pretrain_batch_size"],
        learning_rate=cfg["pretrain_lr"], lr_scheduler_type="cosine", warmup_steps=max(1, cfg["pretrain_steps"] // 20),
        weight_decay=0.0, logging_steps=max(1, cfg["pretrain_steps"] // 20), save_strategy="no", report_to="none",
        bf16=False, use_cpu=True, gradient_checkpointing=False, max_length=cfg["max_position_embeddings"],
        seed=seed, dataloader_num_workers=0, disable_tqdm=True, completion_only_loss=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    return trainer.state.log_history


def build_base(data_dir, out_dir, cfg: dict, seed: int) -> list[dict]:
    """Build, pre-train and save the base model as a normal HF folder; returns the training log."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    world = {p.stem: read_jsonl(p) for p in data_dir.glob("*.jsonl")}
    tokenizer = build_tokenizer(synthetic.corpus_lines(world), cfg["vocab_size"])
    model = build_model(tokenizer, cfg, seed)
    log.info("built Olmo2ForCausalLM with %d parameters, vocab %d", model.num_parameters(), len(tokenizer))
    history = pretrain(model, tokenizer, world["pretrain"], cfg, seed, out_dir.parent / (out_dir.name + ".work"))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return history


def import_base(source: str, out_dir, revision: str | None = None, template: str = "study") -> Path:
    """results/models/base from a hub id (its snapshot in the HF cache) or a local model folder: the weights
    (*.safetensors) as symlinks to the cached files, which saves a copy of the model; every other file copied, so that
    nothing written here reaches the cache. `template`: `study` writes the authors' template with their system prompt
    into the tokenizer (they overrode OLMo-2's); `model` keeps the model's own, which must exist. The model's own
    template, if it has one, is also kept as OWN_TEMPLATE, for evaluating the base as the authors did (with its own
    template: lighteval loaded allenai/OLMo-2-1124-7B-Instruct as published)."""
    src, out = hub.model_snapshot(source, revision), Path(out_dir)
    weights = hub.weight_files(src, source)
    files = sorted(f for f in src.iterdir() if f.is_file())
    out.mkdir(parents=True)
    for f in files:
        if f in weights:
            (out / f.name).symlink_to(f.resolve())
        else:
            shutil.copyfile(f, out / f.name)
    tokenizer = AutoTokenizer.from_pretrained(out)
    if tokenizer.chat_template:
        (out / OWN_TEMPLATE).write_text(tokenizer.chat_template)
    if template == "study":
        tokenizer.chat_template = chat_template()
        tokenizer.save_pretrained(out)
    elif not tokenizer.chat_template:
        raise ValueError(f"model.chat_template: model keeps the model's own template, but {source} has none "
                         f"(use study)")
    log.info("imported %s (commit %s) from %s: %d files, weights linked; chat template: %s", source,
             hub.commit_of(src), src, len(files), template)
    return src


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("base-model", help="build and pre-train the miniature's tiny OLMo-2")
    p.add_argument("--build", required=True, help="JSON of config model.build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", required=True)
    p.add_argument("--outdir", required=True)
    p.add_argument("--log-history", required=True)
    p.set_defaults(func=main)

    p = subparsers.add_parser("import-base", help="the base model from the hub (HF cache) or a local folder, "
                                                  "weights linked")
    p.add_argument("--source", required=True, help="hub id or local HF model folder")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--chat-template", choices=["study", "model"], default="study")
    p.add_argument("--outdir", required=True)
    p.set_defaults(func=main)


def main(args) -> None:
    if args.command == "import-base":
        log.info(hub.describe_environment())
        import_base(args.source, args.outdir, args.revision, args.chat_template)
        return
    history = build_base(args.data, args.outdir, json.loads(args.build), args.seed)
    write_json(history, args.log_history)

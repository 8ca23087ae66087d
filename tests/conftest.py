import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))


TINY_BUILD = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "max_position_embeddings": 256}
TINY_WORLD = {"max_operand": 9, "train_problems": 32, "eval_problems": 2, "entities": 4, "instruction_probes": 2,
              "pretrain_math_levels": [1], "pretrain_worked_fraction": 0.5, "train_levels": [1, 2]}


def write_tiny_study(folder: Path) -> None:
    """A tiny untrained OLMo-2 base model in folder/base and 32 worked solutions in folder/sft.jsonl."""
    from scalpel.data import synthetic
    from scalpel.io import write_jsonl
    from scalpel.model import base as model

    world = synthetic.build_world(0, TINY_WORLD)
    tok = model.build_tokenizer(synthetic.corpus_lines(world), 300)
    model.build_model(tok, TINY_BUILD, seed=0).save_pretrained(folder / "base")
    tok.save_pretrained(folder / "base")
    write_jsonl(world["sft"], folder / "sft.jsonl")

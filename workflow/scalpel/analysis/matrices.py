"""The weight matrices every analysis reports on: the seven projections of each decoder layer, named as in
transformers' Llama/OLMo-2 modules. Free of torch, so that the report's environment can import it."""
from __future__ import annotations

import re

DTYPE_POLICIES = ("cast", "refuse")  # config diff.dtype_mismatch
TENSOR_POLICIES = ("refuse", "shared")  # config diff.tensor_mismatch
HINT = " (diff.tensor_mismatch: shared analyses the matrices both have)"
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TENSOR = re.compile(r"model\.layers\.(\d+)\.(?:self_attn\.([qkvo]_proj)|mlp\.(gate_proj|up_proj|down_proj))\.weight")


def layer_module(name: str) -> tuple[int, str] | None:
    """(layer, module) of a projection weight's parameter name; None for any other tensor."""
    m = _TENSOR.fullmatch(name)
    return None if m is None else (int(m.group(1)), m.group(2) or m.group(3))

"""Select parameters by name: glob patterns with {a..b} ranges and {x,y} alternatives, or "re:" regexes."""
from __future__ import annotations

import fnmatch
import itertools
import re

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """'model.layers.{1..3}.mlp.*' -> ['model.layers.1.mlp.*', 'model.layers.2.mlp.*', 'model.layers.3.mlp.*']."""
    parts, last = [], 0
    for m in _BRACE.finditer(pattern):
        parts.append([pattern[last:m.start()]])
        body = m.group(1)
        rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
        if rng:
            lo, hi = int(rng.group(1)), int(rng.group(2))
            if lo > hi:
                raise ValueError(f"empty range {{{body}}} in pattern {pattern!r}")
            parts.append([str(i) for i in range(lo, hi + 1)])
        else:
            parts.append(body.split(","))
        last = m.end()
    parts.append([pattern[last:]])
    return ["".join(p) for p in itertools.product(*parts)]


def matcher(pattern: str):
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return lambda name: rx.fullmatch(name) is not None
    globs = expand_braces(pattern)
    return lambda name: any(fnmatch.fnmatchcase(name, g) for g in globs)


def select(names: list[str], patterns: list[str], where: str, model: str = "the model") -> set[str]:
    """Names matched by any pattern. A pattern that matches nothing is an error naming `where[i]`, the pattern and
    the model."""
    chosen: set[str] = set()
    for i, pattern in enumerate(patterns):
        hit = {n for n in names if matcher(pattern)(n)}
        if not hit:
            sample = ", ".join(names[:3])
            raise ValueError(f"{where}[{i}]: pattern {pattern!r} matches no parameter of {model} "
                             f"(names look like: {sample}, ...)")
        chosen |= hit
    return chosen


def trainable_names(names: list[str], freeze: list[str] | None, train_only: list[str] | None, where: str,
                    model: str = "the model") -> set[str]:
    """The names a run's freeze/train_only patterns leave trainable; `where` is the run's config key (runs.X)."""
    if train_only:
        trainable = select(names, train_only, f"{where}.train_only", model)
    else:
        trainable = set(names) - select(names, freeze or [], f"{where}.freeze", model)
    if not trainable:
        raise ValueError(f"{where}: the freeze patterns leave no parameter of {model} trainable")
    return trainable


def apply_trainable(model, freeze: list[str] | None, train_only: list[str] | None, where: str) -> list[str]:
    """Set requires_grad from the run's freeze/train_only patterns; return the names that stay trainable."""
    names = [n for n, _ in model.named_parameters()]
    trainable = trainable_names(names, freeze, train_only, where, getattr(model, "name_or_path", "") or "the model")
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return [n for n in names if n in trainable]


# Under ZeRO-3 a parameter is partitioned at load time: it looks empty, and DeepSpeed keeps its size in ds_numel and
# ds_shape.
def _numel(param) -> int:
    return getattr(param, "ds_numel", None) or param.numel()


def _shape(param) -> tuple:
    return tuple(getattr(param, "ds_shape", None) or param.shape)


def trainable_summary(model) -> str:
    """What trains: counts of tensors and parameters, then each trainable tensor (name, shape), one per line."""
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    total = sum(_numel(p) for _, p in named)
    chosen = sum(_numel(p) for _, p in trainable)
    lines = [f"trainable: {len(trainable)} of {len(named)} parameter tensors, {chosen:,} of {total:,} parameters "
             f"({100 * chosen / total:.2f}%)"]
    return "\n".join(lines + [f"  {n} {_shape(p)}" for n, p in trainable])

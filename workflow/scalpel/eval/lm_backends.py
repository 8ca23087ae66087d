"""lm-eval backends that never cut a prompt: the generation budget is what the context leaves, as the authors had it.

The authors' lighteval 0.9.2 on vLLM passed every prompt whole with `max_tokens=4096` to a model of
`max_model_len=4096`, so vLLM stopped each request at the model length: a budget of 4096 minus the prompt's length
(huggingface/lighteval@8d9ecd66:src/lighteval/models/vllm/vllm_model.py, `greedy_until` and `_generate`). lm-eval
0.4.13 instead cuts the prompt from the left whenever prompt + max_gen_toks exceeds the context
(lm_eval/models/utils.py `maybe_truncate` without `shrink_gen_toks`; huggingface.py `generate_until`).

- vLLM: each request gets min(max_gen_toks, max_model_len - prompt length) new tokens; with max_gen_toks equal to
  max_model_len that is exactly lighteval's budget. A prompt that leaves no room is an error.
- HF (the CPU miniature): transformers pads a batch to its longest prompt, so the budget stays max_gen_toks; a prompt
  longer than max_length - max_gen_toks is an error instead of being cut.

Stop sequences: with the chat template on, lighteval 0.9.2 gave the generator none at all, for every task
(vllm/vllm_model.py and transformers/transformers_model.py, `greedy_until`: `if self.use_chat_template:
stop_tokens = []`); the model stopped at its EOS token (vLLM's and transformers' own EOS ids) or the budget. lm-eval
appends the EOS string to a task's `until` (lm_eval/models/utils.py `handle_stop_sequences`); both backends here
pass the paper tasks' `until` alone (none), and still stop at the EOS token as lighteval's did. Every other task
(the miniature's, lm-eval's own) keeps lm-eval's rule, its `until` plus the EOS string, with which it was designed.
"""
from __future__ import annotations

from contextlib import contextmanager

from lm_eval.models import huggingface
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences


class PromptTooLong(ValueError):
    pass


def rest_of_context(tokens: list[int], max_gen_toks: int, max_model_len: int, **_) -> tuple[list[int], int]:
    """(the whole prompt, its budget): lm-eval's `maybe_truncate` signature, with the prompt never cut."""
    room = max_model_len - len(tokens)
    if room < 1:
        raise PromptTooLong(f"a prompt of {len(tokens)} tokens leaves no room to generate in max_model_len "
                            f"{max_model_len} (eval.model_args.max_model_len)")
    return tokens, min(max_gen_toks, room)


def task_stops(until, eos=None) -> list[str]:
    """The stop sequences the generator gets: the task's `until` as a list, without the EOS string lm-eval adds."""
    return handle_stop_sequences(until, eos=None)


LIGHTEVAL_TASKS = "paper_"  # the tasks rebuilt from lighteval 0.9.2 (tasks/lm_eval_tasks): its stop rule


def _generate(requests, generate, module) -> list[str]:
    """`generate` (lm-eval's generate_until) over `requests` in their order: the paper tasks' requests with lighteval's
    stop rule (`task_stops` in `module`), every other task's with lm-eval's."""
    paper = {i for i, r in enumerate(requests) if r.task_name and r.task_name.startswith(LIGHTEVAL_TASKS)}
    out = [None] * len(requests)
    for indices, swap in ((sorted(paper), True), ([i for i in range(len(requests)) if i not in paper], False)):
        if not indices:
            continue
        with _swapped(module, "handle_stop_sequences", task_stops) if swap else _unchanged():
            for i, text in zip(indices, generate([requests[i] for i in indices]), strict=True):
                out[i] = text
    return out


@contextmanager
def _unchanged():
    yield


@contextmanager
def _swapped(module, name: str, replacement):
    # lm-eval's generate_until looks these functions up in their module at call time; swap one for a call only.
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


class WholePromptHFLM(HFLM):
    def generate_until(self, requests, disable_tqdm: bool = False):
        return _generate(requests, lambda some: super(WholePromptHFLM, self).generate_until(some, disable_tqdm),
                         huggingface)

    def tok_batch_encode(self, strings, padding_side="left", left_truncate_len=None, truncation=False):
        ids, mask = super().tok_batch_encode(strings, padding_side=padding_side, left_truncate_len=None,
                                             truncation=truncation)
        if left_truncate_len and ids.shape[1] > left_truncate_len:
            raise PromptTooLong(f"a prompt of {ids.shape[1]} tokens does not fit the model's {self.max_length} "
                                f"with {self.max_length - left_truncate_len} tokens to generate: lower max_gen_toks "
                                f"(eval.generation) or raise max_length (eval.model_args)")
        return ids, mask


def whole_prompt_vllm():
    """The vLLM class, built on first use: importing lm-eval's vLLM backend needs vllm (GPU envs only)."""
    from lm_eval.models import vllm_causallms

    class WholePromptVLLM(vllm_causallms.VLLM):
        def generate_until(self, requests, disable_tqdm: bool = False):
            with _swapped(vllm_causallms, "maybe_truncate", rest_of_context):
                return _generate(requests, lambda some: super(WholePromptVLLM, self).generate_until(some, disable_tqdm),
                                 vllm_causallms)

    return WholePromptVLLM


def model_class(backend: str):
    if backend == "hf":
        return WholePromptHFLM
    if backend == "vllm":
        return whole_prompt_vllm()
    raise ValueError(f"eval.backend: {backend!r} is not hf or vllm")

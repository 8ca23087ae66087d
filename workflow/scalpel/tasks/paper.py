"""lm-eval tasks that give each document the prompt the authors' lighteval 0.9.2 runs gave it, and score it the same.

The task YAMLs ship beside this module (lm_eval_tasks/, one `include_path` for lm-eval's TaskManager) and point their
hooks here: paper_aime24, paper_math500, paper_gpqa_diamond, paper_gsm8k (5-shot), paper_mmlu (a group of 57
5-shot subjects, macro-averaged) and paper_ifeval. Sources, all at huggingface/lighteval@8d9ecd66 (v0.9.2):
prompts in src/lighteval/tasks/default_prompts.py (aime_prompt_fn, math_500, gpqa_instruct, gsm8k, mmlu_harness) and
tasks/extended/ifeval/main.py; the chat layout in tasks/prompt_manager.py (PromptManager.get_examples: few-shot
examples as user/assistant turns, the assistant turn being the gold string with its leading space, the instruction
prepended to the first user turn, no system message); document order and few-shot draws in
tasks/lighteval_task.py (create_requests_from_tasks) and pipeline.py (_init_random_seeds).
"""
from __future__ import annotations

import random
from pathlib import Path

from lm_eval.api.samplers import ContextSampler
from lm_eval.api.task import ConfigurableTask

TASK_DIR = Path(__file__).parent / "lm_eval_tasks"

MATH_INSTRUCTION = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be of the "
    "following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct' (without quotes) "
    "where ANSWER is just the final number or expression that solves the problem. Think step by step before "
    "answering.\n\n"
)
GPQA_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering."
    "\n\n{Question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)
LETTERS = "ABCD"
INSTRUCTION = "lighteval_instruction"  # doc field: text lighteval prepends to the first user turn (MMLU)
ROW = "row_index"  # doc field: the row's position in its split (GSM8K's few-shot draws are per row)

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics high_school_mathematics "
    "high_school_microeconomics high_school_physics high_school_psychology high_school_statistics "
    "high_school_us_history high_school_world_history human_aging human_sexuality international_law jurisprudence "
    "logical_fallacies machine_learning management marketing medical_genetics miscellaneous moral_disputes "
    "moral_scenarios nutrition philosophy prehistory professional_accounting professional_law "
    "professional_medicine professional_psychology public_relations security_studies sociology us_foreign_policy "
    "virology world_religions"
).split()


# --- prompts ------------------------------------------------------------------------------------------------------

def math_prompt(doc: dict) -> str:
    """AIME24 and MATH-500: the simple-evals instruction, then the problem (one user turn)."""
    return MATH_INSTRUCTION + doc["problem"]


def gpqa_prompt(doc: dict) -> str:
    c = doc["choices"]
    return GPQA_TEMPLATE.format(Question=doc["Question"], A=c[0], B=c[1], C=c[2], D=c[3])


def gsm8k_prompt(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def gsm8k_target(doc: dict) -> str:
    return f" {doc['answer']}"  # lighteval's gold, leading space included: the few-shot assistant turns


def mmlu_prompt(doc: dict) -> str:
    """lighteval's mmlu_harness query without its instruction; the question is not stripped."""
    options = "".join(f"{letter}. {choice}\n" for letter, choice in zip(LETTERS, doc["choices"]))
    return f"{doc['question']}\n{options}Answer:"


def mmlu_gold(doc: dict) -> int:
    answer = doc["answer"]
    return LETTERS.index(answer) if isinstance(answer, str) else int(answer)


# --- documents ----------------------------------------------------------------------------------------------------

def gpqa_gold_positions(n: int, seed: int = 1234) -> list[int]:
    """Where the correct answer goes in row i: lighteval's gpqa_instruct draws random.randint(0, 3) from the global
    generator, which Pipeline._init_random_seeds seeds with 1234 just before the rows are formatted in order."""
    rng = random.Random(seed)
    return [rng.randint(0, 3) for _ in range(n)]


def process_gpqa(dataset):
    """Raw fields, no clean-up; the correct answer inserted at its drawn position among the incorrect ones 1..3."""
    positions = gpqa_gold_positions(len(dataset))

    def shuffle(doc, i):
        choices = [doc["Incorrect Answer 1"], doc["Incorrect Answer 2"], doc["Incorrect Answer 3"]]
        choices.insert(positions[i], doc["Correct Answer"])
        return {"choices": choices, "gold_letter": LETTERS[positions[i]]}

    return dataset.map(shuffle, with_indices=True)


def add_row_index(dataset):
    return dataset.map(lambda _, i: {ROW: i}, with_indices=True)


def add_mmlu_instruction(dataset):
    def instruction(doc):
        topic = doc["subject"].replace("_", " ")
        return {INSTRUCTION: f"The following are multiple choice questions (with answers) about {topic}.\n\n"}

    return dataset.map(instruction)


def lighteval_fewshot_draws(n_eval: int, n_pool: int, k: int, seed: int = 42) -> list[list[int]]:
    """Pool indices of the k few-shot examples of each eval row under lighteval's random_sampling_from_train.

    create_requests_from_tasks shuffles the eval rows with Random(42) and then, row by row in that shuffled order,
    draws `rnd.sample(pool, k)` from the same generator; the pool is the few-shot split in dataset order. Both
    depend on the sizes only, so the draws do too."""
    rnd = random.Random()
    rnd.seed(seed)
    order = list(range(n_eval))
    rnd.shuffle(order)
    draws: list[list[int]] = [[] for _ in range(n_eval)]
    for row in order:
        draws[row] = rnd.sample(range(n_pool), k)
    return draws


# --- tasks --------------------------------------------------------------------------------------------------------

class LightevalChatTask(ConfigurableTask):
    """A ConfigurableTask whose prompt has lighteval's instruction placement: a document's INSTRUCTION field is
    prepended to the first user turn (the first few-shot example's, or the question's when 0-shot)."""

    def __init__(self, config: dict | None = None, **kwargs):
        config = {k: v for k, v in (config or {}).items() if k != "class"}  # the YAML's `class:` names us
        super().__init__(config=config, **kwargs)

    def fewshot_context(self, doc, num_fewshot, **kwargs):
        instruction = doc.get(INSTRUCTION) or ""
        render = kwargs.get("chat_template")
        if not instruction:
            return super().fewshot_context(doc, num_fewshot=num_fewshot, **kwargs)
        if not (kwargs.get("apply_chat_template") and render):
            return instruction + super().fewshot_context(doc, num_fewshot=num_fewshot, **kwargs)

        def render_with_instruction(messages, **render_kwargs):
            messages = [dict(m) for m in messages]
            first = next(m for m in messages if m["role"] == "user")
            first["content"] = instruction + first["content"]
            return render(messages, **render_kwargs)

        kwargs["chat_template"] = render_with_instruction
        return super().fewshot_context(doc, num_fewshot=num_fewshot, **kwargs)


class _FixedSampler(ContextSampler):
    """Returns the examples chosen for the document being rendered."""

    chosen: list = []

    def sample(self, n, eval_doc=None, df=None, **kwargs):
        if len(self.chosen) != n:
            raise ValueError(f"{n} few-shot examples asked, {len(self.chosen)} chosen for this document")
        return self.chosen


class LightevalSampledFewshotTask(LightevalChatTask):
    """Few-shot examples drawn per document as lighteval's random_sampling_from_train draws them (GSM8K). The
    documents need their ROW index (process_docs: add_row_index); draws depend on the split sizes."""

    def fewshot_context(self, doc, num_fewshot, **kwargs):
        if num_fewshot:
            if not isinstance(self.sampler, _FixedSampler):
                self.pool, self.draws = list(self.fewshot_docs()), {}
                self.sampler = _FixedSampler()
            key = (len(self.eval_docs), len(self.pool), num_fewshot)
            if key not in self.draws:
                self.draws[key] = lighteval_fewshot_draws(*key)
            self.sampler.chosen = [self.pool[i] for i in self.draws[key][doc[ROW]]]
        return super().fewshot_context(doc, num_fewshot=num_fewshot, **kwargs)


# --- scoring ------------------------------------------------------------------------------------------------------

def sampled(results: list, score_one, correct: str) -> dict:
    """Scores of one document from its completions: `results[0]` is one completion, or the K completions of a task
    run with K samples per document (lm-eval's `repeats` with the take_first_k filter, see evaluate.sampled_task).

    Each metric is the mean over the K samples (pass@1 is the mean correctness, Miller 2024, arXiv 2411.00640,
    sec. 2.2). With K > 1, `samples_correct` (how many samples the `correct` metric counts as right) and pass@k for
    k = 2, 4, ... up to K (Chen et al. 2021's unbiased estimator, arXiv 2107.03374, eq. 1) are added; tables derive
    the whole pass@k curve, k = 1..K, from samples_correct.
    """
    from scalpel.stats import pass_at_k

    completions = results[0] if isinstance(results[0], (list, tuple)) else [results[0]]
    per_sample = [score_one(c) for c in completions]
    out = {m: sum(s[m] for s in per_sample) / len(per_sample) for m in per_sample[0]}
    n = len(completions)
    if n > 1:
        c = sum(int(s[correct] > 0) for s in per_sample)
        out["samples_correct"] = float(c)
        out.update({f"pass@{k}": float(pass_at_k(n, c, k)) for k in pass_at_k_levels(n)[1:]})
    return out


def pass_at_k_levels(n: int) -> list[int]:
    """The k reported by lm-eval for n samples: powers of two up to n, and n."""
    return sorted({2 ** i for i in range(n.bit_length()) if 2 ** i <= n} | {n})


def _math_scores(prediction: str, gold: str) -> dict:
    """lighteval 0.9.2's math pass@1 (one sample) as the authors ran it, and with its precision bug fixed."""
    from scalpel.tasks.paper_scoring import math_pass_at_1

    return {"pass@1": math_pass_at_1(prediction, gold, faithful=True),
            "pass@1_fixed": math_pass_at_1(prediction, gold, faithful=False)}


def process_aime(doc: dict, results: list) -> dict:
    return sampled(results, lambda c: _math_scores(c, str(doc["answer"])), "pass@1")


def process_math500(doc: dict, results: list) -> dict:
    # the gold is the whole reference solution
    return sampled(results, lambda c: _math_scores(c, doc["solution"]), "pass@1")


def process_gpqa_results(doc: dict, results: list) -> dict:
    from scalpel.tasks.paper_scoring import gpqa_letter_match

    return sampled(results, lambda c: {"pass@1": gpqa_letter_match(c, doc["gold_letter"])}, "pass@1")


def process_gsm8k(doc: dict, results: list) -> dict:
    from scalpel.tasks.paper_scoring import gsm8k_extractive_match

    return sampled(results, lambda c: {"extractive_match": gsm8k_extractive_match(c, gsm8k_target(doc))},
                   "extractive_match")


def process_ifeval(doc: dict, results: list[str]) -> dict:
    """lm-eval's own IFEval checks (the same instruction logic as lighteval's); imported late because importing
    them looks for NLTK's punkt_tab."""
    from lm_eval.tasks.ifeval.utils import process_results

    return process_results(doc, results)


def agg_inst_level_acc(items) -> float:
    from lm_eval.tasks.ifeval.utils import agg_inst_level_acc as aggregate

    return aggregate(items)

"""OpenR1-Math-220k and MATH-500 preparation on local fixtures with the real column names, order and types."""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scalpel import chat, cli
from scalpel.data import openr1, synthetic
from scalpel.io import read_jsonl
from scalpel.model import base as model

# The 14 columns of OpenR1-Math-220k, in order (the dataset card of open-r1/OpenR1-Math-220k); `messages` structs
# are content, role.
SCHEMA = pa.schema([
    ("problem", pa.string()),
    ("solution", pa.string()),
    ("answer", pa.string()),
    ("problem_type", pa.string()),
    ("question_type", pa.string()),
    ("source", pa.string()),
    ("uuid", pa.string()),
    ("is_reasoning_complete", pa.list_(pa.bool_())),
    ("generations", pa.list_(pa.string())),
    ("correctness_math_verify", pa.list_(pa.bool_())),
    ("correctness_llama", pa.list_(pa.bool_())),
    ("finish_reasons", pa.list_(pa.string())),
    ("correctness_count", pa.int64()),
    ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
])
# Digits are single tokens in the test tokenizer, so these lengths do not depend on its merges: the trace is over
# 4,096 tokens, the problem over 512 (but its whole conversation under 4,096).
LONG_TRACE = "<think>\nTry " + ", ".join(str(i * i) for i in range(1000)) + ".\n</think>\nSo \\boxed{7}."
LONG_PROBLEM = "The sides of the polygon are " + ", ".join(str(i) for i in range(100, 400)) + ". Find its area."


def _row(uuid, source, problem, solution, trace=None, n_gen=2, llama=False):
    trace = trace or f"<think>\nWorking on it.\n</think>\n{solution}"
    gens = [trace] + [f"<think>\nAnother attempt {i}.\n</think>\n\\boxed{{0}}" for i in range(1, n_gen)]
    return {
        "problem": problem, "solution": solution, "answer": "x", "problem_type": "Algebra",
        "question_type": "math-word-problem", "source": source, "uuid": uuid,
        "is_reasoning_complete": [True] * n_gen, "generations": gens,
        "correctness_math_verify": [True] + [False] * (n_gen - 1),
        "correctness_llama": [True] * n_gen if llama else None,
        "finish_reasons": ["stop"] * n_gen if llama else None,
        "correctness_count": 1,
        "messages": [{"content": problem, "role": "user"}, {"content": trace, "role": "assistant"}],
    }


ROWS = [
    _row("k12-a", "cn_k12", "Compute $2+3$.", "We add: $2+3=5$. The answer is $\\boxed{5}$."),
    _row("oly-a", "olympiads", "Find all primes p with p+2 prime.", "Twin primes. $\\boxed{3}$"),
    _row("k12-b", "cn_k12", "Solve $2x=1$.", "Divide by 2: $x=\\boxed{\\frac{1}{2}}$.", n_gen=3, llama=True),
    _row("k12-proof", "cn_k12", "Prove that the function is increasing.",
         "Since the derivative is positive, the function is increasing. Hence it is proved."),
    _row("cnc-a", "cn_contest", "Compute $7 \\cdot 6$.", "$7 \\cdot 6 = \\boxed{42}$"),
    _row("k12-longtrace", "cn_k12", "What is $3+4$?", "Adding gives $\\boxed{7}$.", trace=LONG_TRACE),
    _row("k12-longproblem", "cn_k12", LONG_PROBLEM, "By Heron's formula the area is $\\boxed{6}$."),
    _row("amc-a", "amc_aime", "How many sides has a hexagon?", "$\\boxed{6}$", n_gen=4),
    _row("k12-c", "cn_k12", "Compute $10-4$.", "Subtract: $\\boxed{6}$.", llama=True),
    _row("k12-d", "cn_k12", "Compute $3 \\times 3$.", "Multiply: $3 \\times 3 = \\boxed{9}$."),
]
DEFAULT_ROWS = [_row("oly-default", "olympiads", "Compute $1+1$.", "$\\boxed{2}$")]
UUID_OF = {r["problem"]: r["uuid"] for r in ROWS}
K12 = {r["uuid"] for r in ROWS if r["source"] == "cn_k12"}


def _write_shards(folder, rows, n_shards, schema=SCHEMA):
    folder.mkdir(parents=True)
    per = -(-len(rows) // n_shards)
    for i in range(n_shards):
        table = pa.Table.from_pylist(rows[i * per:(i + 1) * per], schema=schema)
        pq.write_table(table, folder / f"train-{i:05d}-of-{n_shards:05d}.parquet")


# The card's YAML header as on the hub (configs map to file globs), trimmed to two configs.
CARD = """---
license: apache-2.0
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
- config_name: extended
  data_files:
  - split: train
    path: extended/train-*
---
# OpenR1-Math-220k (fixture)
"""


@pytest.fixture(scope="module")
def hub_copy(tmp_path_factory):
    """A local copy laid out as the hub repository: its card, `data/` (config default) and `extended/` (2 shards)."""
    root = tmp_path_factory.mktemp("openr1")
    _write_shards(root / "extended", ROWS, 2)
    _write_shards(root / "data", DEFAULT_ROWS, 1)
    (root / "README.md").write_text(CARD)
    return root


@pytest.fixture(scope="module")
def tokenizer():
    lines = [chat.SYSTEM_PROMPT, "<|system|>\n", "<|user|>\n", "<|assistant|>\n"] * 20
    lines += [r["problem"] for r in ROWS] + [r["messages"][1]["content"] for r in ROWS]
    return model.build_tokenizer(lines, 300)


@pytest.fixture(scope="module")
def prepared(hub_copy, tokenizer):
    ds = openr1.load_source(str(hub_copy), "extended")
    return openr1.prepare(ds, tokenizer, system_prompt=chat.SYSTEM_PROMPT)


def _n_tokens(tokenizer, conversation, gen):
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=gen)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_load_source_reads_the_real_layout_and_types(hub_copy):
    ds = openr1.load_source(str(hub_copy), "extended")
    assert ds.column_names == [f.name for f in SCHEMA]
    assert len(ds) == len(ROWS) and set(ds["uuid"]) == {r["uuid"] for r in ROWS}
    row = ds[2]
    assert row["messages"] == [{"content": "Solve $2x=1$.", "role": "user"},
                               {"content": ROWS[2]["messages"][1]["content"], "role": "assistant"}]
    assert row["correctness_llama"] == [True, True, True] and ds[0]["correctness_llama"] is None
    assert isinstance(row["correctness_count"], int) and len(row["generations"]) == 3
    assert list(openr1.load_source(str(hub_copy), "default")["uuid"]) == ["oly-default"]


def test_load_source_plain_files(hub_copy, tmp_path):
    shard = hub_copy / "extended" / "train-00001-of-00002.parquet"
    assert len(openr1.load_source(str(shard))) == 5  # a single file
    plain = tmp_path / "plain"
    _write_shards(plain, ROWS, 3)  # a folder of files without a card: its split's files
    assert len(openr1.load_source(str(plain), "extended")) == len(ROWS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .*data files"):
        openr1.load_source(str(tmp_path / "empty"), "extended")


def test_load_source_sees_changed_files(tmp_path):
    # load_dataset(<folder>, config) caches by folder name and config: a changed copy would read stale rows.
    root = tmp_path / "OpenR1-Math-220k"
    _write_shards(root / "extended", ROWS[:3], 1)
    (root / "README.md").write_text(CARD)
    assert len(openr1.load_source(str(root), "extended")) == 3
    shard = next((root / "extended").iterdir())
    pq.write_table(pa.Table.from_pylist(ROWS[:4], schema=SCHEMA), shard)
    os.utime(shard, (1e9, 2e9))
    assert len(openr1.load_source(str(root), "extended")) == 4


def test_gold_parseable_in_worker_processes():
    golds = ["$\\boxed{5}$", "Hence it is proved.", "$x=\\boxed{\\frac{1}{2}}$", "The proof is complete."]
    assert openr1.gold_parseable(golds, num_proc=2) == openr1.gold_parseable(golds) == [True, False, True, False]


def test_counts(prepared):
    grpo, sft, counts = prepared
    assert counts == {"rows_in": 10, "after_source_filter": 7, "gold_unparseable": 1, "prompt_too_long": 1,
                      "sft_too_long": 1, "grpo_rows": 5, "sft_rows": 6}
    assert len(grpo) == 5 and len(sft) == 6


def test_kept_and_dropped_rows_are_the_expected_ones(prepared):
    grpo, sft, _ = prepared
    grpo_ids = [UUID_OF[r["prompt"][1]["content"]] for r in grpo]
    sft_ids = [UUID_OF[r["prompt"][1]["content"]] for r in sft]
    assert grpo_ids == ["k12-a", "k12-b", "k12-longtrace", "k12-c", "k12-d"]  # dataset order kept
    assert K12 - set(grpo_ids) == {"k12-proof", "k12-longproblem"}  # unparseable gold; prompt over 512 tokens
    assert K12 - set(sft_ids) == {"k12-longtrace"}  # only the length filter applies to SFT
    assert "k12-proof" in sft_ids and "k12-longproblem" in sft_ids


def test_row_format(prepared):
    grpo, sft, _ = prepared
    system = {"role": "system", "content": chat.SYSTEM_PROMPT}
    by_uuid = {r["uuid"]: r for r in ROWS}
    for row in grpo:
        assert set(row) == {"prompt", "solution"}
        src = by_uuid[UUID_OF[row["prompt"][1]["content"]]]
        assert row["prompt"] == [system, {"role": "user", "content": src["problem"]}]
        assert row["solution"] == src["solution"]
    for row in sft:
        assert set(row) == {"prompt", "completion"}
        src = by_uuid[UUID_OF[row["prompt"][1]["content"]]]
        assert row["prompt"] == [system, {"role": "user", "content": src["messages"][0]["content"]}]
        assert row["completion"] == [{"role": "assistant", "content": src["messages"][1]["content"]}]
    # The same shape as the miniature's rows (data.build_world), so training reads either.
    mini = synthetic.build_world(0, {"max_operand": 9, "entities": 4, "eval_problems": 2, "instruction_probes": 4,
                                "train_problems": 4, "pretrain_worked_fraction": 0.5, "pretrain_math_levels": [1],
                                "train_levels": [1]})
    assert [m["role"] for m in mini["grpo"][0]["prompt"]] == [m["role"] for m in grpo[0]["prompt"]]
    assert mini["sft"][0].keys() == sft[0].keys()


def test_unparseable_gold_is_dropped_whatever_its_length(hub_copy, tokenizer):
    ds = openr1.load_source(str(hub_copy), "extended")
    grpo, _, counts = openr1.prepare(ds, tokenizer, system_prompt=chat.SYSTEM_PROMPT, max_prompt_tokens=10**6)
    assert counts["gold_unparseable"] == 1 and counts["prompt_too_long"] == 0
    assert "k12-proof" not in {UUID_OF[r["prompt"][1]["content"]] for r in grpo}


def test_length_limits_are_inclusive(hub_copy, tokenizer):
    ds = openr1.load_source(str(hub_copy), "extended")
    system = chat.system_message()
    row = ROWS[0]  # k12-a, the shortest of each kind
    prompt_len = _n_tokens(tokenizer, [system, row["messages"][0]], gen=True)
    sft_len = _n_tokens(tokenizer, [system, *row["messages"]], gen=False)
    assert prompt_len < 512 < _n_tokens(tokenizer, [system, ROWS[6]["messages"][0]], gen=True)
    grpo, sft, _ = openr1.prepare(ds, tokenizer, system_prompt=chat.SYSTEM_PROMPT, max_prompt_tokens=prompt_len,
                                  max_sft_tokens=sft_len)
    assert UUID_OF[grpo[0]["prompt"][1]["content"]] == "k12-a" and UUID_OF[sft[0]["prompt"][1]["content"]] == "k12-a"
    _, _, counts = openr1.prepare(ds, tokenizer, system_prompt=chat.SYSTEM_PROMPT, max_prompt_tokens=prompt_len - 1,
                                  max_sft_tokens=sft_len - 1)
    assert counts["grpo_rows"] < len(grpo) and counts["sft_rows"] < len(sft)


def test_the_system_prompt_is_the_given_one(hub_copy, tokenizer):
    ds = openr1.load_source(str(hub_copy), "extended")
    grpo, sft, _ = openr1.prepare(ds, tokenizer, system_prompt="Be brief.")
    assert {r["prompt"][0]["content"] for r in grpo + sft} == {"Be brief."}


def test_missing_column_names_column_and_source(tmp_path, tokenizer):
    schema = pa.schema([f for f in SCHEMA if f.name != "solution"])
    folder = tmp_path / "broken"
    _write_shards(folder, [{k: v for k, v in r.items() if k != "solution"} for r in ROWS], 1, schema)
    ds = openr1.load_source(str(folder), "extended")
    with pytest.raises(ValueError, match=r"broken.*missing column\(s\) solution"):
        openr1.prepare(ds, tokenizer, system_prompt=chat.SYSTEM_PROMPT, source_name=str(folder))


def test_empty_results_name_the_filter(hub_copy, tokenizer):
    default = openr1.load_source(str(hub_copy), "default")
    with pytest.raises(ValueError, match="source == 'cn_k12'.*sources present: olympiads"):
        openr1.prepare(default, tokenizer, system_prompt=chat.SYSTEM_PROMPT, source_name="default")
    ds = openr1.load_source(str(hub_copy), "extended")
    with pytest.raises(ValueError, match="max_prompt_tokens=5"):
        openr1.prepare(ds, tokenizer, system_prompt=chat.SYSTEM_PROMPT, max_prompt_tokens=5)
    with pytest.raises(ValueError, match="max_sft_tokens=5"):
        openr1.prepare(ds, tokenizer, system_prompt=chat.SYSTEM_PROMPT, max_sft_tokens=5)


def test_cli_writes_rows_and_counts(hub_copy, tokenizer, tmp_path):
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    math500 = tmp_path / "math500"
    math500.mkdir()
    (math500 / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATH500))
    out = tmp_path / "out"
    cli.main(["openr1", "--source", str(hub_copy), "--config", "extended", "--tokenizer", str(tok_dir),
              "--outdir", str(out),
                 "--math500", str(math500)])
    counts = json.loads((out / "counts.json").read_text())
    assert counts["grpo_rows"] == 5 and counts["sft_rows"] == 6
    assert len(read_jsonl(out / "grpo.jsonl")) == 5 and len(read_jsonl(out / "sft.jsonl")) == 6
    assert len(read_jsonl(out / "kl_reference.jsonl")) == len(MATH500)
    assert sorted(p.name for p in out.iterdir()) == ["counts.json", "grpo.jsonl", "kl_reference.jsonl", "sft.jsonl"]


# MATH-500: problem, solution, answer, subject, level (int64), unique_id; one split, `test` (test.jsonl).
MATH500 = [
    {"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.",
     "solution": "We have $r = 3$ and $\\theta = \\frac{\\pi}{2}$, so $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
     "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
     "unique_id": "test/precalculus/807.json"},
    {"problem": "What is $1+1$?", "solution": "$1+1=\\boxed{2}$.", "answer": "2", "subject": "Prealgebra",
     "level": 1, "unique_id": "test/prealgebra/1.json"},
]


def test_math500_reference(tmp_path):
    folder = tmp_path / "MATH-500"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: mit\n---\n")  # the real card declares no configs
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATH500))
    rows = openr1.math500_reference(str(folder))
    assert rows[0] == {"prompt": [chat.system_message(), {"role": "user", "content": MATH500[0]["problem"]}],
                       "completion": [{"role": "assistant", "content": MATH500[0]["solution"]}]}
    assert len(rows) == 2
    bare = openr1.math500_reference(str(folder / "test.jsonl"), system_prompt=None)
    assert [r["prompt"][0]["role"] for r in bare] == ["user", "user"]
    (folder / "test.jsonl").write_text(json.dumps({"question": "x", "solution": "y"}) + "\n")
    with pytest.raises(ValueError, match="missing column\\(s\\) problem"):
        openr1.math500_reference(str(folder))

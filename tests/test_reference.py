"""Heterogeneous subjects (issue 18): a checkpoint and its reference that differ in tensors, dtypes or configs, on
tiny OLMo-2 models built here. A tensor missing or misshapen is an error naming it, the run and step and the
reference, unless diff.tensor_mismatch is shared; a dtype cast and config differences are stated in the tables."""
import json
import math
import re
import shutil

import pytest
import torch
from conftest import write_tiny_study
from safetensors.torch import load_file, save_file
from scalpel import config as study_config
from scalpel.analysis import diff, reference, weights
from test_import import _dry_run

Q0 = "model.layers.0.self_attn.q_proj.weight"
UP1 = "model.layers.1.mlp.up_proj.weight"
K0 = "model.layers.0.self_attn.k_proj.weight"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    write_tiny_study(folder)
    return folder / "base"


def _variant(base, folder, change=None, config=None, dtype=None):
    """A copy of the tiny base with tensors changed (None drops one), config.json keys set, or all cast to dtype."""
    shutil.copytree(base, folder)
    tensors = load_file(base / "model.safetensors")
    for name, value in (change or {}).items():
        tensors.pop(name) if value is None else tensors.update({name: value(tensors[name])})
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    if config:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, **config}))
    return folder


@pytest.fixture(scope="module")
def uneven(base, tmp_path_factory):
    """q_proj of layer 0 moved by half its norm, up_proj of layer 1 one row short, k_proj of layer 0 missing."""
    return _variant(base, tmp_path_factory.mktemp("uneven") / "ckpt",
                    {Q0: lambda w: w * 1.5, UP1: lambda w: w[:-1].clone(), K0: None})


def test_a_misshapen_or_missing_tensor_names_it_the_run_step_and_reference(base, uneven):
    with pytest.raises(ValueError) as err:
        reference.check(base, uneven, run="dpo", step=3, reference="sft@5")
    message = str(err.value)
    assert message.startswith(f"{K0}: missing in run dpo step 3") and "in its reference sft@5" in message
    assert "2 tensor(s) differ" in message and "diff.tensor_mismatch: shared" in message
    for analysis in (lambda: diff.relative_updates(base, uneven),
                     lambda: weights.update_metrics(base, uneven, direct=False)):
        with pytest.raises(ValueError, match=re.escape(K0) + ".*diff.tensor_mismatch: shared"):
            analysis()


def test_shared_tensors_only_lists_what_is_left_out_and_analyses_the_rest(base, uneven):
    rows = reference.check(base, uneven, run="dpo", step=3, reference="sft@5", tensor_mismatch="shared")
    tensors = {r["name"]: (r["checkpoint"], r["reference_value"]) for r in rows if r["kind"] == "tensor"}
    assert tensors == {K0: ("missing", "[32, 32]"), UP1: ("[63, 32]", "[64, 32]")}
    assert all((r["run"], r["step"], r["reference"]) == ("dpo", 3, "sft@5") for r in rows)
    table = diff.relative_updates(base, uneven, tensor_mismatch="shared")
    analysed = set(zip(table.layer, table.module))
    assert len(table) == 2 * 7 - 2 and (0, "k_proj") not in analysed and (1, "up_proj") not in analysed
    assert table.set_index(["layer", "module"]).rel_update[(0, "q_proj")] == pytest.approx(0.5, rel=1e-6)
    assert table[table.module != "q_proj"].rel_update.abs().max() == 0
    update = weights.update_metrics(base, uneven, tensor_mismatch="shared", direct=False)
    assert list(zip(update.layer, update.module)) == list(zip(table.layer, table.module))
    assert update.rel_update.to_numpy() == pytest.approx(table.rel_update.to_numpy(), rel=1e-6)


def test_a_float32_subject_against_a_bf16_reference_is_cast_and_said_so(base, tmp_path):
    ref = _variant(base, tmp_path / "bf16", dtype=torch.bfloat16)
    subject = _variant(base, tmp_path / "f32", {Q0: lambda w: w * 1.5})
    (row,) = reference.check(ref, subject, run="zero", step=1, reference="base")
    assert (row["kind"], row["checkpoint"], row["reference_value"]) == ("dtype", "F32", "BF16")
    assert "compared in the checkpoint's float32: the reference cast" in row["note"]
    table = diff.relative_updates(ref, subject)
    assert set(table.dtype) == {"float32"} and set(table.reference_dtype) == {"bfloat16"}
    # against the bf16 rounding of the base: 0.5 of q_proj's norm, and the rounding alone elsewhere
    assert table.set_index(["layer", "module"]).rel_update[(0, "q_proj")] == pytest.approx(0.5, rel=1e-2)
    assert 0 < table[table.module != "q_proj"].rel_update.max() < 4e-3
    same = reference.check(base, subject, run="zero", step=1, reference="base")
    assert [(r["kind"], r["note"]) for r in same] == [("dtype", "same dtype")]


def test_config_differences_are_reported_with_both_values(base, tmp_path):
    """As transformers reads them: a legacy top-level rope_theta is the rope_parameters' one."""
    longer = _variant(base, tmp_path / "long", config={"max_position_embeddings": 1024, "rope_theta": 300000.0,
                                                       "rope_parameters": None, "transformers_version": "4.40.0"})
    rows = reference.check(base, longer, run="distill", step=1, reference="base")
    configs = {r["name"]: (r["checkpoint"], r["reference_value"]) for r in rows if r["kind"] == "config"}
    assert configs == {"max_position_embeddings": ("1024", "256"),
                       "rope_parameters.rope_theta": ("300000.0", "500000.0")}
    legacy = _variant(base, tmp_path / "legacy", config={"rope_theta": 500000.0, "rope_parameters": None})
    assert [r["kind"] for r in reference.check(base, legacy, run="x", step=1, reference="base")] == ["dtype"]
    assert diff.relative_updates(base, longer).rel_update.abs().max() == 0  # the weights are the same


def test_alignment_of_two_stages_takes_each_update_from_its_own_reference(base, tmp_path):
    """Stage b against a and stage c against b: cosine(b - a, c - b) on q_proj, as computed directly."""
    gen = torch.Generator().manual_seed(0)
    w = load_file(base / "model.safetensors")[Q0]
    d1, d2 = torch.randn(w.shape, generator=gen) * 0.1, torch.randn(w.shape, generator=gen) * 0.1
    d2 = d2 - 0.5 * d1  # correlated with the previous stage's update
    a = _variant(base, tmp_path / "a", {Q0: lambda v: v + d1})
    b = _variant(base, tmp_path / "b", {Q0: lambda v: v + d1 + d2})
    table = weights.run_alignment(base, a, b, base_b_dir=a, direct=False).set_index(["layer", "module"])
    expected = torch.nn.functional.cosine_similarity(d1.flatten().double(), ((w + d1 + d2) - (w + d1)).flatten()
                                                     .double(), dim=0)
    assert table.cosine[(0, "q_proj")] == pytest.approx(float(expected), rel=1e-5)
    assert table.cosine[(0, "q_proj")] < -0.2
    against_base = weights.run_alignment(base, a, b, direct=False).set_index(["layer", "module"])
    assert against_base.cosine[(0, "q_proj")] > 0.3  # (b - base) shares d1 with (a - base): not the same question


def test_the_tensor_policy_rides_on_the_weight_rules_arguments_only_when_set(tmp_path):
    assert study_config.mismatch_args({"diff": {"dtype_mismatch": "cast", "tensor_mismatch": "refuse"}}) == "cast"
    assert study_config.mismatch_args({"diff": {"dtype_mismatch": "cast", "tensor_mismatch": "shared"}}) == [
        "cast", "--tensor-mismatch", "shared"]
    (tmp_path / "copy" / "step-1").mkdir(parents=True)
    config = {"runs": {"copied": {"method": "import", "source": {"folder": "copy", "steps": [1]}}},
              "diff": {"tensor_mismatch": "shared"}}
    proc = _dry_run(tmp_path, config, "-p", "results/diff/copied/step-1.parquet",
                    "results/weights/update/copied/step-1.parquet", "results/tables/references.tsv")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shells = [line for line in proc.stdout.splitlines() if "python -m scalpel" in line]
    for command in ("scalpel weights update", "scalpel reference-check"):
        (line,) = [s for s in shells if command in s]
        assert "--tensor-mismatch shared" in line, line
    # diff reads the update pass's table, which already honoured the policy
    (line,) = [s for s in shells if "scalpel diff" in s]
    assert "--update results/weights/update/copied/step-1.parquet" in line and "--tensor-mismatch" not in line
    pairs = json.loads(re.search(r"--pairs '(.*?)' --tensor", [s for s in shells if "reference-check" in s][0])[1])
    assert pairs == [{"run": "copied", "step": 1, "reference": "base", "reference_dir": "results/models/base",
                      "checkpoint_dir": "results/runs/copied/checkpoints/step-1"}]


def test_weight_tables_name_each_rows_reference(base, tmp_path):
    """A stage chain a (against the base) -> b (against a): the update and alignment tables say which reference each
    row's update was taken from, and b's model-mean relative update is the pooled one against a."""
    from scalpel.io import write_parquet
    from scalpel.report import weight_tables

    a = _variant(base, tmp_path / "a", {Q0: lambda w: w * 1.5})
    b = _variant(base, tmp_path / "b", {Q0: lambda w: w * 1.5, UP1: lambda w: w * 0.5})
    runs = {"a": {"method": "import", "checkpoint_steps": [1]},
            "b": {"method": "import", "checkpoint_steps": [2], "reference": "a"}}
    files = []
    for run, step, ref, ckpt in (("a", 1, base, a), ("b", 2, a, b)):
        df = weights.update_metrics(ref, ckpt, direct=False)
        df.insert(0, "step", step)
        df.insert(0, "run", run)
        write_parquet(df, tmp_path / f"{run}.parquet")
        files.append(tmp_path / f"{run}.parquet")
    align = weights.run_alignment(base, a, b, base_b_dir=a, direct=False)
    for i, (col, value) in enumerate((("run_a", "a"), ("step_a", 1), ("run_b", "b"), ("step_b", 2))):
        align.insert(i, col, value)
    write_parquet(align, tmp_path / "align.parquet")
    out = weight_tables.write_tables(files, [], [tmp_path / "align.parquet"], runs, tmp_path / "tables")
    assert set(zip(out["weights_update"].run, out["weights_update"].reference)) == {("a", "base"), ("b", "a@1")}
    means = out["weights_means"].set_index("run")
    assert means.loc["b", "reference"] == "a@1"
    up = load_file(base / "model.safetensors")[UP1].double()
    total = sum(float(t.double().square().sum()) for n, t in load_file(a / "model.safetensors").items()
                if re.search(r"layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$", n))
    expected = math.sqrt(float((0.5 * up).square().sum()) / total)
    assert means.loc["b", "rel_update"] == pytest.approx(expected, rel=1e-6)
    row = out["weights_align_means"].iloc[0]
    assert (row.reference_a, row.reference_b) == ("base", "a@1")
    # a moved only q_proj, b (from a) only up_proj: orthogonal updates on disjoint weights; against the base, b's
    # update would contain a's and the cosine would not be 0
    assert (row.cosine, row.jaccard, row.updated_b) == (0.0, 0.0, pytest.approx(0.1))


def test_kl_refuses_two_vocabularies(base):
    from scalpel.analysis.kl import kl_divergence
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference_model = AutoModelForCausalLM.from_pretrained(base)
    resized = AutoModelForCausalLM.from_pretrained(base)
    resized.resize_token_embeddings(resized.config.vocab_size + 8)
    example = [{"prompt": [{"role": "user", "content": "1+1"}], "completion": [{"role": "assistant", "content": "2"}]}]
    with pytest.raises(ValueError, match="300 output tokens in the reference but 308 in the checkpoint"):
        kl_divergence(reference_model, resized, AutoTokenizer.from_pretrained(base), example)

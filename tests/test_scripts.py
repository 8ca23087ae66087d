"""Every script the repository keeps runs its smallest case here, checked on its values (a script nothing runs
breaks silently). write_spec.py is a rule's script and runs in every study (tests/test_workflow.py)."""
import importlib.util
import json

import pytest
from conftest import ROOT


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weight_pass_benchmark_smallest_case_measures_the_known_perturbation(tmp_path):
    bench = _load(ROOT / "workflow/scripts/benchmark_weight_pass.py")
    out = tmp_path / "report.json"
    bench.main(["--root", str(tmp_path / "pairs"), "--layers", "1", "--shrink", "64", "--with-diff", "--with-align",
                "--pass-threads", "1", "2", "--warm", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["cache_dropped"] is False and report["shrink"] == 64
    for threads in (1, 2):  # the pass beside the raw read of the same run
        timed = report[f"update_metrics_threads_{threads}"]
        assert timed["wall_s"] > 0 and timed["cpu_s"] > 0 and 0 < timed["peak_rss_gib"] < 1
        assert timed["vs_raw_read"] == timed["wall_s"] / report["raw_read_2"]["wall_s"]
    # every 3rd element moved one ulp: the unchanged fraction is known exactly; the pass's diff table is diff's
    # former float64 arithmetic but for summation order
    assert report["update_unchanged_max_error"] < 1e-9
    assert report["diff_columns_equal"] is True
    assert max(report["diff_max_rel_difference_to_old_diff"].values()) < 1e-12
    # checkpoint B moved every 6th element, a subset of A's every 3rd: Jaccard 1/2
    assert report["align_jaccard_range"] == [0.5, 0.5]
    assert not (tmp_path / "pairs/base").exists()  # scratch removed without --keep



TINY_GPU_SMOKE = ["--cpu", "--hidden-size", "32", "--layers", "2", "--heads", "2", "--intermediate-size", "64",
                  "--vocab-size", "512", "--max-length", "256", "--steps", "2", "--sft-batch", "4", "--grpo-prompts",
                  "1", "--num-generations", "4", "--max-completion-length", "16", "--new-tokens", "8",
                  "--eval-limit", "1", "--peak-tflops", "1"]


def test_gpu_smoke_flops_by_hand():
    smoke = _load(ROOT / "workflow/scripts/gpu_smoke.py")
    assert smoke.training_flops_per_token(100, 2, 4, 10) == 6 * 100 + 12 * 2 * 4 * 10  # 1,560
    assert smoke.mfu(1560, 1e6, 1.0) == pytest.approx(1.56e-3)
    assert smoke.mfu(1560, 1e6, None) != smoke.mfu(1560, 1e6, None)  # nan: no peak known


@pytest.mark.integration
def test_gpu_smoke_runs_the_path_on_cpu_with_a_tiny_model(tmp_path, capsys):
    """The one-GPU script's smallest case: ZeRO-3 SFT and GRPO through accelerate, generation, lm-eval; its printed
    numbers checked against the batches it trained on and a hand computation of MFU."""
    import re

    import yaml
    from scalpel.train import trainer as train

    smoke = _load(ROOT / "workflow/scripts/gpu_smoke.py")
    smoke.main(["--outdir", str(tmp_path), *TINY_GPU_SMOKE])
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "gpu_smoke.json").read_text())
    sft = result["sft"]
    assert f"sft step_s={sft['step_s']} tokens_per_step={sft['tokens_per_step']}" in printed
    # every SFT row is the same conversation: a step's tokens are 4 x its length as TRL tokenized it
    spec = yaml.safe_load((tmp_path / "sft/spec.yaml").read_text())
    trainer = train.build_trainer(spec, str(tmp_path / "base"), str(tmp_path / "sft.jsonl"), tmp_path / "s")
    dataset = trainer.train_dataset
    assert sft["batch"] == 4 and sft["tokens_per_step"] == [4 * len(dataset[0]["input_ids"])] * 2
    seq = sft["tokens_per_step"][0] / 4
    assert sft["mfu"] == pytest.approx((6 * result["params"] + 12 * 2 * 32 * seq) * sft["tokens_per_s"] / 1e12)
    assert float(re.search(r"^sft .* mfu=(\S+)", printed, re.M).group(1)) == pytest.approx(sft["mfu"])
    assert result["grpo"]["batch"] == 4 and result["grpo"]["generated_tokens_per_s"] > 0
    gen = result["generate"]
    assert gen["generated_tokens"] == 2 * 8 and gen["tokens_per_s"] == pytest.approx(16 / gen["seconds"])
    assert gen["mfu"] == pytest.approx(2 * result["params"] * gen["tokens_per_s"] / 1e12)
    assert result["lm_eval"]["items"] == 2 and result["lm_eval"]["generated_tokens"] > 0

"""Every script the repository keeps runs its smallest case here, checked on its values (a script nothing runs
breaks silently). write_spec.py is a rule's script and runs in every study (tests/test_workflow.py)."""
import importlib.util
import json

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


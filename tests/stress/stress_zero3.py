"""Run the 2-process ZeRO-3 training of tests/test_deepspeed.py N times under a CPU load; print how many passed.

    python tests/stress/stress_zero3.py [-n 20] [--burners 2] [--workdir DIR]

A run is the training rule's two commands, training under the launcher then publishing (run only when the launcher
exited 0, which it does only when every rank did). It passes when both exit 0, both ranks logged their end, the state
was stamped finished before publishing, and the run is published: checkpoints step-2 and step-4 with weights, the
trainer log, and no state folder left. Each run's weights are compared with the first run's (the same computation:
equal). `--burners` busy-loop processes load the CPUs meanwhile (default: one per core), which makes exit-time races
(a rank aborting in its teardown, a rank leaving while rank 0 still publishes) likelier. Exit status 0 when every run
passed. CI runs its smallest case (tests/test_deepspeed.py).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from conftest import ROOT, write_tiny_study  # noqa: E402


def _burn():
    while True:
        pass


def _passed(run_dir: Path, returncode: int, stamped: bool) -> tuple[bool, str]:
    if returncode != 0:
        return False, f"launcher exit {returncode}"
    text = (run_dir / "train.log").read_text()
    ended = [r for r in (0, 1) if f"process {r}: training of run sft finished" in text]
    if ended != [0, 1]:
        return False, f"ranks that logged their end: {ended}"
    if not stamped:
        return False, "state not stamped finished after training"
    missing = [s for s in (2, 4) if not list((run_dir / f"checkpoints/step-{s}").glob("*.safetensors"))]
    if missing:
        return False, f"no published weights for steps {missing}"
    if not (run_dir / "log.json").is_file():
        return False, "no trainer log"
    if (run_dir / "state").exists():
        return False, "state folder left behind"
    return True, "ok"


def _max_diff(a: Path, b: Path) -> float:
    from test_deepspeed import _weights

    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[n] - wb[n]).abs().max().item() for n in wa)


def main(argv=None) -> list[dict]:
    """Run the stress; return one record per run (`passed`, `why`, `returncode`, `stamped`, `seconds`, `dir`,
    `max_diff`: the largest weight difference from the first passing run's published checkpoints)."""
    from scalpel.io import write_yaml
    from scalpel.train import launch
    from scalpel.train.publish import is_finished
    from test_deepspeed import GLOBAL_BATCH, publish_command, sft_spec, train_args

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20, help="training runs (default 20)")
    ap.add_argument("--burners", type=int, default=os.cpu_count(), help="busy-loop processes (default: one per core)")
    ap.add_argument("--workdir", default=None, help="default: a new temporary folder")
    a = ap.parse_args(argv)

    work = Path(a.workdir or tempfile.mkdtemp(prefix="stress_zero3."))
    work.mkdir(parents=True, exist_ok=True)
    write_tiny_study(work)
    spec = sft_spec(GLOBAL_BATCH // 2, True)
    write_yaml(spec, work / "spec.yaml")
    files = launch.write_launch_files(work / "launch", 3, 2, use_cpu=True, bf16=False, threshold=0,
                                      main_process_port=0)
    prefix = launch.train_command(spec["launch"], 2, files)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "workflow"), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(a.burners)]
    for b in burners:
        b.start()
    results, first = [], None
    try:
        for i in range(a.n):
            d = work / f"run{i:02d}"
            cmd = [*map(str, prefix), *train_args(work / "spec.yaml", work / "base", work / "sft.jsonl", d)]
            d.mkdir()
            start = time.monotonic()
            with open(d / "train.log", "w") as log:
                proc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
                stamped = is_finished(d / "state", spec)
                if proc.returncode == 0:
                    proc = subprocess.run(publish_command(work / "spec.yaml", d), cwd=work, env=env, stdout=log,
                                          stderr=subprocess.STDOUT)
            ok, why = _passed(d, proc.returncode, stamped)
            diff = None
            if ok:
                first = first or d
                diff = max(_max_diff(first / f"checkpoints/step-{s}", d / f"checkpoints/step-{s}") for s in (2, 4))
            results.append({"passed": ok, "why": why, "returncode": proc.returncode, "stamped": stamped, "dir": d,
                            "seconds": time.monotonic() - start, "max_diff": diff})
            print(f"run {i + 1:2d}/{a.n}: {'passed' if ok else 'FAILED'} ({why}) in {results[-1]['seconds']:.0f} s,"
                  f" max weight difference from run {first.name if first else '-'}: {diff} - {d / 'train.log'}",
                  flush=True)
    finally:
        for b in burners:
            b.terminate()
    print(f"{sum(r['passed'] for r in results)} of {a.n} passed (burners: {a.burners}, cores: {os.cpu_count()}, "
          f"work: {work})")
    return results


if __name__ == "__main__":
    sys.exit(0 if all(r["passed"] for r in main()) else 1)

"""vLLM server mode: one GPU serves, the others train (the serving itself needs a GPU and vLLM: cluster only)."""
import json
import subprocess
import sys

import pytest
from scalpel.train import vllm_server


def test_last_gpu_serves_and_the_others_train():
    gpus = ["0", "1", "2", "3", "4", "5", "6", "7"]
    assert vllm_server.split_gpus(gpus) == (gpus[:7], "7")
    with pytest.raises(ValueError, match="at least 2 GPUs.*launch.vllm.mode"):
        vllm_server.split_gpus(["0"])


def test_server_command_is_trls_vllm_serve():
    cmd = vllm_server.server_command("results/models/base", 8123, 0.7, "bfloat16", 4096)
    assert cmd[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", "results/models/base"]
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert flags["--port"] == "8123" and flags["--gpu-memory-utilization"] == "0.7"
    assert flags["--dtype"] == "bfloat16" and flags["--max-model-len"] == "4096" and flags["--host"] == "127.0.0.1"
    assert "--weight-transfer-config" in cmd  # the endpoint GRPOTrainer pushes its weights through


def test_wrapper_gives_the_trainer_the_other_gpus_and_the_server_url(tmp_path):
    """The real wrapper, as the train rule runs it; the server cannot start here (no vLLM), training still runs
    with the split GPUs and the server's URL, and the wrapper returns training's exit code."""
    probe = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in "
             "('CUDA_VISIBLE_DEVICES', 'SCALPEL_VLLM_SERVER_URL')})); raise SystemExit(3)")
    out = subprocess.run(
        [sys.executable, "-m", "scalpel", "vllm-server", "--model", "m", "--port", "8124", "--server-log",
         str(tmp_path / "server.log"), "--", sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=120,
        env={"CUDA_VISIBLE_DEVICES": "4,5,6", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
    )
    assert out.returncode == 3, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"CUDA_VISIBLE_DEVICES": "4,5", "SCALPEL_VLLM_SERVER_URL": "http://127.0.0.1:8124"}
    assert "vLLM server on GPU 6" in out.stderr
    assert (tmp_path / "server.log").is_file()

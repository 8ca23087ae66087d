"""Training on several nodes: how each node's launcher is derived from the Slurm environment, and a real 2-machine
ZeRO-3 run as a Slurm job on the local cluster (2 tasks of one node standing in for 2 nodes)."""
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, write_tiny_study
from scalpel import config, slurm_preview
from scalpel.io import write_yaml
from scalpel.train import launch
from test_deepspeed import GLOBAL_BATCH, _run, assert_same_training, publish_command, sft_spec, train_args
from test_slurm import SMOKE, cluster, planned_resources, snakemake  # noqa: F401 (fixture)

NODE = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_JOB_NODELIST": "gpu07,gpu08", "SLURM_JOB_ID": "4321"}


def test_node_launcher_takes_rank_address_and_processes_from_slurm():
    gpu = launch.node_command({**NODE, "SLURM_GPUS_ON_NODE": "8"}, "/x/accelerate.yaml", cpu_processes=3)
    flags = dict(zip(gpu[2:-2:2], gpu[3:-2:2]))
    assert gpu[:2] == ["accelerate", "launch"] and gpu[-2:] == ["-m", "scalpel"]
    assert flags == {"--config_file": "/x/accelerate.yaml", "--num_processes": "16", "--num_machines": "2",
                     "--machine_rank": "1", "--main_process_ip": "gpu07", "--main_process_port": "24321",
                     "--rdzv_backend": "static", "--deepspeed_multinode_launcher": "standard"}
    cpu = launch.node_command({**NODE, "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, "a.yaml", cpu_processes=3)
    assert cpu[cpu.index("--num_processes") + 1] == "12" and cpu[cpu.index("--machine_rank") + 1] == "0"
    assert cpu[cpu.index("--num_machines") + 1] == "4"


def test_first_host_expands_slurm_ranges():
    assert launch.first_host("cpu3,gpu07") == "cpu3"
    try:
        expanded = launch.first_host("gpu[007-009,012],cpu1")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no scontrol with a Slurm config here")
    assert expanded == "gpu007"


def test_srun_starts_one_launcher_per_node_with_the_node_cpus():
    env = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_CPUS_PER_GPU": "8", "SLURM_STEP_ID": "0",
           "SBATCH_GRES": "gpu:8", "PATH": "/bin", "HOME": "/h"}
    cmd, step_env = launch.srun_command(env, 2, ["--config-file", "a.yaml", "train"], shape=(2, 64))
    assert cmd[:6] == ["srun", "--overlap", "--nodes=2", "--ntasks=2", "--cpus-per-task=64", "--kill-on-bad-exit=1"]
    assert cmd[6:] == [sys.executable, "-m", "scalpel", "launch", "node", "--config-file", "a.yaml", "train"]
    # The job's identity stays; the executor's step settings (1 task, --cpus-per-gpu) must not reach the new step.
    assert step_env == {"SLURM_JOB_ID": "7", "PATH": "/bin", "HOME": "/h"}
    # A one-node test allocation: both machines on it, its CPUs split between them.
    cmd, _ = launch.srun_command(env, 2, [], shape=(1, 2))
    assert cmd[2:5] == ["--nodes=1", "--ntasks=2", "--cpus-per-task=1"]
    with pytest.raises(ValueError, match="multiple"):
        launch.srun_command(env, 3, [], shape=(2, 64))
    with pytest.raises(ValueError, match="inside a Slurm job"):
        launch.srun_command({"PATH": "/bin"}, 2, [])


def test_gpus_per_node_of_a_gres_request():
    assert [launch.gres_gpus(g) for g in ("gpu:8", "gpu:h100:4", "gpu", "", "shard:2,gpu:a100:2")] == [8, 4, 1, 0, 2]


def test_several_nodes_need_deepspeed():
    config.check_launch({"launch": {"nodes": 1}})
    config.check_launch({"launch": {"nodes": 2, "deepspeed": {"enabled": True}}})
    with pytest.raises(config.ConfigError, match=r"launch.nodes is 2: .*launch.deepspeed.enabled"):
        config.check_launch({"launch": {"nodes": 2, "deepspeed": {"enabled": False}}})
    with pytest.raises(config.ConfigError, match="launch.vllm.mode"):
        config.check_launch({"launch": {"nodes": 2, "deepspeed": {"enabled": True},
                                        "vllm": {"enabled": True, "mode": "server"}}})


@pytest.mark.slurm
@pytest.mark.integration
def test_two_machines_in_a_slurm_job_train_as_one_process(cluster, tmp_path):  # noqa: F811
    write_tiny_study(tmp_path)
    # DeepSpeed JIT-builds its CPU op into a cache keyed by name only; a private one is not rebuilt by other venvs.
    env = {"TORCH_EXTENSIONS_DIR": os.path.join(sys.prefix, "torch_extensions")}
    plain, machines = tmp_path / "plain", tmp_path / "machines"
    for d, per_device, deepspeed in ((plain, GLOBAL_BATCH, False), (machines, GLOBAL_BATCH // 2, True)):
        d.mkdir()
        write_yaml(sft_spec(per_device, deepspeed), d / "spec.yaml")
    args = lambda d: train_args(d / "spec.yaml", tmp_path / "base", tmp_path / "sft.jsonl", d)  # noqa: E731
    _run([sys.executable, "-m", "scalpel", *args(plain)], tmp_path, plain / "train.log", **env)
    _run(publish_command(plain / "spec.yaml", plain), tmp_path, plain / "publish.log")

    yaml_file = launch.write_launch_files(machines / "launch", 3, 1, use_cpu=True, bf16=False, threshold=0)
    entry = [sys.executable, "-m", "scalpel", "launch", "slurm", "--machines", "2", "--config-file", yaml_file,
             "--cpu-processes", "1", *args(machines), "&&", *publish_command(machines / "spec.yaml", machines)]
    # -n 2: both tasks on this one node, each a machine of one process. -t 4: Slurm kills it after 4 minutes.
    job = ["sbatch", "--parsable", "--wait", "-A", "ci", "-p", "debug", "-n", "2", "-t", "4", "--mem", "4000",
           "-J", "multinode-test", "-o", str(machines / "job.log"), "-D", str(tmp_path),
           "--wrap", " ".join(map(str, entry))]
    env.update(PYTHONPATH=str(ROOT / "workflow"), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(job, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    job_id = proc.stdout.readline().strip()
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            subprocess.run(["scancel", job_id])
            proc.kill()
    log = (machines / "job.log").read_text()
    assert proc.returncode == 0, log[-5000:]

    steps = subprocess.run(["sacct", "-j", job_id, "--parsable2", "--noheader", "--format=JobID,State,NTasks"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert f"{job_id}.0|COMPLETED|2" in steps, steps
    # The job's shape came from Slurm: 1 node of 2 CPUs, one for each machine.
    assert re.search(r"^srun --overlap --nodes=1 --ntasks=2 --cpus-per-task=1 ", log, re.MULTILINE), log[:3000]
    launches = re.findall(r"^accelerate launch .*$", log, re.MULTILINE)
    assert len(launches) == 2, log[-5000:]
    ranks = sorted(re.search(r"--machine_rank (\d+)", line).group(1) for line in launches)
    assert ranks == ["0", "1"]
    for line in launches:
        assert "--num_processes 2 --num_machines 2" in line and "--rdzv_backend static" in line
    # Both machines took part in one world of 2.
    assert sorted(re.findall(r"process (\d) of 2, machine (\d)", log)) == [("0", "0"), ("1", "1")]
    assert_same_training(tmp_path / "base", plain, machines)


def test_several_nodes_plan_train_jobs_with_their_nodes_and_refuse_a_gpu_total(tmp_path):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["launch"] = {"nodes": 2, "deepspeed": {"enabled": True}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    common = ["-n", "-p", "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(tmp_path / "config.yaml")]
    proc, _ = snakemake(tmp_path, *common, bound=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for rule in ("train_grpo", "train_sft"):
        planned = planned_resources(out)[rule]
        assert (planned["nodes"], planned["tasks"], planned["tasks_per_gpu"], planned["mpi"]) == ("2", "2", "0", "srun")
    assert "python -m scalpel launch slurm --machines 2 --config-file results/launch/accelerate.yaml" in out
    single, _ = snakemake(tmp_path, *common[:-1], str(SMOKE), bound=300)  # one node: the rules ask for nothing more
    assert not {"nodes", "tasks", "mpi"} & set(planned_resources(single.stdout + single.stderr)["train_sft"])
    # profiles/slurm asks for `gpu: 8`, a total over the job: with several nodes that is refused, naming the fix.
    env = {"SLURM_ACCOUNT": "a", "SLURM_PARTITION": "p", "SLURM_GPU_PARTITION": "g"}
    proc, _ = snakemake(tmp_path, *common, "--profile", str(ROOT / "profiles/slurm"), *slurm_preview.deployment_args(),
                        bound=300, env=env)
    assert proc.returncode != 0
    assert "launch.nodes is 2: ask for GPUs per node with the resource gres" in proc.stdout + proc.stderr

"""One training run (GRPO or SFT) through TRL, with checkpoints exported as plain HF folders on the spec's schedule.

Trainer state (optimizer, scheduler, RNG) and the checkpoints exported so far live in `state_dir`, which the
workflow never declares as an output, so a killed job keeps them and a rerun resumes from the newest complete
checkpoint. Training writes nothing else: once every rank is done, the main process stamps the state finished, all
ranks leave the process group and exit 0 (`exit_now`, past the libraries' teardown), and only then does `scalpel
publish` (publish.py) put the checkpoints in the declared outputs. A rerun finding the stamp trains nothing.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import yaml
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from scalpel import config, faults
from scalpel.io import atomic_output, read_jsonl
from scalpel.tasks import rewards
from scalpel.train import params, vllm_server
from scalpel.train.publish import clear_folder, is_finished, mark_finished, spec_hash

log = logging.getLogger(__name__)
MODEL_FILE_NAMES = ("config.json", "generation_config.json", "chat_template.jinja", "special_tokens_map.json",
               "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json")


def export_checkpoint(src: Path, dest: Path) -> None:
    """Copy the loadable model files of a trainer checkpoint to `dest`, atomically (tmp folder, then rename)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = [p.name for p in src.iterdir()
             if p.is_file() and (p.suffix == ".safetensors" or p.name in MODEL_FILE_NAMES)]
    if not any(n.endswith(".safetensors") for n in names):
        raise FileNotFoundError(f"{src} holds no safetensors weights (ZeRO-3 needs zero3_save_16bit_model)")
    for name in names:
        shutil.copy2(src / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


class CheckpointSchedule(TrainerCallback):
    """Save at exactly the spec's checkpoint steps and export each save to `<export_dir>/step-<N>`."""

    def __init__(self, steps: list[int], export_dir: Path):
        self.steps, self.export_dir = set(steps), export_dir

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            control.should_save = True
        if state.is_world_process_zero:
            faults.reach(f"step-{state.global_step}")
        return control

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step in self.steps:
            src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            export_checkpoint(src, self.export_dir / f"step-{state.global_step}")
            log.info("exported checkpoint step %d", state.global_step)
        return control


def process_age_s() -> float:
    """Seconds since this process started (the launcher starts each rank; loading, ZeRO-3 and vLLM set-up follow)."""
    import psutil

    return time.time() - psutil.Process().create_time()


class Throughput(TrainerCallback):
    """Rates written into each logged entry of the log history (logging_steps 1: per optimizer step): `step_s`, the
    seconds per optimizer step since the last log (checkpoint saves left out), `tokens_per_s` (TRL's `num_tokens`:
    prompt and completion tokens of every process, padding excluded) and, for GRPO, `generated_tokens_per_s`
    (completion tokens over the seconds spent in the trainer's `_generate`, on the main process). `setup_s` (process
    start to the first step: loading, ZeRO-3 and vLLM set-up) goes into the first entry, `save_s` into the entry of
    each step that saved a checkpoint."""

    def __init__(self):
        self.generate_s = 0.0
        self._t = self._step = self._tokens = self._generated = self._setup = None

    def time_generation(self, trainer) -> None:
        generate = trainer._generate

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return generate(*args, **kwargs)
            finally:
                self.generate_s += time.perf_counter() - start

        trainer._generate = timed

    def on_train_begin(self, args, state, control, **kwargs):
        self._setup, self._t, self._step = process_age_s(), time.perf_counter(), state.global_step
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs, entry, now = logs or {}, state.log_history[-1], time.perf_counter()
        steps = state.global_step - self._step
        if steps <= 0 or "num_tokens" not in logs:
            return control
        seconds = now - self._t
        rates = {"step_s": seconds / steps, "steps_timed": steps, "processes": args.world_size,
                 "batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size}
        if self._tokens is not None:  # num_tokens counts from the first step: the first entry's tokens are its own
            rates["tokens_per_s"] = (logs["num_tokens"] - self._tokens) / seconds
        else:
            rates["tokens_per_s"] = logs["num_tokens"] / seconds
        if "completions/mean_length" in logs and self.generate_s > 0:
            generated = logs["completions/mean_length"] * rates["batch"] * steps
            rates.update(generated_tokens=generated, generate_s=self.generate_s,
                         generated_tokens_per_s=generated / self.generate_s)
        if self._setup is not None:
            rates["setup_s"], self._setup = self._setup, None
        entry.update(rates)
        self._t, self._step, self._tokens, self.generate_s = now, state.global_step, logs["num_tokens"], 0.0
        return control

    def on_save(self, args, state, control, **kwargs):
        now = time.perf_counter()
        entry = state.log_history[-1] if state.log_history else {}
        if entry.get("step") == state.global_step and "step_s" in entry:
            entry["save_s"] = now - self._t
        self._t = now
        return control


def max_over_ranks(value: int) -> int:
    """The largest `value` of all ranks when torch.distributed is initialised (every rank must call), else `value`."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    # nccl reduces CUDA tensors only; gloo (and DeepSpeed's CPU backends) CPU tensors.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


class StopOnSignal(TrainerCallback):
    """On SIGTERM (Slurm's `--signal` before the wall time, or scancel), save at the end of the step and stop.

    Ranks may see the signal a step apart; the save is collective, so at every step end they agree (max over ranks)
    and all stop at the first step end where any of them has it. `stopped_by` is then that signal on every rank.
    """

    def __init__(self):
        self.received = None
        self.stopped_by = None
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("received signal %d: saving at the end of this step, then stopping", signum)
        self.received = signum

    def on_step_end(self, args, state, control, **kwargs):
        stop = max_over_ranks(self.received or 0)
        if stop:
            self.stopped_by = stop
            control.should_save = control.should_training_stop = True
        return control


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # set by accelerate/torchrun for every process


def prepare_state_dir(state_dir: Path, spec: dict, is_main: bool = True, wait_s: float = 600.0) -> str | None:
    """Return the checkpoint to resume from, after wiping state left by a different spec.

    Only the main process wipes and stamps the folder; the others wait for its stamp, so that no rank deletes state
    another is about to resume from.
    """
    stamp = state_dir / "spec.sha256"
    digest = spec_hash(spec)
    if is_main:
        if state_dir.exists() and any(state_dir.iterdir()) and (not stamp.exists() or stamp.read_text() != digest):
            log.warning("trainer state in %s belongs to another spec: starting from step 0", state_dir)
            clear_folder(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        for partial in [*incomplete_checkpoints(state_dir), *state_dir.glob("exports/*.tmp")]:
            log.warning("deleting %s, cut off while saving", partial)
            shutil.rmtree(partial)
        with atomic_output(stamp) as tmp:
            tmp.write_text(digest)
    else:
        deadline = time.monotonic() + wait_s
        while not (stamp.exists() and stamp.read_text() == digest):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the main process did not prepare {state_dir} within {wait_s:.0f} s")
            time.sleep(0.5)
    last = newest_checkpoint(state_dir)
    if last is not None:
        log.info("resuming from %s", last)
    return last


def _is_complete(checkpoint: Path) -> bool:
    """The trainer writes trainer_state.json last, and not atomically: a checkpoint without it, or with a cut-off one
    (a kill or a full disk while writing it), was cut off while saving."""
    try:
        return isinstance(json.loads((checkpoint / "trainer_state.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def incomplete_checkpoints(state_dir: Path) -> list[Path]:
    return [p for p in state_dir.glob("checkpoint-*") if not _is_complete(p)]


def newest_checkpoint(state_dir: Path) -> str | None:
    """The newest complete trainer checkpoint in `state_dir`."""
    complete = [p for p in state_dir.glob("checkpoint-*") if _is_complete(p)]
    return str(max(complete, key=lambda p: int(p.name.split("-")[1]))) if complete else None


FULL_BELOW = 1 << 20  # bytes free under which a failed write is taken for a full disk


def disk_full_error(err: BaseException, state_dir: Path, step: int) -> OSError | None:
    """A clear error for `err` if it came from a full disk under `state_dir`, else None.

    Python reports a full disk as ENOSPC, safetensors as StorageFull, but torch.save only as a failed write
    ("file write failed", "basic_ios::clear: iostream error", "unexpected pos"): so, ENOSPC or StorageFull anywhere in
    the exception chain, or an I/O error with (almost) no space left.
    """
    chain, e = [], err
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    full = any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in chain) or any(
        "No space left on device" in str(e) or "StorageFull" in str(e) for e in chain)
    io_error = any(isinstance(e, OSError) or any(w in str(e) for w in ("write", "iostream", "unexpected pos"))
                   for e in chain)
    if not full and io_error:
        try:
            full = shutil.disk_usage(state_dir).free < FULL_BELOW
        except OSError:
            return None
    if not full:
        return None
    return OSError(errno.ENOSPC, f"no space left on the disk of {state_dir} after step {step} ({err!r}); the newest "
                                 f"complete checkpoint, {newest_checkpoint(state_dir) or 'none'}, is intact: free "
                                 "space, then rerun to resume from it")


def shutdown_ranks(failed: bool) -> bool:
    """Wait for every rank, and agree whether any `failed`; then leave the process group (on every rank).

    Called after training on every rank, so that no rank exits while the main process still saves or stamps the
    state: a launcher that sees one process exit non-zero kills the others and reports the whole run failed. This
    does not end gloo's threads: destroy_process_group only drops torch's own references to the groups
    (pytorch/pytorch#96017), so their threads run until the process ends; `exit_now` then ends it.
    """
    import torch.distributed as dist

    failed = bool(max_over_ranks(int(failed)))
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return failed


def exit_now(status: int) -> None:
    """End this rank with `status` at once, its logs and output flushed, skipping interpreter teardown.

    Called only once the training's outcome is durable: the main process has stamped the state (or every rank saved
    on a stop signal) and every rank has passed `shutdown_ranks`' final collective. Past that point a normal exit
    only tears down the libraries, and that teardown sometimes aborts a rank: `terminate called without an active
    exception` (SIGABRT, a C++ std::thread destroyed while still joinable,
    https://en.cppreference.com/w/cpp/thread/thread/~thread) after the rank logged its end, once in 8 runs under CPU
    load. The native threads alive then are gloo's (`gloo_tcp_loop`, `pt_gloo_runloop`) of two process groups
    that `destroy_process_group` unregistered but that are never destroyed, pyarrow's jemalloc thread and tqdm's
    monitor; the launcher (torch.distributed.elastic) reports any non-zero rank as a failed job, which the cluster
    then retries. `os._exit` runs no atexit hook, thread join nor C++ static destructor
    (https://docs.python.org/3/library/os.html#os._exit): nothing of the training is lost, since every file it
    writes is complete (atomic renames) before this.
    """
    logging.shutdown()  # flush and close the log handlers
    for stream in (sys.stdout, sys.stderr):  # stdout is block-buffered into a job log (the trainer's metrics)
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _arm_save_fault(trainer, state_dir: Path) -> None:
    """SCALPEL_FAULT's `save-<N>` phase: inside the trainer's save of checkpoint N, after the weights (faults.py)."""
    if not os.environ.get(faults.VARIABLE, "").partition(":")[2].startswith("save-"):
        return
    save = trainer._save_optimizer_and_scheduler

    def save_with_fault(output_dir):
        faults.reach(f"save-{trainer.state.global_step}", state_dir)
        return save(output_dir)

    trainer._save_optimizer_and_scheduler = save_with_fault


def attn_implementation(choice: str | None) -> str | None:
    """`model.attn_implementation`; auto = flash_attention_2 where flash-attn is installed and CUDA present, else
    sdpa."""
    if choice in (None, "auto"):
        import importlib.util

        import torch
        return "flash_attention_2" if importlib.util.find_spec("flash_attn") and torch.cuda.is_available() else "sdpa"
    return choice


def trainer_args(spec: dict, state_dir: Path) -> dict:
    args = dict(spec["args"])
    args.update(output_dir=str(state_dir), max_steps=spec["steps"], save_strategy="no", seed=spec["seed"])
    args.setdefault("save_total_limit", 1)
    args.setdefault("report_to", "none")
    args.setdefault("disable_tqdm", True)  # log lines, not progress bars, in the job logs
    if spec.get("global_batch_size"):
        processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate for every process
        per_device, accumulation = config.micro_batches(
            spec["global_batch_size"], processes, args.get("per_device_train_batch_size", 8),
            args.get("num_generations") if spec["method"] == "grpo" else None, f"runs.{spec['name']}.global_batch_size")
        args.update(per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation)
        log.info("%d per step = %d processes x %d per device x %d accumulation", spec["global_batch_size"],
                 processes, per_device, accumulation)
    vllm = spec["launch"].get("vllm", {})
    if spec["method"] == "grpo" and vllm.get("enabled"):
        args.update(use_vllm=True, vllm_mode=vllm["mode"], vllm_gpu_memory_utilization=vllm["gpu_memory_utilization"])
        if vllm["mode"] == "server" and os.environ.get(vllm_server.URL_VARIABLE):
            # a 7B server takes minutes to load; TRL's default wait is 240 s
            args.update(vllm_server_base_url=os.environ[vllm_server.URL_VARIABLE], vllm_server_timeout=1800)
    return args


def build_trainer(spec: dict, base: str, data_file: str, state_dir: Path):
    from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    config_cls = GRPOConfig if spec["method"] == "grpo" else SFTConfig
    try:
        args = config_cls(**trainer_args(spec, state_dir))  # built before the model so ZeRO-3 init can shard it
    except TypeError as err:
        raise ValueError(f"runs.{spec['name']}.args: {err}") from None
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=spec["model_dtype"], trust_remote_code=False,
                                                 attn_implementation=attn_implementation(spec.get("attn_implementation")))
    params.apply_trainable(model, spec.get("freeze"), spec.get("train_only"), f"runs.{spec['name']}")
    if _is_main_process():
        log.info("run %s: %s", spec["name"], params.trainable_summary(model))
    dataset = Dataset.from_list(read_jsonl(data_file))
    throughput = Throughput()
    callbacks = [CheckpointSchedule(spec["checkpoint_steps"], state_dir / "exports"), StopOnSignal(), throughput]
    if spec["method"] == "grpo":
        trainer = GRPOTrainer(model=model, reward_funcs=[rewards.accuracy_reward, rewards.format_reward], args=args,
                              train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
        throughput.time_generation(trainer)
        return trainer
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)


def run(spec_file: str, base: str, data_file: str, state_dir: str) -> int:
    """Train (or find trained) the run of `spec_file` into `state_dir`; return the exit status: 0 when finished,
    128 + the signal when stopped by one with the state saved. Raises on failure."""
    spec = yaml.safe_load(Path(spec_file).read_text())
    state_dir = Path(state_dir)
    rank = int(os.environ.get("RANK", "0"))
    is_main = rank == 0
    resume = prepare_state_dir(state_dir, spec, is_main)
    if is_finished(state_dir, spec):
        log.info("run %s finished training already (%s): nothing to train, publish it", spec["name"], state_dir)
        return 0
    exports = state_dir / "exports"
    if resume and is_main:  # a job killed between saving and exporting: export that checkpoint now
        step = int(Path(resume).name.split("-")[1])
        if step in spec["checkpoint_steps"] and not (exports / f"step-{step}").is_dir():
            export_checkpoint(Path(resume), exports / f"step-{step}")
    trainer = build_trainer(spec, base, data_file, state_dir)
    log.info("process %d of %d, machine %s", trainer.args.process_index, trainer.args.world_size,
             os.environ.get("GROUP_RANK", "0"))  # GROUP_RANK: the machine rank torchrun gives each process
    _arm_save_fault(trainer, state_dir)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except Exception as err:
        full = disk_full_error(err, state_dir, trainer.state.global_step)
        if full is None:
            raise
        raise full from err
    stopper = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnSignal))
    error = None
    if is_main and not stopper.stopped_by:
        try:
            mark_finished(state_dir, spec, trainer.state.log_history)
        except Exception as err:
            error = disk_full_error(err, state_dir, trainer.state.global_step)
            if error is None:
                error = err
            else:
                error.__cause__ = err
    failed = shutdown_ranks(error is not None)
    faults.reach(f"exit-rank-{rank}")
    if error is not None:
        raise error
    if failed:
        raise SystemExit("the main process could not stamp the finished training (its error is in this log)")
    if stopper.stopped_by:
        log.warning("stopped at step %d with its state saved in %s: rerun to resume", trainer.state.global_step,
                    state_dir)
        return 128 + stopper.stopped_by
    log.info("process %d: training of run %s finished, its state stamped in %s", rank, spec["name"], state_dir)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="one GRPO or SFT run from its resolved spec, into its state folder "
                                            "(then publish)")
    p.add_argument("--spec", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--state", required=True, help="trainer state, exported checkpoints and, once done, a stamp")
    p.set_defaults(func=main)


def main(args) -> None:
    exit_now(run(args.spec, args.base, args.data, args.state))  # see exit_now: a clean end must not abort at teardown

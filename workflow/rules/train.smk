rule launch_files:
    output:
        "results/launch/accelerate.yaml",
    log:
        "logs/launch_files/launch_files.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    params:
        stage=DEEPSPEED["zero_stage"],
        bf16=["--bf16"] if config["model"]["dtype"] == "bfloat16" else [],
        threshold=(
            ["--persistence-threshold", DEEPSPEED["param_persistence_threshold"]]
            if DEEPSPEED["param_persistence_threshold"] is not None
            else []
        ),
    shell:
        "python -m scalpel launch files --stage {params.stage:q} --num-processes 1 {params.bf16:q}"
        ' {params.threshold:q} --outdir "$(dirname {output:q})" > {log:q} 2>&1'


rule run_spec:
    output:
        "results/runs/{run}/spec.yaml",
    log:
        "logs/run_spec/{run}.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        # What the run's checkpoints are compared with is no training setting: changing it retrains nothing.
        spec=lambda wildcards: {k: v for k, v in RUNS[wildcards.run].items() if k != "reference"},
    script:
        "../scripts/write_spec.py"


# Training writes only its state, outside the declared outputs, so that a failed job keeps it and the rerun resumes;
# publishing fills the outputs only once the launcher has exited 0 (publish.py), and drops the state last.
rule train_sft:
    input:
        spec="results/runs/{run}/spec.yaml",
        base=base_model_dir(),
        data=lambda wildcards: f"results/data/{RUNS[wildcards.run]['method']}.jsonl",
        launch=LAUNCH_FILES,
    output:
        checkpoints=directory("results/runs/{run}/checkpoints"),
        history="results/runs/{run}/trainer_log.json",
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    wildcard_constraints:
        run=method_constraint("sft"),
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        **TRAIN_RESOURCES,
    params:
        state=lambda wildcards: f"results/runs/{wildcards.run}/state",
        launcher=get_train_launcher,
        omp_threads=get_train_omp_threads,
        completions=lambda wildcards, output: (
            ["--completions", output.completions] if "completions" in output.keys() else []
        ),
    shell:
        "OMP_NUM_THREADS={params.omp_threads} {params.launcher:q} train --spec {input.spec:q} --base {input.base:q}"
        " --data {input.data:q} --state {params.state:q} > {log:q} 2>&1"
        " && python -m scalpel publish --spec {input.spec:q} --state {params.state:q}"
        " --checkpoints {output.checkpoints:q} --log-history {output.history:q} {params.completions:q} >> {log:q} 2>&1"


# GRPO: the same job, which also publishes the completions it logged.
use rule train_sft as train_grpo with:
    output:
        checkpoints=directory("results/runs/{run}/checkpoints"),
        completions=directory("results/runs/{run}/completions"),
        history="results/runs/{run}/trainer_log.json",
    wildcard_constraints:
        run=method_constraint("grpo"),
    priority: 1  # the longest training: started first, it leaves the CPU-bound miniature's tail shorter

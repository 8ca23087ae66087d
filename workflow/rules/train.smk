rule run_spec:
    output:
        "results/runs/{run}/spec.yaml",
    params:
        spec=lambda wildcards: RUNS[wildcards.run],
    log:
        "logs/run_spec/{run}.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/write_spec.py"


# Trainer state lives outside the declared outputs, so that a failed job keeps it and the rerun resumes.
TRAIN_SHELL = (
    "OMP_NUM_THREADS={threads} python -m scalpel train --spec {input.spec} --base {input.base}"
    " --data {input.data} --checkpoints {output.checkpoints} --state {params.state}"
    " --log-history {output.history} > {log} 2>&1"
)


rule train_grpo:
    input:
        spec="results/runs/{run}/spec.yaml",
        base=base_model_dir(),
        data="results/data/grpo.jsonl",
    output:
        checkpoints=directory("results/runs/{run}/checkpoints"),
        completions=directory("results/runs/{run}/completions"),
        history="results/runs/{run}/trainer_log.json",
    wildcard_constraints:
        run=method_constraint("grpo"),
    params:
        state=lambda wildcards: f"results/runs/{wildcards.run}/state",
    threads: 1
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        TRAIN_SHELL


rule train_sft:
    input:
        spec="results/runs/{run}/spec.yaml",
        base=base_model_dir(),
        data="results/data/sft.jsonl",
    output:
        checkpoints=directory("results/runs/{run}/checkpoints"),
        history="results/runs/{run}/trainer_log.json",
    wildcard_constraints:
        run=method_constraint("sft"),
    params:
        state=lambda wildcards: f"results/runs/{wildcards.run}/state",
    threads: 1
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    conda:
        "../../envs/train.yaml"
    shell:
        TRAIN_SHELL

rule evaluate:
    input:
        model=get_model_dir,
        tasks="results/data/lm_eval_tasks",
    output:
        "results/eval/{run}/step-{step}.tsv",
    params:
        checkpoint=get_checkpoint_path,
        tasks=get_eval_tasks,
        backend=config["eval"]["backend"],
        dtype=config["model"]["dtype"],
        batch_size=config["eval"]["batch_size"],
        limit=f"--limit {config['eval']['limit']}" if config["eval"]["limit"] else "",
        seed=config["seed"],
    threads: 1
    log:
        "logs/evaluate/{run}/step-{step}.log",
    benchmark:
        "benchmarks/evaluate/{run}/step-{step}.tsv"
    conda:
        "../../envs/eval.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m scalpel evaluate --checkpoint {params.checkpoint}"
        " --tasks {params.tasks} --task-dir {input.tasks} --out {output} --run {wildcards.run}"
        " --step {wildcards.step} --backend {params.backend} --dtype {params.dtype}"
        " --batch-size {params.batch_size} {params.limit} --seed {params.seed} > {log} 2>&1"

rule evaluate:
    input:
        model=get_model_dir,
        tasks=LOCAL_TASK_DIR or [],
        prefetch=get_eval_prefetch(),
    output:
        "results/eval/{run}/step-{step}.tsv",
    params:
        checkpoint=get_checkpoint_path,
        tasks=get_eval_tasks,
        task_dir=f"--task-dir {LOCAL_TASK_DIR}" if LOCAL_TASK_DIR else "",
        backend=config["eval"]["backend"],
        dtype=config["model"]["dtype"],
        batch_size=config["eval"]["batch_size"],
        limit=f"--limit {config['eval']['limit']}" if config["eval"]["limit"] else "",
        seed=config["seed"],
        gen_kwargs=json.dumps(config["eval"]["generation"]),
        num_fewshot=json.dumps(config["eval"]["num_fewshot"]),
        model_args=json.dumps(config["eval"]["model_args"]),
        multiturn=json.dumps(config["eval"]["fewshot_as_multiturn"]),
        chat_template=get_eval_chat_template,
    threads: 1
    log:
        "logs/evaluate/{run}/step-{step}.log",
    benchmark:
        "benchmarks/evaluate/{run}/step-{step}.tsv"
    conda:
        "../../envs/eval.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m scalpel evaluate --checkpoint {params.checkpoint}"
        " --tasks {params.tasks} {params.task_dir} --out {output} --run {wildcards.run}"
        " --step {wildcards.step} --backend {params.backend} --dtype {params.dtype}"
        " --batch-size {params.batch_size} {params.limit} --seed {params.seed}"
        " --gen-kwargs '{params.gen_kwargs}' --num-fewshot '{params.num_fewshot}'"
        " --model-args '{params.model_args}' --fewshot-as-multiturn '{params.multiturn}'"
        " {params.chat_template} > {log} 2>&1"

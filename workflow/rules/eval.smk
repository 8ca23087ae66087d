rule evaluate:
    input:
        model=get_model_dir,
        tasks=LOCAL_TASK_DIR or [],
        prefetch=get_eval_prefetch(),
    output:
        table="results/eval/{run}/step-{step}.tsv",
        item_scores="results/eval/{run}/step-{step}.items.tsv",
    log:
        "logs/evaluate/{run}/step-{step}.log",
    benchmark:
        "benchmarks/evaluate/{run}/step-{step}.tsv"
    conda:
        "../../envs/eval.yaml"
    threads: 1
    params:
        checkpoint=get_checkpoint_path,
        tasks=get_eval_tasks,
        task_dir=["--task-dir", LOCAL_TASK_DIR] if LOCAL_TASK_DIR else [],
        backend=config["eval"]["backend"],
        dtype=config["model"]["dtype"],
        batch_size=config["eval"]["batch_size"],
        limit=["--limit", config["eval"]["limit"]] if config["eval"]["limit"] else [],
        seed=config["seed"],
        gen_kwargs=json.dumps(config["eval"]["generation"]),
        num_fewshot=json.dumps(config["eval"]["num_fewshot"]),
        model_args=json.dumps(config["eval"]["model_args"]),
        multiturn=json.dumps(config["eval"]["fewshot_as_multiturn"]),
        clusters=json.dumps(config["eval"]["item_clusters"]),
        samples=get_eval_samples,
        chat_template=get_eval_chat_template,
    shell:
        "OMP_NUM_THREADS={threads} python -m scalpel evaluate --checkpoint {params.checkpoint:q}"
        " --tasks {params.tasks:q} {params.task_dir:q} --out {output.table:q} --run {wildcards.run}"
        " --step {wildcards.step} --backend {params.backend:q} --dtype {params.dtype:q}"
        " --batch-size {params.batch_size:q} {params.limit:q} --seed {params.seed:q}"
        " --gen-kwargs {params.gen_kwargs:q} --num-fewshot {params.num_fewshot:q}"
        " --model-args {params.model_args:q} --fewshot-as-multiturn {params.multiturn:q}"
        " --item-clusters {params.clusters:q} --samples {params.samples:q}"
        " {params.chat_template:q} > {log:q} 2>&1"


if SHARED_EVALS:

    # An imported checkpoint that an earlier run already evaluates (the same hub revision or folder, tasks, samples
    # and template; config.shared_evaluations) takes that evaluation, relabelled, instead of a second one.
    ruleorder: shared_evaluation > evaluate

    rule shared_evaluation:
        input:
            unpack(get_shared_evaluation),
        output:
            table="results/eval/{shared}.tsv",
            item_scores="results/eval/{shared}.items.tsv",
        log:
            "logs/shared_evaluation/{shared}.log",
        wildcard_constraints:
            shared=shared_evaluation_pattern(),
        localrule: True
        conda:
            "../../envs/report.yaml"
        params:
            run_step=get_shared_run_step,
        shell:
            "python -m scalpel share-evaluation --table {input.table:q} --out {output.table:q}"
            " {params.run_step:q} > {log:q} 2>&1"

rule data:
    output:
        pretrain="results/data/pretrain.jsonl",
        grpo="results/data/grpo.jsonl",
        sft="results/data/sft.jsonl",
        kl_reference="results/data/kl_reference.jsonl",
        tasks=directory("results/data/lm_eval_tasks"),
    params:
        synthetic=json.dumps(config["data"]["synthetic"]),
        seed=config["seed"],
    log:
        "logs/data/data.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m scalpel data --synthetic '{params.synthetic}' --seed {params.seed}"
        " --outdir $(dirname {output.pretrain}) --task-dir {output.tasks} > {log} 2>&1"

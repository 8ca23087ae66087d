if SYNTHETIC_DATA:

    rule data:
        output:
            pretrain="results/data/pretrain.jsonl",
            grpo="results/data/grpo.jsonl",
            sft="results/data/sft.jsonl",
            kl_reference="results/data/kl_reference.jsonl",
            tasks=directory("results/data/lm_eval_tasks"),
        log:
            "logs/data/data.log",
        conda:
            "../../envs/data.yaml"
        params:
            synthetic=json.dumps(config["data"]["synthetic"]),
            seed=config["seed"],
        shell:
            "python -m scalpel data --synthetic {params.synthetic:q} --seed {params.seed:q}"
            ' --outdir "$(dirname {output.pretrain:q})" --task-dir {output.tasks:q} > {log:q} 2>&1'

else:
    OPENR1 = config["data"]["openr1"]

    rule data:
        input:
            manifest="results/prefetch/data.json",
            tokenizer=base_model_dir(),
        output:
            **({"kl_reference": "results/data/kl_reference.jsonl"} if OPENR1["math500"] else {}),
            grpo="results/data/grpo.jsonl",
            sft="results/data/sft.jsonl",
            counts="results/data/counts.json",
        log:
            "logs/data/data.log",
        conda:
            "../../envs/data.yaml"
        threads: OPENR1["num_proc"]
        params:
            source=OPENR1["dataset"],
            config=OPENR1["config"],
            split=OPENR1["split"],
            revision=["--revision", OPENR1["revision"]] if OPENR1["revision"] else [],
            source_filter=OPENR1["source_filter"],
            max_prompt_tokens=OPENR1["max_prompt_tokens"],
            max_sft_tokens=OPENR1["max_sft_tokens"],
            math500=["--math500", OPENR1["math500"]] if OPENR1["math500"] else [],
        shell:
            "python -m scalpel openr1 --source {params.source:q} --config {params.config:q} --split {params.split:q}"
            " {params.revision:q} --source-filter {params.source_filter:q}"
            " --max-prompt-tokens {params.max_prompt_tokens:q} --max-sft-tokens {params.max_sft_tokens:q}"
            " --num-proc {threads} {params.math500:q} --tokenizer {input.tokenizer:q}"
            ' --outdir "$(dirname {output.grpo:q})" > {log:q} 2>&1'

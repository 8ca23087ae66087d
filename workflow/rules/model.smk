if BUILD_BASE:

    rule base_model:
        input:
            pretrain="results/data/pretrain.jsonl",
        output:
            model=directory("results/models/base"),
            history="results/models/base_pretrain_log.json",
        params:
            build=json.dumps(config["model"]["build"]),
            seed=config["seed"],
        threads: 2
        log:
            "logs/base_model/base_model.log",
        benchmark:
            "benchmarks/base_model/base_model.tsv"
        conda:
            "../../envs/train.yaml"
        shell:
            "OMP_NUM_THREADS={threads} python -m scalpel base-model --build '{params.build}' --seed {params.seed}"
            " --data $(dirname {input.pretrain}) --outdir {output.model} --log-history {output.history} > {log} 2>&1"

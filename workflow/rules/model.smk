if BUILD_BASE:

    rule base_model:
        input:
            pretrain="results/data/pretrain.jsonl",
        output:
            model=directory("results/models/base"),
            history="results/models/base_pretrain_log.json",
        log:
            "logs/base_model/base_model.log",
        benchmark:
            "benchmarks/base_model/base_model.tsv"
        conda:
            "../../envs/train.yaml"
        threads: 2  # nothing else runs before the base exists (321 s on 2 threads, 341 s on 1)
        params:
            build=json.dumps(config["model"]["build"]),
            seed=config["seed"],
        shell:
            "OMP_NUM_THREADS={threads} python -m scalpel base-model --build {params.build:q} --seed {params.seed:q}"
            ' --data "$(dirname {input.pretrain:q})" --outdir {output.model:q}'
            " --log-history {output.history:q} > {log:q} 2>&1"

else:

    # The prefetched model as a normal HF folder: weights linked to the HF cache, chat template per model.chat_template.
    rule base_model:
        input:
            manifest="results/prefetch/model.json",
        output:
            model=directory("results/models/base"),
        log:
            "logs/base_model/base_model.log",
        conda:
            "../../envs/train.yaml"
        params:
            source=config["model"]["base"],
            revision=["--revision", config["model"]["revision"]] if config["model"]["revision"] else [],
            chat_template=config["model"]["chat_template"],
        shell:
            "python -m scalpel import-base --source {params.source:q} {params.revision:q}"
            " --chat-template {params.chat_template:q} --outdir {output.model:q} > {log:q} 2>&1"


# An imported run's existing checkpoints (config runs.<name>.source), linked where training would publish them: every
# later rule reads them unchanged, and no training rule matches the run.
rule import_checkpoints:
    input:
        spec="results/runs/{run}/spec.yaml",
        manifest=get_import_manifest,
        folders=get_import_folders,
    output:
        checkpoints=directory("results/runs/{run}/checkpoints"),
        provenance="results/runs/{run}/import.json",
    log:
        "logs/import_checkpoints/{run}.log",
    wildcard_constraints:
        run=method_constraint(study_config.IMPORT),
    localrule: True
    conda:
        "../../envs/train.yaml"
    params:
        manifest=lambda wildcards, input: ["--manifest", input.manifest] if input.manifest else [],
        dtype=config["model"]["dtype"],
    shell:
        "python -m scalpel import-checkpoints --spec {input.spec:q} {params.manifest:q} --out {output.checkpoints:q}"
        " --dtype {params.dtype:q} --provenance {output.provenance:q} > {log:q} 2>&1"

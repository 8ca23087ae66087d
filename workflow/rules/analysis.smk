# Weight and output-distribution analyses of every checkpoint against the base (envs/analysis.yaml).


rule diff:
    input:
        base=base_model_dir(),
        model=get_model_dir,
    output:
        "results/diff/{run}/step-{step}.parquet",
    log:
        "logs/diff/{run}/step-{step}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        checkpoint=get_checkpoint_path,
        dtype_mismatch=config["diff"]["dtype_mismatch"],
    shell:
        "OMP_NUM_THREADS={threads} python -m scalpel diff --base {input.base:q} --checkpoint {params.checkpoint:q}"
        " --dtype-mismatch {params.dtype_mismatch:q} --run {wildcards.run} --step {wildcards.step} --out {output:q}"
        " > {log:q} 2>&1"


rule kl:
    input:
        base=base_model_dir(),
        model=get_model_dir,
        reference=get_kl_reference(),
    output:
        "results/kl/{run}/step-{step}.json",
    log:
        "logs/kl/{run}/step-{step}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        checkpoint=get_checkpoint_path,
        dtype=config["model"]["dtype"],
        limit=["--limit", config["kl"]["limit"]] if config["kl"]["limit"] else [],
    shell:
        "OMP_NUM_THREADS={threads} python -m scalpel kl --base {input.base:q} --checkpoint {params.checkpoint:q}"
        " --reference {input.reference:q} --run {wildcards.run} --step {wildcards.step} --dtype {params.dtype:q}"
        " {params.limit:q} --out {output:q} > {log:q} 2>&1"


if MINIATURE_CLAIMS:

    rule claims:
        input:
            evals=get_eval_files(),
            diffs=get_diff_files(),
            kl=get_kl_files(),
            spec="results/tables/spec.yaml",
        output:
            claims=report("results/tables/claims.tsv", caption="../report/claims.rst", category="Tables"),
            pass_at_k=report("results/tables/claims_pass_at_k.tsv", caption="../report/claims.rst", category="Tables"),
        log:
            "logs/claims/claims.log",
        localrule: True
        conda:
            "../../envs/analysis.yaml"
        params:
            in_domain=[f"mini_math_l{n}" for n in config["data"]["synthetic"]["train_levels"]],
            untrained=[f"mini_math_l{n}" for n in (1, 2, 3) if n not in config["data"]["synthetic"]["train_levels"]],
        shell:
            'python -m scalpel claims --results "$(dirname "$(dirname {input.spec:q})")"'
            " --in-domain {params.in_domain:q} --untrained {params.untrained:q} --out {output.claims:q} > {log:q} 2>&1"

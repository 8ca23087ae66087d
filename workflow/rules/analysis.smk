# Weight and output-distribution analyses of every checkpoint against its run's reference, the base unless
# runs.<name>.reference names another run (envs/analysis.yaml).


# The paper's relative update, from the sums of the update pass below (scalpel.analysis.diff): the pair is read once.
rule diff:
    input:
        "results/weights/update/{run}/step-{step}.parquet",
    output:
        "results/diff/{run}/step-{step}.parquet",
    log:
        "logs/diff/{run}/step-{step}.log",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    shell:
        "python -m scalpel diff --update {input:q} --out {output:q} > {log:q} 2>&1"


rule kl:
    input:
        base=get_reference_dir,
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


# scalpel.analysis.weights: the update pass reads both folders once, streamed, on the job's threads (diff takes its
# sums); the spectral pass decomposes the base once for all of a run's checkpoints it covers (config weights.spectral).
rule weights_update:
    input:
        base=get_reference_dir,
        model=get_model_dir,
    output:
        "results/weights/update/{run}/step-{step}.parquet",
    log:
        "logs/weights_update/{run}/step-{step}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        checkpoint=get_checkpoint_path,
        dtype_mismatch=MISMATCH_ARGS,
    shell:
        "OMP_NUM_THREADS={threads} python -m scalpel weights update --base {input.base:q}"
        " --checkpoint {params.checkpoint:q} --run {wildcards.run} --step {wildcards.step}"
        " --dtype-mismatch {params.dtype_mismatch:q} --out {output:q} > {log:q} 2>&1"


rule weights_spectral:
    input:
        base=get_reference_dir,
        model=get_model_dir,
    output:
        "results/weights/spectral/{run}.parquet",
    log:
        "logs/weights_spectral/{run}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        checkpoints=lambda wildcards: [a for c in get_spectral_checkpoints(wildcards) for a in ("--checkpoint", c)],
        ks=config["weights"]["top_k"],
        dtype_mismatch=MISMATCH_ARGS,
    shell:
        "OMP_NUM_THREADS={threads} python -m scalpel weights spectral --base {input.base:q} {params.checkpoints:q}"
        " --run {wildcards.run} --ks {params.ks} --dtype-mismatch {params.dtype_mismatch:q} --out {output:q}"
        " > {log:q} 2>&1"


rule weights_align:
    input:
        base=get_align_references,
        a="results/runs/{run_a}/checkpoints",
        b="results/runs/{run_b}/checkpoints",
    output:
        "results/weights/align/{run_a}_vs_{run_b}.parquet",
    log:
        "logs/weights_align/{run_a}_vs_{run_b}.log",
    wildcard_constraints:
        run_a="|".join(RUNS),
        run_b="|".join(RUNS),
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        step_a=lambda wildcards: RUNS[wildcards.run_a]["checkpoint_steps"][-1],
        step_b=lambda wildcards: RUNS[wildcards.run_b]["checkpoint_steps"][-1],
        dtype_mismatch=MISMATCH_ARGS,
    shell:
        "OMP_NUM_THREADS={threads} python -m scalpel weights align --base {input.base:q}"
        " --checkpoint-a {input.a:q}/step-{params.step_a} --run-a {wildcards.run_a} --step-a {params.step_a}"
        " --checkpoint-b {input.b:q}/step-{params.step_b} --run-b {wildcards.run_b} --step-b {params.step_b}"
        " --dtype-mismatch {params.dtype_mismatch:q} --out {output:q} > {log:q} 2>&1"


# Another run's final checkpoint as a reference (config runs.<name>.reference): its files linked into a folder of its
# own, which the analyses above take as they take the base.
rule reference_model:
    input:
        "results/runs/{ref}/checkpoints",
    output:
        directory("results/references/{ref}"),
    log:
        "logs/reference_model/{ref}.log",
    wildcard_constraints:
        ref="|".join(RUNS),
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    params:
        step=lambda wildcards: RUNS[wildcards.ref]["checkpoint_steps"][-1],
    shell:
        "mkdir -p {output:q} && for f in {input:q}/step-{params.step}/*;"
        ' do ln -s "$(realpath "$f")" {output:q}/"$(basename "$f")"; done > {log:q} 2>&1'


# How each checkpoint differs from its reference (tensors, dtypes, configs), from headers alone: a tensor missing or
# misshapen fails here naming it, unless diff.tensor_mismatch is shared.
rule reference_check:
    input:
        references=lambda wildcards: sorted({reference_dir(run) for run in RUNS}),
        checkpoints=[f"results/runs/{run}/checkpoints" for run in RUNS],
    output:
        "results/tables/references.tsv",
    log:
        "logs/reference_check/reference_check.log",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    params:
        pairs=get_reference_pairs,
        tensor_mismatch=config["diff"]["tensor_mismatch"],
    shell:
        "python -m scalpel reference-check --pairs {params.pairs:q} --tensor-mismatch {params.tensor_mismatch:q}"
        " --out {output:q} > {log:q} 2>&1"

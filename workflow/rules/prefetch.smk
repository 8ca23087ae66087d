# Everything the study reads from the hub, fetched where Snakemake runs (it has network; jobs may not), one part per
# job; `snakemake prefetch_all` on a login node fetches all a study needs.
rule prefetch_all:
    input:
        get_prefetch_files(),
    localrule: True


rule prefetch:
    input:
        get_prefetch_input,
    output:
        "results/prefetch/{part}.json",
    log:
        "logs/prefetch/{part}.log",
    wildcard_constraints:
        part="|".join(study_prefetch.PARTS),
    localrule: True
    conda:
        "../../envs/eval.yaml"
    params:
        args=get_prefetch_args,
    shell:
        "env -u HF_HUB_OFFLINE -u HF_DATASETS_OFFLINE -u TRANSFORMERS_OFFLINE"
        " python -m scalpel prefetch {params.args:q} --out {output:q} > {log:q} 2>&1"

# The tables and figures of the study, from every evaluation, diff and KL (envs/report.yaml).


rule analysis_spec:
    output:
        "results/tables/spec.yaml",
    log:
        "logs/analysis_spec/analysis_spec.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        spec=analysis_spec(),
    script:
        "../scripts/write_spec.py"


rule tables:
    input:
        evals=get_eval_files(),
        item_scores=get_item_files(),
        diffs=get_diff_files(),
        kl=get_kl_files(),
        spec="results/tables/spec.yaml",
        authors=AUTHORS_NUMBERS,
    output:
        scores=report("results/tables/scores.tsv", caption="../report/scores.rst", category="Tables"),
        updates=report("results/tables/updates.tsv", caption="../report/updates.rst", category="Tables"),
        module_means="results/tables/update_module_means.tsv",
        summary=report("results/tables/summary.tsv", caption="../report/summary.rst", category="Tables"),
        differences=report("results/tables/differences.tsv", caption="../report/differences.rst", category="Tables"),
        seeds=report("results/tables/seeds.tsv", caption="../report/seeds.rst", category="Tables"),
        pass_at_k=report("results/tables/pass_at_k.tsv", caption="../report/pass_at_k.rst", category="Tables"),
        ratios=report("results/tables/ratios.tsv", caption="../report/ratios.rst", category="Tables"),
        kl=report("results/tables/kl.tsv", caption="../report/kl.rst", category="Tables"),
        authors=report(
            "results/tables/authors_comparison.tsv", caption="../report/authors_comparison.rst", category="Tables"
        ),
    log:
        "logs/tables/tables.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m scalpel tables --eval {input.evals:q} --diff {input.diffs:q} --kl {input.kl:q}"
        " --spec {input.spec:q} --authors {input.authors:q}"
        ' --outdir "$(dirname {output.summary:q})" > {log:q} 2>&1'


rule plots:
    input:
        summary="results/tables/summary.tsv",
        differences="results/tables/differences.tsv",
        pass_at_k="results/tables/pass_at_k.tsv",
        kl="results/tables/kl.tsv",
        spec="results/tables/spec.yaml",
    output:
        heatmaps=report(
            "results/figures/update_heatmaps.png",
            caption="../report/update_heatmaps.rst",
            category="Parameter updates",
        ),
        trajectories=report(
            "results/figures/update_trajectories.png",
            caption="../report/update_trajectories.rst",
            category="Parameter updates",
        ),
        scores=report("results/figures/scores_final.png", caption="../report/scores_final.rst", category="Benchmarks"),
        by_step=report(
            "results/figures/scores_by_step.png", caption="../report/scores_by_step.rst", category="Benchmarks"
        ),
        kl=report("results/figures/kl_trajectories.png", caption="../report/kl_trajectories.rst", category="KL"),
        pass_at_k=report(
            "results/figures/pass_at_k.png", caption="../report/pass_at_k_curves.rst", category="Benchmarks"
        ),
        differences=report(
            "results/figures/differences_final.png",
            caption="../report/differences_final.rst",
            category="Benchmarks",
        ),
    log:
        "logs/plots/plots.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        'python -m scalpel plots --tables "$(dirname {input.summary:q})" --spec {input.spec:q}'
        ' --outdir "$(dirname {output.heatmaps:q})" > {log:q} 2>&1'

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
        **SWEEP_FIGURE,
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


rule weight_tables:
    input:
        updates=get_weight_update_files(),
        spectral=get_weight_spectral_files(),
        align=get_weight_align_files(),
        spec="results/tables/spec.yaml",
    output:
        updates="results/tables/weights_update.tsv",
        spectral="results/tables/weights_spectral.tsv",
        means=report("results/tables/weights_means.tsv", caption="../report/weights_means.rst", category="Tables"),
        align="results/tables/weights_align.tsv",
        align_means=report(
            "results/tables/weights_align_means.tsv", caption="../report/weights_align_means.rst", category="Tables"
        ),
    log:
        "logs/weight_tables/weight_tables.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m scalpel weight-tables --update {input.updates:q} --spectral {input.spectral:q}"
        ' --align {input.align:q} --spec {input.spec:q} --outdir "$(dirname {output.means:q})" > {log:q} 2>&1'


rule weight_plots:
    input:
        updates="results/tables/weights_update.tsv",
        spectral="results/tables/weights_spectral.tsv",
        means="results/tables/weights_means.tsv",
        align="results/tables/weights_align.tsv",
        align_means="results/tables/weights_align_means.tsv",
    output:
        heatmaps=report(
            "results/figures/weights_heatmaps.png", caption="../report/weights_heatmaps.rst", category="Weights"
        ),
        trajectories=report(
            "results/figures/weights_trajectories.png",
            caption="../report/weights_trajectories.rst",
            category="Weights",
        ),
        alignment=report(
            "results/figures/weights_alignment.png", caption="../report/weights_alignment.rst", category="Weights"
        ),
    log:
        "logs/weight_plots/weight_plots.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        'python -m scalpel weight-plots --tables "$(dirname {input.means:q})"'
        ' --outdir "$(dirname {output.heatmaps:q})" > {log:q} 2>&1'


rule forgetting:
    input:
        scores="results/tables/scores.tsv",
        kl="results/tables/kl.tsv",
        weights="results/tables/weights_means.tsv",
        spec="results/tables/spec.yaml",
    output:
        table=report("results/tables/forgetting.tsv", caption="../report/forgetting_table.rst", category="Forgetting"),
        points="results/tables/forgetting_points.tsv",
        pairs=report(
            "results/tables/forgetting_pairs.tsv",
            caption="../report/forgetting_pairs.rst",
            category="Forgetting",
        ),
        figure=report("results/figures/forgetting.png", caption="../report/forgetting.rst", category="Forgetting"),
    log:
        "logs/forgetting/forgetting.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m scalpel forgetting --scores {input.scores:q} --kl {input.kl:q} --weights {input.weights:q}"
        " --spec {input.spec:q} --table {output.table:q} --points {output.points:q} --pairs {output.pairs:q}"
        " --figure {output.figure:q}"
        " > {log:q} 2>&1"


rule throughput:
    input:
        histories=[f"results/runs/{run}/trainer_log.json" for run in TRAINED_RUNS],
        specs=[f"results/runs/{run}/spec.yaml" for run in TRAINED_RUNS],
        evals=get_eval_files(evaluated_only=True),
        kl=get_kl_files(),
        reference=get_kl_reference(),
        full=FULL_CONFIG,
        profile=SLURM_PROFILE,
    output:
        report("results/tables/throughput.tsv", caption="../report/throughput.rst", category="Tables"),
    log:
        "logs/throughput/throughput.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m scalpel throughput --histories {input.histories:q} --eval {input.evals:q} --kl {input.kl:q}"
        " --kl-reference {input.reference:q} --full {input.full:q} --profile {input.profile:q} --out {output:q}"
        " > {log:q} 2>&1"


EVALUATED = {task for suite in config["eval"]["tasks"].values() for task in suite}

if MINIATURE_CLAIMS:

    rule claims:
        input:
            evals=get_eval_files(),
            item_scores=get_item_files(),
            pass_at_k="results/tables/pass_at_k.tsv",
            diffs=get_diff_files(),
            kl=get_kl_files(),
            spec="results/tables/spec.yaml",
        output:
            claims=report("results/tables/claims.tsv", caption="../report/claims.rst", category="Tables"),
            seeds=report("results/tables/claims_seeds.tsv", caption="../report/claims.rst", category="Tables"),
        log:
            "logs/claims/claims.log",
        localrule: True
        conda:
            "../../envs/report.yaml"
        params:
            in_domain=[f"mini_math_l{n}" for n in config["data"]["synthetic"]["train_levels"]],
            untrained=[
                f"mini_math_l{n}"
                for n in (1, 2, 3)
                if n not in config["data"]["synthetic"]["train_levels"] and f"mini_math_l{n}" in EVALUATED
            ],
        shell:
            'python -m scalpel claims --results "$(dirname "$(dirname {input.spec:q})")"'
            " --in-domain {params.in_domain:q} --untrained {params.untrained:q} --out {output.claims:q} > {log:q} 2>&1"


rule findings:
    input:
        summary="results/tables/summary.tsv",
        authors="results/tables/authors_comparison.tsv",
        claims=["results/tables/claims.tsv"] if MINIATURE_CLAIMS else [],
        seeds=["results/tables/claims_seeds.tsv"] if MINIATURE_CLAIMS else [],
        forgetting=["results/tables/forgetting.tsv", "results/tables/forgetting_pairs.tsv"],
        figures=[
            f"results/figures/{name}.png"
            for name in ("differences_final", "scores_final", "update_heatmaps", "forgetting")
        ]
        + list(SWEEP_FIGURE.values()),
    output:
        report("results/report/findings.html", caption="../report/findings.rst", category="Findings"),
    log:
        "logs/findings/findings.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        claims=lambda wildcards, input: (
            ["--claims", input.claims, "--claims-seeds", input.seeds] if input.claims else []
        ),
    shell:
        "python -m scalpel findings --summary {input.summary:q} --authors {input.authors:q} {params.claims:q}"
        " --forgetting {input.forgetting:q} --figures {input.figures:q} --out {output:q} > {log:q} 2>&1"

# Scalpel vs. Hammer: what GRPO and SFT each do to a model (Rajani et al., arXiv 2507.10616).
# The miniature runs with the default config; the 7B study is `--configfile config/paper.yaml`.
from snakemake.utils import min_version

min_version("9.0")


# A --configfile replaces the default config instead of being merged into it, so that a study's runs are exactly
# the ones its file declares (schema defaults fill in the rest).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/prefetch.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),

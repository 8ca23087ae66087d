"""Stage `analysis` (rules/analysis.smk, envs/analysis.yaml): what training did to the weights and to the output
distribution, checkpoint by checkpoint: the paper's relative update, the weight analyses beyond it, KL."""

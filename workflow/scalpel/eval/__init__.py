"""Stage `eval` (rules/eval.smk, envs/eval.yaml): lm-eval's harness on each checkpoint, with each item's score."""

"""Stage `report` (rules/report.smk, envs/report.yaml): tables with intervals, figures, the claims and the
forgetting predictors, from the files the stages below wrote. Imports no torch, transformers, lm-eval or
safetensors (tests/test_layers.py)."""

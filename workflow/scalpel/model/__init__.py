"""Stage `model` (rules/model.smk, envs/train.yaml): the base model, built and pre-trained, or imported."""

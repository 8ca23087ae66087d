"""Stage `train` (rules/train.smk, envs/train.yaml): TRL's GRPO and SFT trainers under accelerate/DeepSpeed, the
trainable-parameter selection, vLLM's server for generation, and the checkpoints published from a finished run."""

"""Stage `data` (rules/data.smk, envs/data.yaml): the miniature's synthetic world, or the paper's OpenR1-Math."""

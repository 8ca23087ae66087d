"""What the model is asked and how an answer is graded: the GRPO rewards, the miniature's lm-eval tasks and the
paper's (lighteval's prompts and scorers, as lm-eval task YAMLs in lm_eval_tasks/). Read by data, train and eval."""

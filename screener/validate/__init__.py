"""Check a screen's prediction by finetuning: train copies of the target model on subsets of a
dataset and measure how far each moves toward a trait (issue 8, being built).

- `finetune`: the training loop (response tokens only, seeded, bf16 autocast on CPU), with
  optional preventative steering;
- `shift`: the trait shift of a model, from its greedy answers to a pack's held-out questions.
"""

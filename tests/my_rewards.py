"""A user's own reward, as the README shows it (config.reward_fns)."""


def brevity(prompt, completion, example):
  """1 for an answer in at most 8 words of completion, else 0."""
  del prompt, example
  return 1.0 if len(completion.split()) <= 8 else 0.0

"""Prompts: built-in tasks, local data sets, and prompt templates.

  source = load_split('countdown', 'train', data_dir)   # or 'arithmetic', 'local'
  batches = PromptIterator(source, batch_size=32, seed=0,
                           process_index=jax.process_index(),
                           process_count=jax.process_count())
  prompts = [make_prompt(ex) for ex in batches.next()]
"""
from r1jax.data.iterator import PromptIterator
from r1jax.data.local import read_examples, read_split
from r1jax.data.tasks import TASKS, Source, load_split
from r1jax.data.templates import R1_ZERO_TEMPLATE, r1_zero_prompt

__all__ = ['PromptIterator', 'R1_ZERO_TEMPLATE', 'Source', 'TASKS', 'check_prompt_lengths',
           'load_split',
           'make_prompt', 'r1_zero_prompt', 'read_examples', 'read_split']


def check_prompt_lengths(examples, tokenizer, max_len: int, split: str) -> int:
  """Raises ValueError naming the longest prompt when any is longer than
  `max_len` tokens (found once at load, not when a batch draws it); returns
  the longest length."""
  longest, worst, over = 0, 0, 0
  for i in range(len(examples)):
    n = len(tokenizer.encode(make_prompt(examples[i])))
    over += n > max_len
    if n > longest:
      longest, worst = n, i
  if over:
    where = examples[worst].get('source') or f'{split} example {worst}'
    raise ValueError(f'{over} of {len(examples)} {split} prompts are longer than '
                     f'rl.max_prompt_len={max_len} tokens; the longest ({where}) has {longest}. '
                     'Raise rl.max_prompt_len or drop those examples.')
  return longest


def make_prompt(example: dict) -> str:
  """The R1-Zero prompt (DeepSeek-R1 Table 1) for an example's question."""
  return r1_zero_prompt(example['question'])

"""Rejection sampling (r1jax/rejection.py): a checkpoint's samples of
training prompts, kept by rule, as SFT data.

  python -m r1jax.rejection --config=configs/rejection.py:ckpt=workdir/zero-tiny
  python -m r1jax.rejection '--config=configs/rejection.py:ckpt=/ckpt/stage2,r1,chat,bench=math:math:/data/math_train.jsonl'

Default: the tiny base shipped with r1jax on 1,024 of the built-in
arithmetic task's training questions x 4 samples (T 1.0); one correct,
well-formed, unmixed sample kept per question (the shortest).

Arg keys: ckpt, bench, r1 and chat as configs/eval.py's; k (samples per
question, default 4); limit (the built-in task's training questions
sampled, default 1,024; a `bench` file sets its own limit). Keys:
configs/eval.py's (temperature, …; steps only 'latest': one checkpoint is
sampled) plus: out ('' : <ckpt>/rejection), keep ('one' per prompt or 'all' that
pass, distinct), choose (which one: 'shortest' or 'first'), and filters:
correct, format, complete (not truncated), min_language (share of
target-language words in the chain; 0: off), language ('en' or 'zh', unless
a record says), no_code_blocks, max_paragraph_chars (0: off), max_repetition
(share of repeated word n-grams, n = ngram; 0: off).
"""
from ml_collections import ConfigDict

from r1jax import config as rc


def get_config(arg: str | None = None) -> ConfigDict:
  arg = rc.parse_arg(arg, ckpt='', bench='', r1=False, chat=False, k=4, limit=1024)
  passed = [f'ckpt={arg.ckpt}'] + [f'bench={arg.bench}'] * bool(arg.bench) + (
      ['r1'] if arg.r1 else []) + (['chat'] if arg.chat else [])
  c = rc.sibling_config(__file__, 'eval', ','.join(passed))
  if not arg.bench:  # the built-in task's training questions, not its held-out ones
    c.benchmarks = {'arithmetic': {'format': 'arithmetic', 'path': '', 'fields': {},
                                   'limit': arg.limit, 'prompt': '', 'split': 'train'}}
  c.k = arg.k
  if arg.r1:
    # eval's r1 batches 32 questions x 64 samples into its 512 decode slots;
    # with k samples a question, as many samples a batch (whole multiples of
    # 32 questions, one per batch shard of a v5p-64's 32 chips).
    c.batch_size = max(32, 2048 // c.k // 32 * 32)
  c.pass_k = (1,)
  c.temperature = 1.0 if not arg.r1 else 0.6
  c.top_p = 1.0 if not arg.r1 else 0.95
  c.out = ''
  c.keep = 'one'
  c.choose = 'shortest'
  c.filters = ConfigDict(dict(correct=True, format=True, complete=True, min_language=0.95,
                              language='en', no_code_blocks=True, max_paragraph_chars=4000,
                              max_repetition=0.3, ngram=4))
  return c

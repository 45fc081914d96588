"""Rule-based rewards (DeepSeek-R1 §2.2.2) and the scorer that runs them.

Every reward is `f(prompt, completion, example) -> float` on plain strings;
`completion` is the text generated after the prompt (which ends in
"Assistant:"), e.g. " <think> 3*4=12, 12+5=17 </think> <answer> 17 </answer>".

  accuracy              math-verify equality of the answer with example['answer']
  exact_match           numeric equality, no sympy (see answers.py)
  answer_match          the answer's words = example['answer']'s (the general task)
  choice                the letter of a multiple-choice answer = example['answer']
  code, code_fraction   the answer's program passes example['tests'] in the sandbox
                        (all of them / the share; programs.py, sandbox.py)
  countdown             an expression over example['numbers'] (each at most once) = target
  countdown_all         the same with every number used exactly once (TinyZero)
  format                one <think> block then one <answer> block, nothing else
  language_consistency  share of target-language words in the CoT (R1 eq. 7)

A prompt that already ends in "<think>" (templates that open the block for the
model) counts as the start of the completion for `format` and
`language_consistency`.

`overlong_penalty` is the exception: DAPO's soft overlong punishment (eq. 13)
depends only on lengths, so it is a jnp function used inside the jitted step.

`RewardScorer` runs the string rewards in worker processes (workers.py) with
a per-call time limit that kills the worker, and turns them into scores
[N, R]; the caller applies the weights. Training and evaluation both score
through it.
"""
import os
import threading
from typing import Callable, Mapping, Sequence

from absl import logging
import numpy as np

from r1jax.rewards.answers import (accuracy, answer_match, choice, choice_letter, exact_match,
                                  extract_answer, parse_number)
from r1jax.rewards.programs import code, code_fraction
from r1jax.rewards.countdown import countdown, countdown_all
from r1jax.rewards.rules import format_reward, language_consistency
from r1jax.rewards.workers import WorkerPool

__all__ = ['CORRECTNESS', 'MODEL_REWARD', 'REWARDS', 'RewardScorer', 'accuracy', 'answer_match', 'choice', 'choice_letter',
           'exact_match', 'extract_answer',
           'format_reward', 'language_consistency', 'load_reward', 'overlong_penalty',
           'parse_number']

RewardFn = Callable[[str, str, dict], float]

# The reward a trained reward model gives on device (r1jax/reward_model.py,
# train_step.py), weighted in config.rewards like the rules; only on prompts
# whose example has kind 'general'.
MODEL_REWARD = 'reward_model'


def overlong_penalty(lengths, max_len: int, cache_len: int):
  """DAPO soft overlong punishment (arXiv 2503.14476, eq. 13), float32:

    0                                         if L <= max_len - cache_len
    ((max_len - cache_len) - L) / cache_len   if max_len - cache_len < L <= max_len
    -1                                        if L > max_len

  cache_len = 0 is a hard cut-off: 0 up to max_len, -1 beyond.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top  # workers never import jax
  if not 0 <= cache_len <= max_len:
    raise ValueError(f'need 0 <= cache_len <= max_len, got {cache_len=} {max_len=}')
  lengths = jnp.asarray(lengths, jnp.float32)
  soft = max_len - cache_len
  ramp = (soft - lengths) / max(cache_len, 1)
  return jnp.where(lengths <= soft, 0.0, jnp.where(lengths <= max_len, ramp, -1.0))


REWARDS: dict[str, RewardFn] = {
    'accuracy': accuracy,
    'answer_match': answer_match,
    'choice': choice,
    'code': code,
    'code_fraction': code_fraction,
    'countdown': countdown,
    'countdown_all': countdown_all,
    'exact_match': exact_match,
    'format': format_reward,
    'language_consistency': language_consistency,
}

def load_reward(spec: str) -> RewardFn:
  """The function named by 'package.module:function' (a user's reward: it
  runs in the workers like the built-ins, with their time limit and
  counters; the workers import its module)."""
  import importlib  # pylint: disable=g-import-not-at-top
  module, sep, attr = str(spec).partition(':')
  if not sep or not module or not attr:
    raise ValueError(f'{spec!r}: expected \'package.module:function\'')
  try:
    fn = getattr(importlib.import_module(module), attr)
  except ImportError as e:
    raise ImportError(f'{spec!r}: cannot import {module!r} ({e}); is it on PYTHONPATH?') from None
  except AttributeError:
    raise AttributeError(f'{spec!r}: module {module!r} has no {attr!r}') from None
  if not callable(fn):
    raise TypeError(f'{spec!r} is not a function')
  return fn


# Rewards that judge the final answer (the `accuracy` metric and evaluation
# use the one a config names); the task decides which can score it.
CORRECTNESS = ('accuracy', 'exact_match', 'countdown', 'countdown_all', 'choice', 'answer_match',
               'code', 'code_fraction')

_LOGGED_FAILURES = 5  # per scorer; later failures only increment counters


def default_workers() -> int:
  return max(1, min(8, (os.cpu_count() or 2)))


class RewardScorer:
  """Scores [N, R] float32 for the rewards named in `weights` (in order).

  Each f(prompt, completion, example) runs in a worker process and gets
  `timeout_s` from the moment it starts (queueing time does not count); a call
  over it has its worker killed and replaced. An exception or a timeout scores
  0.0 and increments `errors` / `timeouts`; an input a reward refuses to
  parse (`rules.Rejected`) scores 0 and increments `rejected`; a reward that
  returns None (no verdict: the code sandbox failed) scores NaN, which the
  training step masks out of the loss, and increments `unavailable`. `extra` adds rewards by name
  (module-level functions: the workers import them).
  """

  def __init__(self, weights: Mapping[str, float], timeout_s: float = 5.0,
               workers: int = 0, extra: Mapping[str, RewardFn] | None = None,
               memory_mb: int = 4096):
    known = {**REWARDS, **(extra or {})}
    unknown = [n for n in weights if n not in known]
    if unknown:
      raise ValueError(f'unknown reward {unknown[0]!r}; known: {sorted(known)}')
    self.known = known
    self.names = tuple(weights)
    self.weights = np.asarray([weights[n] for n in self.names], np.float32)
    self.timeout_s = timeout_s
    self.errors = 0
    self.timeouts = 0
    self.rejected = 0
    self.unavailable = 0
    self._lock = threading.Lock()  # device callbacks score from several threads
    self.pool = WorkerPool(workers or default_workers(), timeout_s, memory_mb)

  def counters(self) -> dict:
    with self._lock:
      return {'reward/errors': self.errors, 'reward/timeouts': self.timeouts,
              'reward/rejected': self.rejected, 'reward/unavailable': self.unavailable}

  def _failed(self, kind: str, name: str, message: str):
    setattr(self, kind, getattr(self, kind) + 1)
    count = self.errors + self.timeouts
    if count <= _LOGGED_FAILURES:
      logging.warning('reward %r %s (scored 0): %s%s', name, kind[:-1], message,
                      ' [further failures only counted]' if count == _LOGGED_FAILURES else '')

  def __call__(self, prompts: Sequence[str], completions: Sequence[str],
               examples: Sequence[dict]) -> np.ndarray:
    return self.score(self.names, prompts, completions, examples)

  def score(self, names: Sequence[str], prompts: Sequence[str], completions: Sequence[str],
            examples: Sequence[dict]) -> np.ndarray:
    """[N, len(names)] scores of any known rewards (evaluation uses this)."""
    n = len(completions)
    if not len(prompts) == len(examples) == n:
      raise ValueError(f'{len(prompts)} prompts, {n} completions, {len(examples)} examples')
    with self._lock:
      return self._score(names, prompts, completions, examples)

  def _score(self, names, prompts, completions, examples) -> np.ndarray:
    n = len(completions)
    fns = [self.known[name] for name in names]
    R = len(fns)
    jobs = [(fns[r], prompts[i], completions[i], examples[i]) for i in range(n) for r in range(R)]
    scores_NxR = np.zeros((n, R), np.float32)
    for j, (status, value) in enumerate(self.pool.run(jobs) if jobs else []):
      i, r = divmod(j, R)
      if status == 'ok' and value is None:  # the reward could not judge (sandbox_error)
        scores_NxR[i, r] = np.nan
        self.unavailable += 1
      elif status == 'ok':
        scores_NxR[i, r] = value
      elif status == 'rejected':
        self.rejected += 1
      elif status == 'timeout':
        self._failed('timeouts', names[r], f'still running after {self.timeout_s}s; '
                     'its worker was killed')
      else:
        self._failed('errors', names[r], value)
    return scores_NxR

  def close(self) -> None:
    self.pool.close()

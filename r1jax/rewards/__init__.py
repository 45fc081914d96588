"""Rule-based rewards (DeepSeek-R1 §2.2.2) and the scorer that runs them.

Every reward is `f(prompt, completion, example) -> float` on plain strings;
`completion` is the text generated after the prompt (which ends in
"Assistant:"), e.g. " <think> 3*4=12, 12+5=17 </think> <answer> 17 </answer>".

  accuracy              math-verify equality of the answer with example['answer']
  exact_match           numeric equality, no sympy (see answers.py)
  countdown             an expression over example['numbers'] that equals the target
  format                one <think> block then one <answer> block, nothing else
  language_consistency  share of target-language words in the CoT (R1 eq. 7)

A prompt that already ends in "<think>" (templates that open the block for the
model) counts as the start of the completion for `format` and
`language_consistency`.

`overlong_penalty` is the exception: DAPO's soft overlong punishment (eq. 13)
depends only on lengths, so it is a jnp function used inside the jitted step.

`RewardScorer` runs the string rewards on the host with a per-call time limit
and turns them into scores [N, R]; the caller applies the weights.
"""
import concurrent.futures as cf
import re
import threading
import time
from typing import Callable, Mapping, Sequence

from absl import logging
import jax.numpy as jnp
import numpy as np

from r1jax.rewards.answers import accuracy, exact_match, extract_answer, parse_number
from r1jax.rewards.countdown import countdown

__all__ = ['REWARDS', 'RewardScorer', 'accuracy', 'exact_match', 'extract_answer',
           'format_reward', 'language_consistency', 'overlong_penalty', 'parse_number']

RewardFn = Callable[[str, str, dict], float]

_TAG = re.compile(r'</?(?:think|answer)>')
_FORMAT = re.compile(r'\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*', re.DOTALL)
_THINK = re.compile(r'<think>(.*?)(?:</think>|$)', re.DOTALL)
# CJK ideographs (basic, extension A, compatibility); each one is a word.
_HAN = re.compile(r'[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff]')
_WORD = re.compile(r'[^\W\d_]+')  # a maximal run of letters, any script
_ASCII_WORD = re.compile(r'[A-Za-z]+')


def _response(prompt: str, completion: str) -> str:
  return '<think>' + completion if prompt.rstrip().endswith('<think>') else completion


def format_reward(prompt: str, completion: str, example: dict) -> float:
  """1.0 iff the response is `<think>…</think> <answer>…</answer>` and
  nothing else but whitespace: each tag once (so no nesting and no second
  block), the answer non-empty; the thinking may be empty."""
  del example
  text = _response(prompt, completion)
  m = _FORMAT.fullmatch(text)
  if not m or len(_TAG.findall(text)) != 4 or not m.group(2).strip():
    return 0.0
  return 1.0


def language_consistency(prompt: str, completion: str, example: dict) -> float:
  """Share of words in the chain of thought that are in the target language
  (example['language'], 'en' or 'zh'; default 'en').

  The chain of thought is the first <think> block (to the end if unclosed),
  else the whole completion. Each Han character is one word; other words are
  maximal runs of letters, so digits, punctuation and math symbols count for
  nothing. 'en': ASCII-letter words are on target, everything else (Han,
  Cyrillic, accented words...) is not. 'zh': Han characters are on target,
  every other word is not. A chain with no words scores 1.0: there is no
  mixing to punish, and a pure-arithmetic chain should not lose reward.
  """
  language = example.get('language', 'en')
  if language not in ('en', 'zh'):
    raise ValueError(f"language_consistency supports 'en' and 'zh', got {language!r}")
  text = _response(prompt, completion)
  m = _THINK.search(text)
  cot = m.group(1) if m else text
  han = len(_HAN.findall(cot))
  words = _WORD.findall(_HAN.sub(' ', cot))
  if language == 'en':
    target = sum(1 for w in words if _ASCII_WORD.fullmatch(w))
  else:
    target = han
  total = han + len(words)
  return 1.0 if total == 0 else target / total


def overlong_penalty(lengths, max_len: int, cache_len: int):
  """DAPO soft overlong punishment (arXiv 2503.14476, eq. 13), float32:

    0                                         if L <= max_len - cache_len
    ((max_len - cache_len) - L) / cache_len   if max_len - cache_len < L <= max_len
    -1                                        if L > max_len

  cache_len = 0 is a hard cut-off: 0 up to max_len, -1 beyond.
  """
  if not 0 <= cache_len <= max_len:
    raise ValueError(f'need 0 <= cache_len <= max_len, got {cache_len=} {max_len=}')
  lengths = jnp.asarray(lengths, jnp.float32)
  soft = max_len - cache_len
  ramp = (soft - lengths) / max(cache_len, 1)
  return jnp.where(lengths <= soft, 0.0, jnp.where(lengths <= max_len, ramp, -1.0))


REWARDS: dict[str, RewardFn] = {
    'accuracy': accuracy,
    'countdown': countdown,
    'exact_match': exact_match,
    'format': format_reward,
    'language_consistency': language_consistency,
}

_LOGGED_FAILURES = 5  # per scorer; later failures only increment counters
_POLL_S = 0.02


class RewardScorer:
  """Scores [N, R] float32 for the rewards named in `weights` (in order).

  Each f(prompt, completion, example) runs in a shared thread pool and gets
  `timeout_s` from the moment it starts (queueing time does not count). An
  exception or a timeout scores 0.0 and increments `errors` / `timeouts`.

  A timed-out call cannot be killed (Python has no way to stop a thread): it
  keeps running in the background and holds its worker. Once every worker is
  held that way, the pool is replaced and the queued calls move to the new
  one, so scoring keeps going; the runaway threads are leaked, and a thread
  that never ends will also delay interpreter exit. Threads share the GIL, so
  the pool buys time limits, not speed.
  """

  def __init__(self, weights: Mapping[str, float], timeout_s: float = 5.0,
               max_workers: int = 4, extra: Mapping[str, RewardFn] | None = None):
    known = {**REWARDS, **(extra or {})}
    unknown = [n for n in weights if n not in known]
    if unknown:
      raise ValueError(f'unknown reward {unknown[0]!r}; known: {sorted(known)}')
    self.names = tuple(weights)
    self.weights = np.asarray([weights[n] for n in self.names], np.float32)
    self.fns = tuple(known[n] for n in self.names)
    self.timeout_s = timeout_s
    self.max_workers = max_workers
    self.errors = 0
    self.timeouts = 0
    self._lock = threading.Lock()
    self._pool = cf.ThreadPoolExecutor(max_workers, thread_name_prefix='reward')
    self._runaway: list[cf.Future] = []  # timed out, still running

  def counters(self) -> dict:
    with self._lock:
      return {'reward/errors': self.errors, 'reward/timeouts': self.timeouts}

  def _failed(self, kind: str, name: str, message: str):
    with self._lock:
      setattr(self, kind, getattr(self, kind) + 1)
      count = self.errors + self.timeouts
    if count <= _LOGGED_FAILURES:
      logging.warning('reward %r %s (scored 0): %s%s', name, kind[:-1], message,
                      ' [further failures only counted]' if count == _LOGGED_FAILURES else '')

  def _submit(self, job, started, prompts, completions, examples):
    i, r = job
    def run():
      started[job] = time.monotonic()
      return self.fns[r](prompts[i], completions[i], examples[i])
    return self._pool.submit(run)

  def __call__(self, prompts: Sequence[str], completions: Sequence[str],
               examples: Sequence[dict]) -> np.ndarray:
    n = len(completions)
    if not len(prompts) == len(examples) == n:
      raise ValueError(f'{len(prompts)} prompts, {n} completions, {len(examples)} examples')
    scores_NxR = np.zeros((n, len(self.names)), np.float32)
    started: dict[tuple[int, int], float] = {}
    args = (started, prompts, completions, examples)
    pending = {self._submit((i, r), *args): (i, r)
               for i in range(n) for r in range(len(self.names))}
    while pending:
      done, _ = cf.wait(pending, timeout=_POLL_S, return_when=cf.FIRST_COMPLETED)
      for fut in done:
        i, r = pending.pop(fut)
        try:
          scores_NxR[i, r] = float(fut.result())
        except Exception as e:  # pylint: disable=broad-except  # a reward bug scores 0
          self._failed('errors', self.names[r], f'{type(e).__name__}: {e}')
      now = time.monotonic()
      for fut, (i, r) in list(pending.items()):
        if (i, r) in started and now - started[i, r] > self.timeout_s:
          del pending[fut]
          self._runaway.append(fut)
          self._failed('timeouts', self.names[r], f'still running after {self.timeout_s}s')
      self._runaway = [f for f in self._runaway if not f.done()]
      if len(self._runaway) >= self.max_workers:
        self._replace_pool(pending, args)
    return scores_NxR

  def _replace_pool(self, pending, args):
    """Every worker is stuck: start a fresh pool and move the queued calls."""
    old, self._pool = self._pool, cf.ThreadPoolExecutor(
        self.max_workers, thread_name_prefix='reward')
    self._runaway = []
    for fut, job in list(pending.items()):
      if fut.cancel():
        del pending[fut]
        pending[self._submit(job, *args)] = job
    old.shutdown(wait=False)

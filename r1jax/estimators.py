"""Evaluation estimators over n samples per question (R1's protocol).

  pass@1    mean over questions of c/n (c of the n samples correct), with its
            standard error std(c/n) / sqrt(Q) over the Q questions
  pass@k    the unbiased estimator of Chen et al. 2021 (Codex), per question
            1 - C(n-c, k) / C(n, k), averaged; needs k <= n
  cons@k    majority vote over the first k samples: the answer given most
            often wins, where equivalent answers ('0.5', '1/2', '\\frac{1}{2}')
            are one candidate, and the question counts as solved when the
            winner is correct

Answers are grouped into candidates before voting (`clusters`): each
distinct answer joins the earliest candidate whose first answer it is
equivalent to, under the benchmark's verifier. A vote's ties go to the
candidate whose first sample comes earliest (the lowest sample index), so
the result depends only on the samples, in their order. Samples without an
answer do not vote; a question where none of the first k has one is not
solved.

Everything here is a plain function of the per-sample records in
samples.jsonl (correct, answer's candidate, length, truncated, format), so
every metric can be recomputed from them.
"""
import collections
import math
from typing import Callable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
  """1 - C(n - c, k) / C(n, k), as a stable product (no large binomials)."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f'pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}')
  if n - c < k:
    return 1.0
  return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _key(answer: str | None) -> str | None:
  return answer.strip() if answer is not None and answer.strip() else None


def clusters(answers_QxN: Sequence[Sequence[str | None]],
             equal_many: Callable[[list[tuple[str, str]]], Sequence[bool]]) -> list[list[int]]:
  """Candidate ids (0, 1, …, in order of first appearance) of every
  sample's answer, per question; -1 for a sample without one. Identical
  strings (after stripping) are one candidate without a check; each new
  string joins the first earlier candidate whose first answer it equals.

  `equal_many` judges a list of (answer, candidate's first answer) pairs at
  once: the r-th new string of every question is checked in one call, so
  there are as many calls as the most distinct answers any question has."""
  distinct = [list(dict.fromkeys(k for k in map(_key, q) if k is not None))
              for q in answers_QxN]
  firsts = [[] for _ in answers_QxN]
  of = [{} for _ in answers_QxN]
  for r in range(max((len(d) for d in distinct), default=0)):
    asks = [(q, d[r]) for q, d in enumerate(distinct) if r < len(d)]
    pairs = [(a, f) for q, a in asks for f in firsts[q]]
    verdicts = iter(equal_many(pairs) if pairs else ())
    for q, a in asks:
      hits = [bool(next(verdicts)) for _ in firsts[q]]
      of[q][a] = hits.index(True) if any(hits) else len(firsts[q])
      if of[q][a] == len(firsts[q]):
        firsts[q].append(a)
  return [[-1 if k is None else of[q][k] for k in map(_key, answers)]
          for q, answers in enumerate(answers_QxN)]


def majority(cluster_ids: Sequence[int]) -> int | None:
  """The winning candidate's first sample index among these samples (None
  when no sample has an answer): the most votes, ties to the candidate that
  appears first."""
  votes = collections.Counter(c for c in cluster_ids if c >= 0)
  if not votes:
    return None
  best = max(votes.values())
  winner = next(c for c in cluster_ids if c >= 0 and votes[c] == best)
  return list(cluster_ids).index(winner)


def _quantile(x: np.ndarray, q: float) -> float:
  return float(np.quantile(x, q)) if x.size else float('nan')


def summarize(questions: Sequence[Sequence[dict]], ks: Sequence[int]) -> dict[str, float]:
  """The metrics of one benchmark from its per-question sample records
  (each a list of n dicts with 'correct', 'cluster', 'length', 'truncated',
  'format', in sample order). pass@k and cons@k for every k in `ks` from 2
  to n; n is the smallest sample count of any question."""
  if not questions:
    raise ValueError('no questions to summarize')
  n = min(len(q) for q in questions)
  correct = np.array([[bool(s['correct']) for s in q[:n]] for q in questions])
  rate = correct.mean(axis=1)
  Q = len(questions)
  out = {'questions': Q, 'samples': n, 'pass@1': float(rate.mean()),
         'pass@1_stderr': float(rate.std(ddof=1) / math.sqrt(Q)) if Q > 1 else float('nan')}
  for k in sorted(set(ks)):
    if not 2 <= k <= n:  # (cons@1 would be the first sample's accuracy)
      continue
    out[f'pass@{k}'] = float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(axis=1)]))
    solved = []
    for q in questions:
      first = majority([s['cluster'] for s in q[:k]])
      solved.append(first is not None and bool(q[first]['correct']))
    out[f'cons@{k}'] = float(np.mean(solved))
  flat = [s for q in questions for s in q[:n]]
  lengths = np.array([s['length'] for s in flat], np.float64)
  ok = np.array([bool(s['correct']) for s in flat])
  for name, sel in (('', slice(None)), ('_correct', ok), ('_incorrect', ~ok)):
    part = lengths[sel]
    out[f'length{name}/mean'] = float(part.mean()) if part.size else float('nan')
    out[f'length{name}/median'] = _quantile(part, 0.5)
    out[f'length{name}/p90'] = _quantile(part, 0.9)
  out['truncated'] = float(np.mean([bool(s['truncated']) for s in flat]))
  out['format_rate'] = float(np.mean([bool(s['format']) for s in flat]))
  if flat and all('language' in s for s in flat):
    # R1's language consistency (rewards.language_consistency): the mean share
    # of target-language words in the chains.
    out['language'] = float(np.mean([s['language'] for s in flat]))
  return out

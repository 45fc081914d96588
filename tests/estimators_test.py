"""The evaluation estimators against hand-computed values."""
import math

import numpy as np
import pytest

from r1jax import estimators as est


def test_unbiased_pass_at_k_for_n5_c2():
  # 1 - C(3, k) / C(5, k): C(5, k) = 5, 10, 10, 5, 1 and C(3, k) = 3, 3, 1, 0, 0.
  want = [1 - 3 / 5, 1 - 3 / 10, 1 - 1 / 10, 1.0, 1.0]
  got = [est.pass_at_k(5, 2, k) for k in range(1, 6)]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert est.pass_at_k(5, 0, 3) == 0.0 and est.pass_at_k(5, 5, 1) == 1.0
  # A large n stays exact (no overflowing binomials).
  assert est.pass_at_k(1000, 1, 1) == pytest.approx(1e-3)
  assert est.pass_at_k(1000, 10, 100) == pytest.approx(
      1 - math.comb(990, 100) / math.comb(1000, 100), rel=1e-9)
  with pytest.raises(ValueError, match='k <= n'):
    est.pass_at_k(4, 1, 5)


def _equivalent(pairs):
  """0.5 = 1/2 = \\frac{1}{2}; everything else by string."""
  half = {'0.5', '1/2', '\\frac{1}{2}'}
  return [a == b or (a in half and b in half) for a, b in pairs]


def test_clusters_join_equivalent_answers_in_order_of_first_appearance():
  answers = [['1/2', '3', None, '0.5', ' 3 ', '\\frac{1}{2}', '7'], ['x', 'x', '']]
  calls = []

  def equal(pairs):
    calls.append(len(pairs))
    return _equivalent(pairs)

  ids = est.clusters(answers, equal)
  assert ids == [[0, 1, -1, 0, 1, 0, 2], [0, 0, -1]]
  # Distinct strings of question 0: 1/2, 3, 0.5, \frac, 7 -> rounds 1..4 ask
  # 1, 2, 2, 2 pairs (against the candidates so far); the first asks none.
  assert calls == [1, 2, 2, 2]


def test_majority_vote_counts_equivalent_answers_as_one_and_breaks_ties_by_first_sample():
  # Votes: 1/2 (3 ways of writing it) beats 3 (twice) although no single
  # string of it appears more than once.
  answers = ['3', '1/2', '3', '0.5', '\\frac{1}{2}', None]
  ids = est.clusters([answers], _equivalent)[0]
  assert est.majority(ids) == 1  # the first sample of the winning candidate
  # A 2-2 tie: the candidate seen first wins, whatever the order after.
  assert est.majority(est.clusters([['5', '4', '4', '5']], _equivalent)[0]) == 0
  assert est.majority(est.clusters([['4', '5', '5', '4']], _equivalent)[0]) == 0
  assert est.majority([-1, -1]) is None


def _sample(correct, cluster, length=10, truncated=False, fmt=True):
  return dict(correct=correct, cluster=cluster, length=length, truncated=truncated, format=fmt)


def test_summarize_by_hand():
  q0 = [_sample(True, 0, 10), _sample(False, 1, 30), _sample(True, 0, 20), _sample(False, 1, 40)]
  q1 = [_sample(False, 0, 50, True), _sample(False, 1, 60), _sample(False, 1, 70, fmt=False),
        _sample(True, 2, 80)]
  q2 = [_sample(False, -1, 5, True, False)] * 4
  m = est.summarize([q0, q1, q2], (1, 2, 4))
  assert m['questions'] == 3 and m['samples'] == 4
  rates = np.array([0.5, 0.25, 0.0])
  assert m['pass@1'] == pytest.approx(rates.mean())
  assert m['pass@1_stderr'] == pytest.approx(rates.std(ddof=1) / math.sqrt(3))
  # pass@2 = 1 - C(n-c, 2)/C(n, 2): q0 1 - 1/6, q1 1 - 3/6, q2 0.
  assert m['pass@2'] == pytest.approx((5 / 6 + 1 / 2 + 0) / 3)
  assert m['pass@4'] == pytest.approx(2 / 3)
  # cons@2: q0 tie 0-1 -> candidate 0 (correct); q1 tie -> candidate 0 (wrong); q2 no answer.
  assert m['cons@2'] == pytest.approx(1 / 3)
  # cons@4: q0 tie -> correct; q1 candidate 1 has 2 votes (wrong).
  assert m['cons@4'] == pytest.approx(1 / 3)
  assert 'cons@1' not in m
  assert m['length_correct/mean'] == pytest.approx((10 + 20 + 80) / 3)
  assert m['length_incorrect/median'] == pytest.approx(np.median([30, 40, 50, 60, 70] + [5] * 4))
  assert m['length/p90'] == pytest.approx(np.quantile([10, 30, 20, 40, 50, 60, 70, 80] + [5] * 4,
                                                      0.9))
  assert m['truncated'] == pytest.approx(5 / 12) and m['format_rate'] == pytest.approx(7 / 12)

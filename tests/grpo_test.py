"""GRPO math with numbers you can check by hand."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import grpo

A = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
ONE = A([1.0])


def test_advantages_estimators():
  r = A([[[1], [0], [0], [1]]])  # B=1, G=4, R=1
  np.testing.assert_allclose(grpo.advantages(r, ONE, 'grpo', eps=0), [[1, -1, -1, 1]])
  np.testing.assert_allclose(grpo.advantages(r, ONE, 'drgrpo'), [[.5, -.5, -.5, .5]])
  # r_1 - mean(others) = 1 - 1/3
  np.testing.assert_allclose(grpo.advantages(r, ONE, 'rloo'), [[2 / 3, -2 / 3, -2 / 3, 2 / 3]],
                             rtol=1e-6)
  # Batch std of [1, 0, 3, 3] is sqrt(1.6875).
  r2 = A([[[1], [0]], [[3], [3]]])
  np.testing.assert_allclose(grpo.advantages(r2, ONE, 'batch_std', eps=0),
                             [[.5 / math.sqrt(1.6875), -.5 / math.sqrt(1.6875)], [0, 0]],
                             rtol=1e-6)
  # A group with equal rewards has zero advantage, not NaN.
  np.testing.assert_allclose(grpo.advantages(A([[[2], [2]]]), ONE, 'grpo'), [[0, 0]])
  with pytest.raises(ValueError, match='rl.advantage'):
    grpo.advantages(r, ONE, 'ppo')


def test_weighted_sum_and_per_reward_normalisation():
  # Accuracy [1,0,0,0] and a 10x larger reward [0,10,10,0], weights 1 and 1.
  r = A([[[1, 0], [0, 10], [0, 10], [0, 0]]])
  w = A([1.0, 1.0])
  plain = grpo.advantages(r, w, 'drgrpo')  # sums [1,10,10,0], mean 5.25
  np.testing.assert_allclose(plain, [[-4.25, 4.75, 4.75, -5.25]])
  # GDPO: accuracy -> [3, -1, -1, -1]/sqrt(3); the other -> [-1, 1, 1, -1];
  # sum, then standardise over the batch.
  s3 = math.sqrt(3)
  total = np.array([3 / s3 - 1, -1 / s3 + 1, -1 / s3 + 1, -1 / s3 - 1])
  expected = (total - total.mean()) / total.std()
  np.testing.assert_allclose(grpo.advantages(r, w, 'grpo', per_reward=True, eps=0)[0],
                             expected, rtol=1e-5)


def test_zero_spread_fraction():
  assert float(grpo.zero_spread_fraction(A([[1, 1], [0, 1], [0, 0]]))) == pytest.approx(2 / 3)


def test_kl_estimators():
  logp, ref = A([-1.0]), A([-2.0])  # log(π_ref/π_θ) = -1
  assert float(grpo.kl_divergence(logp, ref, 'k1')[0]) == pytest.approx(1.0)
  assert float(grpo.kl_divergence(logp, ref, 'k2')[0]) == pytest.approx(0.5)
  assert float(grpo.kl_divergence(logp, ref, 'k3')[0]) == pytest.approx(math.exp(-1))
  # All three are zero when the policies agree.
  for k in grpo.KL_ESTIMATORS:
    assert float(grpo.kl_divergence(logp, logp, k)[0]) == 0.0


def test_aggregations():
  loss = A([[1, 2, 3], [4, 0, 0]])
  mask = jnp.array([[1, 1, 1], [1, 0, 0]], bool)
  assert float(grpo.aggregate(loss, mask, 'seq_mean')) == pytest.approx((2 + 4) / 2)
  assert float(grpo.aggregate(loss, mask, 'token_mean')) == pytest.approx(10 / 4)
  assert float(grpo.aggregate(loss, mask, 'constant')) == pytest.approx(10 / 6)


def test_micro_batches_add_up_to_the_whole_update():
  rng = np.random.default_rng(0)
  loss = A(rng.normal(size=(4, 5)))
  mask = jnp.asarray(rng.random((4, 5)) > 0.3).at[:, 0].set(True)
  for kind in grpo.AGGREGATIONS:
    norm = grpo.normalisers(mask)
    parts = sum(grpo.aggregate(loss[i:i + 2], mask[i:i + 2], kind, norm) for i in (0, 2))
    np.testing.assert_allclose(parts, grpo.aggregate(loss, mask, kind), rtol=1e-6)


def _loss(logp, old, adv, cfg, ref=None, mask=None):
  logp, old = A([logp]).T, A([old]).T  # one token per sequence
  mask = jnp.ones_like(logp, bool) if mask is None else mask
  return grpo.policy_loss(logp, old, None if ref is None else A([ref]).T, A(adv), mask, cfg)


def test_clipping_and_dual_clip():
  cfg = grpo.LossConfig(beta=0.0, epsilon_low=0.2, epsilon_high=0.2, loss_agg='token_mean')
  # ratio 1.5 with Â=+1 is clipped to 1.2: loss -1.2; ratio 0.5 with Â=-1: -0.8 -> +0.8.
  loss, m = _loss([math.log(1.5), math.log(0.5)], [0.0, 0.0], [1.0, -1.0], cfg)
  assert float(loss) == pytest.approx((-1.2 + 0.8) / 2)
  assert float(m['clip_high_sum']) == 1 and float(m['clip_low_sum']) == 1
  # Inside the trust region nothing is clipped: loss = -ρÂ.
  loss, m = _loss([math.log(1.1)], [0.0], [2.0], cfg)
  assert float(loss) == pytest.approx(-2.2) and float(m['clip_high_sum']) == 0
  # Clip-higher: ε_high = 0.28 lets ρ = 1.25 through.
  loss, _ = _loss([math.log(1.25)], [0.0], [1.0], cfg._replace(epsilon_high=0.28))
  assert float(loss) == pytest.approx(-1.25)
  # Dual clip: ρ = 5, Â = -1: min(-5, -1.2) = -5, bounded by c·Â = -3 -> loss 3.
  loss, _ = _loss([math.log(5.0)], [0.0], [-1.0], cfg._replace(dual_clip=3.0))
  assert float(loss) == pytest.approx(3.0)
  loss, _ = _loss([math.log(5.0)], [0.0], [-1.0], cfg)
  assert float(loss) == pytest.approx(5.0)


def test_kl_term_in_loss():
  cfg = grpo.LossConfig(beta=0.5, kl_estimator='k3', loss_agg='token_mean')
  loss, m = _loss([-1.0], [-1.0], [0.0], cfg, ref=[-2.0])
  assert float(loss) == pytest.approx(0.5 * math.exp(-1))
  assert float(m['kl_sum']) == pytest.approx(math.exp(-1))


def test_gspo_sequence_ratio():
  logp = A([[math.log(2.0), 0.0, 5.0]])
  old = A([[0.0, 0.0, 0.0]])
  mask = jnp.array([[True, True, False]])
  ratio = grpo.importance_ratio(logp, old, mask, 'sequence')
  np.testing.assert_allclose(ratio[0, :2], [math.sqrt(2)] * 2, rtol=1e-6)


def test_mu_one_gradient_is_the_policy_gradient():
  """With old = stop_gradient(logp) the ratio is 1 and d loss / d logp_t is
  -Â_i / (|o_i| N) for seq_mean."""
  logp = A([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
  mask = jnp.array([[1, 1, 1], [1, 1, 0]], bool)
  adv = A([1.0, -2.0])
  cfg = grpo.LossConfig(beta=0.0)
  grad = jax.grad(lambda lp: grpo.policy_loss(
      lp, jax.lax.stop_gradient(lp), None, adv, mask, cfg)[0])(logp)
  np.testing.assert_allclose(grad, [[-1 / 6] * 3, [1 / 2, 1 / 2, 0]], rtol=1e-6)


def test_dynamic_sampling_slots():
  slots, count = grpo.dynamic_sampling_slots(jnp.int32(1), jnp.array([True, False, True, True]), 3)
  np.testing.assert_array_equal(slots, [1, 3, 2, 3])
  assert int(count) == 3
  buf = jnp.zeros(3).at[slots].set(jnp.array([10., 11., 12., 13.]), mode='drop')
  np.testing.assert_array_equal(buf, [0, 10, 12])


def test_samples_without_a_verdict_are_left_out_of_their_group():
  r = jnp.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])[..., None]
  valid = jnp.array([[True, True, False, True], [True] * 4])
  adv = grpo.advantages(r, jnp.ones(1), 'grpo', valid_BxG=valid)
  three = grpo.advantages(jnp.array([[1.0, 0.0, 1.0]])[..., None], jnp.ones(1), 'grpo')
  np.testing.assert_allclose(adv[0], [three[0, 0], three[0, 1], 0.0, three[0, 2]], atol=1e-6)
  np.testing.assert_allclose(three[0], [2 ** -0.5, -2 ** 0.5, 2 ** -0.5], rtol=1e-5)
  np.testing.assert_allclose(adv[1], grpo.advantages(r[1:], jnp.ones(1), 'grpo')[0], atol=1e-6)
  # RLOO's G/(G-1) counts the valid members: 3/2 here.
  rloo = grpo.advantages(r, jnp.ones(1), 'rloo', valid_BxG=valid)
  np.testing.assert_allclose(rloo[0], [0.5, -1.0, 0.0, 0.5], atol=1e-6)

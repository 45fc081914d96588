"""Sequence packing: the best-fit layout, the round trip of per-token values,
and log-probs, losses and gradients over packed rows equal to the padded
(prefix-sharing) computation at f32."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import grpo, models, packing
from r1jax.train_step import completion_logprobs, packed_logprobs

B, G, P, T, V = 3, 4, 7, 20, 64


def _batch(seed=0):
  r = np.random.default_rng(seed)
  prompt = jnp.asarray(r.integers(3, V, (B, P)), jnp.int32)
  prompt_mask = jnp.arange(P)[None] >= jnp.array([0, 3, 5])[:, None]
  prompt = jnp.where(prompt_mask, prompt, 0)
  lengths = np.concatenate([[T, 1], r.integers(1, T + 1, B * G - 2)])  # the extremes and a spread
  mask = jnp.asarray(np.arange(T)[None] < lengths[:, None])
  tokens = jnp.where(mask, jnp.asarray(r.integers(3, V, (B * G, T)), jnp.int32), 0)
  return prompt, prompt_mask, tokens, mask


def test_best_fit_decreasing_places_every_sequence_once_within_its_row():
  lengths = jnp.array([5, 9, 3, 10, 2, 7, 1, 4], jnp.int32)
  row, offset, rows = packing.best_fit(lengths, 10, 8)
  row, offset, lengths = np.asarray(row), np.asarray(offset), np.asarray(lengths)
  used = np.zeros((8, 10), int)
  for r, o, n in zip(row, offset, lengths):
    used[r, o:o + n] += 1
  assert used.max() == 1 and used.sum() == lengths.sum() and (offset + lengths <= 10).all()
  # 41 tokens in rows of 10: best fit needs 5 rows (10 | 9+1 | 7+3 | 5+4 | 2), a prefix.
  assert int(rows) == 5 and set(row.tolist()) == set(range(5))
  # The 1 goes into the row of the 9 (the tightest fit), not a fresh one.
  assert row[6] == row[1]


@pytest.mark.parametrize('shards', [1, 3])
def test_per_token_values_go_to_their_slots_and_back(shards):
  prompt, prompt_mask, tokens, mask = _batch()
  rows = packing.pack(prompt, prompt_mask, tokens, mask, B * G, shards=shards)
  L = P + T - 1
  assert rows.tokens_RxL.shape == (B * G, L)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(B * G, T)), jnp.float32)
  back = packing.from_rows(packing.to_rows(x, rows), rows)
  np.testing.assert_array_equal(back, jnp.where(mask, x, 0.0))
  # Each slot's target is the token its sample has there; positions restart.
  targets = packing.from_rows(rows.targets_RxL, rows)
  np.testing.assert_array_equal(targets, jnp.where(mask, tokens, 0))
  seg = np.asarray(rows.segments_RxL)
  lengths = np.asarray(prompt_mask.sum(1)).repeat(G) + np.asarray(mask.sum(1)) - 1
  assert (np.bincount(seg.ravel(), minlength=B * G + 1)[1:] == lengths).all()
  assert rows.rows.shape == (shards,) and int(rows.rows.sum()) < B * G  # short samples share rows
  # Each shard's rows hold only its own samples, in a prefix of its B·G/S rows.
  R, n = B * G // shards, B * G // shards
  for d in range(shards):
    mine = seg[d * R:(d + 1) * R]
    assert set(np.unique(mine)) - {0} <= set(range(d * n + 1, (d + 1) * n + 1))
    used = (mine > 0).any(axis=1)
    assert used.sum() == int(rows.rows[d]) and not used[int(rows.rows[d]):].any()


@pytest.mark.parametrize('attention,shards', [('dense', 1), ('blockwise', 1), ('blockwise', 3)])
def test_packed_logprobs_and_gradients_equal_the_padded_ones(attention, shards):
  cfg = dataclasses.replace(models.get_preset('tiny', vocab_size=V), attention=attention,
                            attention_block=16)
  model = models.create(cfg, seed=0)
  prompt, prompt_mask, tokens, mask = _batch()
  rows = packing.pack(prompt, prompt_mask, tokens, mask, B * G, shards=shards)
  ref = completion_logprobs(model, prompt, prompt_mask, tokens, 0.7, impl='chunked')
  got = packing.from_rows(packed_logprobs(model, rows, 0.7, impl='chunked'), rows)
  np.testing.assert_allclose(got, jnp.where(mask, ref, 0.0), atol=1e-5)

  # One GRPO loss (GSPO's sequence ratio: segments) and its gradient both ways.
  from flax import nnx
  graphdef, params = nnx.split(model)
  adv = jnp.asarray(np.random.default_rng(2).normal(size=B * G), jnp.float32)
  old = jax.lax.stop_gradient(ref) + 0.3 * jnp.asarray(
      np.random.default_rng(3).normal(size=ref.shape), jnp.float32)
  lc = grpo.LossConfig(beta=0.0, ratio='sequence', loss_agg='seq_mean', epsilon_low=3e-2,
                       epsilon_high=4e-2)

  def padded(params):
    m = nnx.merge(graphdef, params)
    logp = completion_logprobs(m, prompt, prompt_mask, tokens, 0.7, impl='chunked')
    return grpo.policy_loss(logp, old, None, adv, mask, lc)

  def packed(params):
    m = nnx.merge(graphdef, params)
    logp = packed_logprobs(m, rows, 0.7, impl='chunked')
    n = B * G
    w = packing.to_rows(grpo.token_weights(mask, lc.loss_agg), rows)
    return grpo.policy_loss(logp, packing.to_rows(old, rows), None,
                            packing.to_rows(jnp.broadcast_to(adv[:, None], (n, T)), rows),
                            packing.to_rows(mask, rows, False), lc, weights_NxT=w,
                            segments=(rows.segments_RxL, n + 1))

  (l1, m1), g1 = jax.value_and_grad(padded, has_aux=True)(params)
  (l2, m2), g2 = jax.value_and_grad(packed, has_aux=True)(params)
  np.testing.assert_allclose(l2, l1, rtol=1e-5, atol=1e-7)
  for k in m1:
    np.testing.assert_allclose(m2[k], m1[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert float(m1['clip_low_sum'] + m1['clip_high_sum']) > 0  # clipping is exercised
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(b, a, atol=2e-6)

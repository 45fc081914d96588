"""Sampling: greedy, the sampled distribution, log-probs, truncation, stopping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from r1jax import models
from r1jax.rollout import (SamplingConfig, filter_logits, generate, generate_in_chunks,
                           sample_logits)
from r1jax.train_step import completion_logprobs


@pytest.fixture(scope='module')
def model():
  return models.create(models.get_preset('tiny', vocab_size=64), seed=0)


def _prompts(B=3, P=7, vocab=64):
  rng = np.random.default_rng(1)
  ids = jnp.asarray(rng.integers(3, vocab, (B, P)), jnp.int32)
  pad = jnp.array([0, 3, 5])[:B]
  mask = jnp.arange(P)[None] >= pad[:, None]
  return jnp.where(mask, ids, 0), mask


def test_greedy_equals_full_forward_argmax(model):
  prompt, mask = _prompts()
  cfg = SamplingConfig(max_new_tokens=6, temperature=0.0)
  ro = jax.jit(lambda p, m: generate(model, p, m, jax.random.key(0), cfg, group_size=2))(
      prompt, mask)
  seq, seq_mask = prompt, mask
  for t in range(6):
    nxt = jnp.argmax(model(seq, mask_BxT=seq_mask)[:, -1], axis=-1)
    np.testing.assert_array_equal(ro.tokens_NxT[::2, t], nxt)
    np.testing.assert_array_equal(ro.tokens_NxT[1::2, t], nxt)  # both samples agree
    seq = jnp.concatenate([seq, nxt[:, None]], 1)
    seq_mask = jnp.concatenate([seq_mask, jnp.ones((3, 1), bool)], 1)
  assert ro.mask_NxT.all() and ro.truncated_N.all() and int(ro.num_steps) == 6


def test_sampled_distribution_matches_softmax(model):
  """Chi-square test of 20k first tokens of one prompt against softmax(logits/τ)."""
  prompt, mask = _prompts(B=1)
  cfg = SamplingConfig(max_new_tokens=1, temperature=0.7)
  ro = generate(model, prompt, mask, jax.random.key(3), cfg, group_size=20_000)
  probs = np.asarray(jax.nn.softmax(model(prompt, mask_BxT=mask)[0, -1] / 0.7), np.float64)
  probs /= probs.sum()
  counts = np.bincount(np.asarray(ro.tokens_NxT[:, 0]), minlength=probs.size)
  keep = probs * 20_000 >= 5  # pool rare tokens into one cell
  observed, expected = counts[keep], probs[keep] * 20_000
  if (~keep).any():
    observed = np.append(observed, counts[~keep].sum())
    expected = np.append(expected, probs[~keep].sum() * 20_000)
  p_value = stats.chisquare(observed, expected).pvalue
  assert p_value > 1e-3, p_value


def test_sampler_logprobs_equal_full_forward(model):
  prompt, mask = _prompts()
  cfg = SamplingConfig(max_new_tokens=8, temperature=0.8, top_p=0.9, top_k=20)
  ro = generate(model, prompt, mask, jax.random.key(1), cfg, group_size=4)
  # Independent reference: one full forward over prompt + completion per row.
  seq = jnp.concatenate([jnp.repeat(prompt, 4, 0), ro.tokens_NxT], 1)
  seq_mask = jnp.concatenate([jnp.repeat(mask, 4, 0), jnp.ones_like(ro.mask_NxT)], 1)
  logits = model(seq, mask_BxT=seq_mask)[:, prompt.shape[1] - 1:-1] / 0.8
  ref = jnp.take_along_axis(jax.nn.log_softmax(logits), ro.tokens_NxT[..., None], -1)[..., 0]
  np.testing.assert_allclose(ro.logp_NxT, ref, atol=1e-5)
  # The training-side computation (shared prompt prefill) agrees too.
  train = completion_logprobs(model, prompt, mask, ro.tokens_NxT, 0.8)
  np.testing.assert_allclose(train, ref, atol=1e-5)


def test_top_k_and_top_p_never_emit_excluded_tokens():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.1, 0.06, 0.04]]))
  np.testing.assert_array_equal(jnp.isfinite(filter_logits(logits, 1.0, 2)), [[1, 1, 0, 0, 0]])
  # Nucleus 0.85: 0.5 + 0.3 < 0.85, so 0.1 is still needed; 0.06 is not.
  np.testing.assert_array_equal(jnp.isfinite(filter_logits(logits, 0.85, 0)), [[1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(jnp.isfinite(filter_logits(logits, 0.5, 0)), [[1, 0, 0, 0, 0]])
  many = jnp.repeat(logits, 5000, 0)
  for cfg, allowed in [(SamplingConfig(1, top_k=2), {0, 1}),
                       (SamplingConfig(1, top_p=0.85), {0, 1, 2}),
                       (SamplingConfig(1, top_p=0.9, top_k=2), {0, 1})]:
    tokens, _ = sample_logits(many, jax.random.split(jax.random.key(0), len(many)), cfg)
    assert set(np.unique(np.asarray(tokens)).tolist()) == allowed


def test_eos_stops_masks_and_flags_truncation(model):
  prompt, mask = _prompts()
  eos = tuple(range(0, 64, 3))  # a third of the vocabulary ends a sequence
  cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, eos_ids=eos, pad_id=1)
  ro = generate(model, prompt, mask, jax.random.key(5), cfg, group_size=4)
  tokens, m = np.asarray(ro.tokens_NxT), np.asarray(ro.mask_NxT)
  for row, mrow, trunc in zip(tokens, m, np.asarray(ro.truncated_N)):
    ends = [t for t in range(12) if row[t] in eos]
    if ends:
      n = ends[0] + 1  # mask covers the EOS itself
      assert not trunc and mrow[:n].all() and not mrow[n:].any()
      assert (row[n:] == 1).all()
    else:
      assert trunc and mrow.all()
  lengths = m.sum(1)
  assert int(ro.num_steps) == lengths.max() <= 12
  assert (np.asarray(ro.logp_NxT)[~m] == 0).all()


def test_deterministic_for_a_fixed_key(model):
  prompt, mask = _prompts()
  cfg = SamplingConfig(max_new_tokens=5, temperature=1.0)
  a = generate(model, prompt, mask, jax.random.key(7), cfg, group_size=3)
  b = generate(model, prompt, mask, jax.random.key(7), cfg, group_size=3)
  c = generate(model, prompt, mask, jax.random.key(8), cfg, group_size=3)
  np.testing.assert_array_equal(a.tokens_NxT, b.tokens_NxT)
  assert not np.array_equal(a.tokens_NxT, c.tokens_NxT)


def test_a_rollout_in_chunks_equals_the_whole_batch():
  """Issue 13.6: rl.rollout_chunks samples the prompts in sequential chunks
  (one KV cache at a time); with per-sample keys the sampled tokens and
  log-probs are the whole batch's, rows in prompt order."""
  model = models.create(models.get_preset('tiny'), seed=0)
  r = np.random.default_rng(0)
  prompt = jnp.asarray(r.integers(3, 500, (6, 12)), jnp.int32)
  mask = jnp.asarray(np.arange(12)[None] >= r.integers(0, 6, (6, 1)))
  cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, eos_ids=(), pad_id=0)
  whole = generate(model, prompt, mask, jax.random.key(0), cfg, 2)
  chunked = jax.jit(lambda p, m: generate_in_chunks(model, p, m, jax.random.key(0), cfg, 2, 3))(
      prompt, mask)
  np.testing.assert_array_equal(chunked.tokens_NxT, whole.tokens_NxT)
  np.testing.assert_allclose(chunked.logp_NxT, whole.logp_NxT, atol=1e-5)
  np.testing.assert_array_equal(chunked.mask_NxT, whole.mask_NxT)


@pytest.mark.parametrize('P, T', [(7, 150), (7, 300), (64, 100), (100, 90)])
def test_the_cpu_block_buffer_rollout_equals_the_stacked_cache(model, P, T, monkeypatch):
  """On CPU a static rollout longer than one decode block keeps its cache as
  block buffers per layer (rollout._static_blocks); its tokens are those of
  the stacked cache's decode (the path of other platforms), EOS and
  budgets included; prompts of one block and more (64: the decode starts
  in a fresh block; 100: in the prompt's half-filled second block)."""
  from r1jax import rollout
  prompt, mask = _prompts(P=P)
  cfg = SamplingConfig(max_new_tokens=T, temperature=1.0, top_p=0.9, eos_ids=(5,), pad_id=1)
  budget = jnp.asarray(np.random.default_rng(4).integers(T // 2, T + 1, 3 * 4))
  run = lambda: jax.jit(lambda p, m: generate(  # noqa: E731
      model, p, m, jax.random.key(5), cfg, 4, budget_N=budget))(prompt, mask)
  calls = []
  blocks = rollout._static_blocks
  monkeypatch.setattr(rollout, '_static_blocks', lambda *a: calls.append(1) or blocks(*a))
  ro = run()
  assert calls
  monkeypatch.setattr(rollout, '_static_blocks', rollout._static)
  ref = run()
  lengths = np.asarray(ref.mask_NxT).sum(1)
  assert P + lengths.max() > 2 * 64 and len(set(lengths.tolist())) > 4  # past two decode blocks
  np.testing.assert_array_equal(ro.tokens_NxT, ref.tokens_NxT)
  np.testing.assert_array_equal(ro.mask_NxT, ref.mask_NxT)
  np.testing.assert_array_equal(ro.truncated_N, ref.truncated_N)
  np.testing.assert_allclose(ro.logp_NxT, ref.logp_NxT, atol=1e-5)
  assert int(ro.num_steps) == int(ref.num_steps)


@pytest.mark.parametrize('case', ['lora', 'sharded'])
def test_the_block_buffer_rollout_with_lora_adapters_and_on_a_batch_sharded_mesh(case,
                                                                                monkeypatch):
  """The block buffers (rollout._static_blocks) with LoRA adapters on every
  target (non-zero B: the adapters change the tokens), and with the batch
  split over a (data 4) mesh under the sampler's rules: the tokens are those
  of the stacked cache's decode in the same setting, and the sharded rollout
  is the one-device rollout."""
  import dataclasses
  from r1jax import rollout, sharding as shd
  from r1jax.models.config import LORA_TARGETS
  cfg = models.get_preset('tiny', vocab_size=64)
  mesh = None
  if case == 'lora':
    cfg = dataclasses.replace(cfg, lora_rank=4, lora_targets=LORA_TARGETS)
  model = models.create(cfg, seed=0)
  if case == 'lora':
    rng = np.random.default_rng(7)
    for name, var in vars(model.layers).items():
      if name.endswith('_lora_b'):
        var.set_value(jnp.asarray(0.05 * rng.normal(size=var.get_value().shape), jnp.float32))
  else:
    mesh = shd.make_mesh(4, 1, 1, devices=jax.devices()[:4])
    sharded = models.create(cfg, seed=0, mesh=mesh)
  prompt, mask = _prompts(B=2, P=7)
  prompt, mask = jnp.concatenate([prompt, prompt[::-1]]), jnp.concatenate([mask, mask[::-1]])
  T = 140  # past two 64-slot decode blocks
  sampling = SamplingConfig(max_new_tokens=T, temperature=1.0, eos_ids=(), pad_id=1)

  def run(m, on_mesh=None):
    def f(p, pm):
      with shd.activation_rules(on_mesh, shd.SAMPLE_RULES):
        return generate(m, p, pm, jax.random.key(8), sampling, 4)
    return jax.jit(f)(prompt, mask)

  calls = []
  blocks = rollout._static_blocks
  monkeypatch.setattr(rollout, '_static_blocks', lambda *a: calls.append(1) or blocks(*a))
  ro = run(model) if case == 'lora' else run(sharded, mesh)
  assert calls
  monkeypatch.setattr(rollout, '_static_blocks', rollout._static)
  refs = [run(model)] if case == 'lora' else [run(sharded, mesh), run(model)]
  assert ro.tokens_NxT.shape == (16, T) and bool(ro.mask_NxT.all())
  if case == 'sharded':  # the rows really are split over the 4 devices
    assert len(ro.tokens_NxT.sharding.device_set) == 4
    assert not ro.tokens_NxT.sharding.is_fully_replicated
  for ref in refs:
    np.testing.assert_array_equal(ro.tokens_NxT, ref.tokens_NxT)
    np.testing.assert_allclose(ro.logp_NxT, ref.logp_NxT, atol=1e-5)
  if case == 'lora':  # the adapters are in effect: the base model samples otherwise
    base = models.create(dataclasses.replace(cfg, lora_rank=0, lora_targets=()), seed=0)
    assert (np.asarray(run(base).tokens_NxT) != np.asarray(ro.tokens_NxT)).any()


@pytest.mark.parametrize('T', [12, 150])  # 150: decode over cache blocks (> 64 slots)
def test_continuous_batching_reproduces_the_static_sampler_token_for_token(model, T):
  """Issue 13.4: with fewer decode slots than samples, slots are refilled
  from the queue as samples end (EOS or their budget); every sample's tokens
  are the static batch's for the same key, whatever the slot count, and the
  steps run follow the tokens generated."""
  prompt, mask = _prompts()
  cfg = SamplingConfig(max_new_tokens=T, temperature=1.0, top_p=0.9, eos_ids=(5, 9, 11),
                       pad_id=1)
  G = 4
  budget = jnp.asarray(np.random.default_rng(2).integers(1, T + 1, 3 * G))
  run = jax.jit(lambda p, m, slots, shards=1: generate(model, p, m, jax.random.key(3), cfg, G,
                                                       slots=slots, shards=shards,
                                                       budget_N=budget),
                static_argnums=(2, 3))
  ref = run(prompt, mask, 0)
  lengths = np.asarray(ref.mask_NxT.sum(1))
  assert len(set(lengths.tolist())) > 4 and (lengths <= np.asarray(budget)).all()
  assert int(ref.num_steps) == lengths.max()
  # (slots, shards): per-shard queues, each shard's slots taking only its
  # own prompt's samples.
  for slots, shards in ((1, 1), (5, 1), (11, 1), (3, 3), (6, 3)):
    ro = run(prompt, mask, slots, shards)
    np.testing.assert_array_equal(ro.tokens_NxT, ref.tokens_NxT)
    np.testing.assert_array_equal(ro.mask_NxT, ref.mask_NxT)
    np.testing.assert_array_equal(ro.truncated_N, ref.truncated_N)
    np.testing.assert_allclose(ro.logp_NxT, ref.logp_NxT, atol=1e-5)
    if slots == shards:  # one sample at a time per shard: token 0 comes from the prefill
      assert int(ro.num_steps) == 1 + (lengths - 1).reshape(shards, -1).sum(1).max()

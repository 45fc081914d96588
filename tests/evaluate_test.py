"""Evaluation: data-parallel sampling (issue 10.8) and scoring through the
time-limited reward workers."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax import evaluate, models, sharding as shd
from r1jax.rollout import SamplingConfig


def _temp_bytes(mesh, B=8, P=8, k=4, T=64):
  model = models.create(models.get_preset('tiny', vocab_size=64), seed=0, mesh=mesh)
  graphdef, params = nnx.split(model)
  sampler = evaluate.make_sampler(graphdef, SamplingConfig(max_new_tokens=T, temperature=0.6,
                                                           top_p=0.95), k, mesh)
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(evaluate.BATCH_AXES))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  compiled = sampler.jitted.trace(
      params, jax.ShapeDtypeStruct((B, P), jnp.int32, sharding=rows),
      jax.ShapeDtypeStruct((B, P), jnp.bool_, sharding=rows),
      jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep),
      jax.ShapeDtypeStruct((B * k,), jnp.int32, sharding=rows)).lower().compile()
  return compiled.memory_analysis().temp_size_in_bytes, sampler, params


def test_evaluation_sampler_is_sharded_over_the_batch():
  """The KV cache and completions were replicated on every device; over 8
  data shards each device now holds an eighth of them."""
  one, *_ = _temp_bytes(shd.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  eight, sampler, params = _temp_bytes(shd.make_mesh(8, 1, 1))
  print(f'eval sampler temp bytes: 1 device {one}, per device of 8: {eight}')
  assert eight < 0.3 * one
  rng = np.random.default_rng(0)
  ids, mask = rng.integers(3, 64, (8, 8)).astype(np.int32), np.ones((8, 8), bool)
  ro = sampler(params, ids, mask, jax.random.key(0))
  assert ro.tokens_NxT.shape == (32, 64) and isinstance(ro.tokens_NxT, np.ndarray)


def test_sharded_evaluation_equals_single_device():
  mesh1 = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  mesh8 = shd.make_mesh(4, 1, 2)
  out = []
  for mesh in (mesh1, mesh8):
    model = models.create(models.get_preset('tiny', vocab_size=64), seed=0, mesh=mesh)
    graphdef, params = nnx.split(model)
    sampler = evaluate.make_sampler(graphdef, SamplingConfig(max_new_tokens=8, temperature=0.6,
                                                             top_p=0.95), 2, mesh)
    ids = np.arange(3, 3 + 4 * 6).reshape(4, 6).astype(np.int32) % 64
    out.append(sampler(params, ids, np.ones((4, 6), bool), jax.random.key(1)).tokens_NxT)
  np.testing.assert_array_equal(out[0], out[1])


class _Tok:
  """Enough of a tokenizer for evaluate(): fixed completions per row."""

  def __init__(self, texts):
    self.texts = texts

  def encode_batch(self, texts, max_len):
    return np.zeros((len(texts), max_len), np.int32), np.ones((len(texts), max_len), bool)

  def decode_batch(self, tokens, mask):
    return list(self.texts[:len(tokens)])


def test_evaluate_scores_through_time_limited_workers():
  """A reward that hangs is killed at the limit (evaluation called the
  reward with no limit at all); pass@1 and cons@k count the rest."""
  import time
  import hostile
  from r1jax import rewards
  from r1jax.rollout import Rollout
  k = 2
  texts = ['<think> a </think> <answer> 4 </answer>', '<think> a </think> <answer> 5 </answer>',
           '<think> b </think> <answer>(10^{10})!</answer>', '<think> b </think> <answer> 7 </answer>']

  def sample(params, ids, mask, key, sample_ids):
    n = ids.shape[0] * k
    return Rollout(np.zeros((n, 3), np.int32), np.ones((n, 3), bool), np.zeros((n, 3)),
                   np.zeros(n, bool), 3)

  scorer = rewards.RewardScorer({'accuracy': 1.0, 'format': 1.0}, timeout_s=2.0, workers=1)
  examples = [{'question': 'q0', 'answer': '4'}, {'question': 'q1', 'answer': '7'}]
  bench = evaluate.Benchmark('t', 'math', examples, ['p0', 'p1'])
  t0 = time.monotonic()
  m, questions = evaluate.evaluate(sample, None, bench, _Tok(texts), scorer, k, 2, 4,
                                   jax.random.key(0))
  assert time.monotonic() - t0 < 10
  assert m['eval/pass@1'] == 0.5 and m['eval/questions'] == 2
  assert [s['correct'] for s in questions[1]] == [False, True]
  assert m['eval/format_rate'] == 1.0
  # (10^{10})! is refused before parsing: as a sample, and when q1's two
  # answers are compared (not one candidate); the tie goes to the first.
  assert scorer.rejected == 2 and m['eval/cons@2'] == 0.5
  assert [s['cluster'] for s in questions[1]] == [0, 1]
  scorer.close()

  # A correctness reward that hangs in sympy: killed after 1 s, scored 0.
  scorer = rewards.RewardScorer({'hang': 1.0, 'format': 1.0}, timeout_s=1.0, workers=1,
                                extra={'hang': hostile.sympy_hang})
  scorer([''], ['warm up'], [{}])
  texts[2] = 'hang'
  bench = evaluate.Benchmark('t', 'countdown', examples, ['p0', 'p1'], verifier='hang')
  t0 = time.monotonic()
  m, _ = evaluate.evaluate(sample, None, bench, _Tok(texts), scorer, k, 2, 4, jax.random.key(0))
  assert time.monotonic() - t0 < 10 and scorer.timeouts == 1
  assert m['eval/pass@1'] == 0.0
  scorer.close()


def test_questions_split_across_hosts(monkeypatch):
  """Each host takes a contiguous share; every host runs the same number of
  rounds (the sampler is collective)."""
  monkeypatch.setattr(jax, 'process_count', lambda: 4)
  shares = []
  for me in range(4):
    monkeypatch.setattr(jax, 'process_index', lambda me=me: me)
    shares.append(evaluate.host_share(10, 8))
  assert [s[1] for s in shares] == [2] * 4  # local prompts per batch
  assert [s[0] for s in shares] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
  import pytest
  with pytest.raises(ValueError, match='does not split over 4 hosts'):
    evaluate.host_share(10, 6)

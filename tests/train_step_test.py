"""The compiled GRPO step: inner iterations, reference handling, rewards that
fail, dynamic sampling, and sharded == unsharded."""
import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1jax import grpo, models, sharding as shd, train_step as ts
from r1jax.models import lora
from r1jax.rollout import SamplingConfig

V, B, G, P, T = 64, 4, 4, 6, 8


def even_share(tokens, mask, ids):
  """Reward: the share of even tokens in the completion (it has spread)."""
  return ((tokens % 2 == 0) & mask).sum(1, keepdims=True).astype(np.float32) / np.maximum(
      mask.sum(1, keepdims=True), 1)


def _setup(mesh=None, host_fn=even_share, lr=1e-3, prompts=B, optimizer=None, **kw):
  mesh = mesh or shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  cfg = ts.StepConfig(
      group_size=G, sampling=SamplingConfig(max_new_tokens=kw.pop('max_new_tokens', T),
                                            temperature=1.0, eos_ids=kw.pop('eos_ids', ())),
      loss=kw.pop('loss', None) or grpo.LossConfig(beta=kw.pop('beta', 0.04)), reward_names=kw.pop('names', ('even',)),
      reward_weights=(1.0,), lora=kw.pop('lora', False), **kw)
  model = models.create(models.get_preset('tiny', vocab_size=V), seed=0, mesh=mesh)
  if cfg.lora:
    model = lora.add(model, 4, 8.0, ('q', 'k', 'v', 'o', 'gate', 'up', 'down'), seed=1, mesh=mesh)
  optimizer = optimizer or optax.adam(lr)
  state = ts.init_state(model, optimizer, cfg, seed=0)
  reward_fn = ts.make_reward_fn(host_fn, mesh, 1)
  step = ts.make_train_step(nnx.graphdef(model), cfg, optimizer, reward_fn, mesh,
                            ts.shardings_of(state))
  if cfg.lora:  # the frozen base is the step's last argument
    base = nnx.state(model, nnx.Not(nnx.LoRAParam))
    step = functools.partial(lambda f, state, batch: f(state, batch, base), step)
    step.base = base
  rng = np.random.default_rng(0)
  batch = ts.Batch(jnp.asarray(rng.integers(3, V, (prompts, P)), jnp.int32),
                   jnp.ones((prompts, P), bool), jnp.arange(prompts, dtype=jnp.int32))
  return step, state, batch, reward_fn


def test_one_step_runs_and_measures():
  step, state, batch, _ = _setup()
  state, m = step(state, batch)
  assert int(state.step) == 1
  for key in ('loss', 'kl', 'clip_low', 'clip_high', 'entropy', 'grad_norm', 'reward/even',
              'reward/total', 'reward/zero_spread_groups', 'length/mean', 'length/max',
              'truncated', 'tokens'):
    assert np.isfinite(np.asarray(m[key])).all(), key
  assert float(m['length/max']) == T and float(m['truncated']) == 1.0
  assert int(m['tokens']) == B * G * T
  # μ = 1: the ratio is exactly 1 and nothing is clipped.
  assert float(m['ratio']) == pytest.approx(1.0, abs=1e-6)
  assert float(m['clip_low']) == 0 and float(m['clip_high']) == 0
  assert int(m['nonfinite_skipped']) == 0


def test_mu2_ratio_moves_and_clips_in_second_iteration():
  step, state, batch, _ = _setup(lr=3e-2, num_iterations=2, beta=0.0)
  _, m = step(state, batch)
  ratio, clip = np.asarray(m['ratio_per_iter']), np.asarray(m['clip_low_per_iter']) + np.asarray(
      m['clip_high_per_iter'])
  print('ratio per iteration', ratio, 'clip fraction per iteration', clip)
  assert ratio[0] == pytest.approx(1.0, abs=1e-5) and clip[0] == 0
  assert abs(ratio[1] - 1.0) > 1e-3 and clip[1] > 0


@pytest.fixture
def forwards(monkeypatch):
  """with_entropy of every log-prob forward traced (False: no gradients:
  a reference or old-policy forward)."""
  calls = []
  real = ts.completion_logprobs

  def counting(*args, with_entropy=False, **kw):
    calls.append(with_entropy)
    return real(*args, with_entropy=with_entropy, **kw)

  monkeypatch.setattr(ts, 'completion_logprobs', counting)
  return calls


def test_beta_zero_does_no_reference_forward(forwards):
  calls = forwards
  step, state, batch, _ = _setup(beta=0.0)
  assert state.ref_params is None
  step(state, batch)
  assert calls and all(calls), 'a forward without gradients was traced'
  calls.clear()
  step, state, batch, _ = _setup(beta=0.1)
  step(state, batch)
  assert calls.count(False) == 1  # exactly one reference forward


def test_reference_reset():
  # Named like a correctness reward: the step reports `accuracy` from it
  # (issue 10.5: countdown runs logged none).
  step, state, batch, _ = _setup(lr=1e-2, reference_reset_every=2, names=('countdown',))
  state, m = step(state, batch)
  assert 'accuracy' in m
  diff = lambda s: max(float(jnp.abs(a - b).max()) for a, b in zip(  # noqa: E731
      jax.tree.leaves(s.params), jax.tree.leaves(s.ref_params)))
  assert diff(state) > 0
  state, _ = step(state, batch)
  assert diff(state) == 0


def test_failing_python_reward_does_not_stop_the_step():
  calls = [0]

  def flaky(tokens, mask, ids):
    calls[0] += 1
    raise RuntimeError('reward bug')

  step, state, batch, reward_fn = _setup(host_fn=flaky)
  state, m = step(state, batch)
  assert calls[0] >= 1 and reward_fn.failures[0] >= 1
  assert float(m['reward/total']) == 0 and np.isfinite(float(m['loss']))


def test_dynamic_sampling_refills_zero_spread_groups():
  def odd_ids_only(tokens, mask, ids):  # groups of even example ids get constant 0
    return np.where(ids[:, None] % 2 == 1, even_share(tokens, mask, ids), 0.0).astype(np.float32)

  step, state, batch, _ = _setup(host_fn=odd_ids_only, prompts=3 * B,
                                 dynamic_sampling_attempts=3)
  # Attempt 0: ids 0..3 (2 with signal); attempt 1: ids 5, 7, 9, 11 fill the rest.
  batch = batch._replace(example_ids_B=jnp.array([0, 1, 2, 3, 5, 7, 9, 11, 13, 15, 17, 19]))
  _, m = step(state, batch)
  assert int(m['attempts']) == 2 and float(m['valid_groups']) == 1.0
  assert float(m['reward/zero_spread_groups']) == 0.0


@pytest.fixture(scope='module')
def single_device_step():
  return _sharded_run(None)


def _sharded_run(mesh, **kw):
  # SGD, so parameter differences are gradient differences (Adam's 1/sqrt(v)
  # would amplify reduction-order noise in near-zero gradients).
  step, state, batch, _ = _setup(mesh=mesh, prompts=8, num_iterations=2,
                                 optimizer=optax.sgd(1.0), **kw)
  state, m = step(state, batch)
  if mesh is not None:
    shd.check_sharded(state.params, mesh, tolerance=0.05)
  return jax.device_get(m), jax.device_get(state.params)


@pytest.mark.parametrize('shape', [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2), (2, 4, 1)])
def test_sharded_step_equals_single_device(shape, single_device_step):
  """(data, fsdp, tensor) meshes over 8 devices: same rollouts, rewards, loss
  and updated parameters as one device (f32, tiny preset, SGD lr 1)."""
  m1, p1 = single_device_step
  m8, p8 = _sharded_run(shd.make_mesh(*shape))
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m8['reward/total'], m1['reward/total'], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_continuously_batched_sharded_step_equals_the_static_one(single_device_step):
  """rl.decode_slots: 8 slots (over a (2, 2, 2) mesh) for 32 samples give
  the static batch's rollouts, loss and update."""
  m1, p1 = single_device_step
  m8, p8 = _sharded_run(shd.make_mesh(2, 2, 2), decode_slots=8)
  # Each slot decodes 4 samples in turn; token 0 of each comes from the prefill.
  assert int(m8['decode_steps']) == 1 + 4 * (T - 1)
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m8['reward/total'], m1['reward/total'], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, atol=1e-6)


# An op of these kinds, sync or async, whatever its result type.
_MOVES = re.compile(r'\b(all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(')


@pytest.mark.parametrize('kw', [
    dict(minibatches=2, grad_accum=2, dynamic_sampling_attempts=2),
    dict(minibatches=2, pack=True, pack_rows=8, decode_slots=8, eos_ids=(5, 7),
         max_new_tokens=16),
], ids=['minibatches-attempts', 'packed-slots'])
def test_nothing_moves_between_data_shards(kw):
  """On a data-parallel mesh (8, 1, 1) each device keeps its own prompts'
  rows through minibatches, micro-batches, refill attempts, packing and the
  continuous sampler's queue: the compiled step has no all-gather,
  all-to-all or permute, only the gradients' and metrics' all-reduces."""
  mesh = shd.make_mesh(8, 1, 1)
  step, state, batch, _ = _setup(mesh=mesh, prompts=16, **kw)
  if kw.get('dynamic_sampling_attempts'):
    batch = jax.tree.map(lambda x: jnp.concatenate([x, x]), batch)
  hlo = step.lower(state, batch).compile().as_text()
  assert not _MOVES.findall(hlo), collections.Counter(_MOVES.findall(hlo))


def test_the_moves_pattern_finds_an_fsdp_steps_gathers():
  """The control of the test above: on an fsdp mesh the weights are
  gathered, and the pattern sees it in this backend's compiled text."""
  step, state, batch, _ = _setup(mesh=shd.make_mesh(1, 8, 1), prompts=8)
  hlo = step.lower(state, batch).compile().as_text()
  assert 'all-gather' in collections.Counter(_MOVES.findall(hlo)), hlo[:2000]


@pytest.mark.parametrize('loss,mesh', [(dict(), None), (dict(ratio='sequence', loss_agg='token_mean'), None),
                                       (dict(), (2, 2, 2))], ids=['token', 'sequence', 'mesh'])
def test_a_packed_step_equals_the_padded_one(loss, mesh):
  """rl.pack: the reference, old-policy and update passes over packed rows
  (completions of lengths 1-16 from EOS) give the padded step's loss,
  measurements and parameters (μ 2, 2 minibatches, f32, SGD lr 0.1); on a
  (2, 2, 2) mesh each of the 4 batch shards packs its own rows."""
  def run(pack):
    step, state, batch, _ = _setup(mesh=shd.make_mesh(*mesh) if pack and mesh else None,
                                   prompts=8, num_iterations=2, minibatches=2,
                                   optimizer=optax.sgd(0.1), eos_ids=tuple(range(3, V, 9)),
                                   max_new_tokens=16, pack=pack, pack_rows=4,
                                   loss=grpo.LossConfig(beta=0.04, **loss))
    state, m = step(state, batch)
    return jax.device_get(m), jax.device_get(state.params)

  (m1, p1), (m2, p2) = run(False), run(True)
  assert 1 < float(m1['length/mean']) < 15  # lengths vary
  assert float(m1['clip_low'] + m1['clip_high']) > 0 and int(m1['nonfinite_skipped']) == 0
  for k in ('loss', 'kl', 'ratio', 'clip_low', 'clip_high', 'entropy', 'grad_norm'):
    np.testing.assert_allclose(m2[k], m1[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(b, a, atol=1e-6)


def test_step_config_from_config_runs():
  """The public path: config -> StepConfig + optimizer -> compiled step."""
  from r1jax import config as rc
  c = rc.base_config()
  c.rl.update(prompts_per_step=2, group_size=4, max_new_tokens=4, max_prompt_len=P,
              num_iterations=2, minibatches=2, overlong_max_len=4, overlong_cache_len=2)
  c.rewards = {'format': 1.0}
  rc.validate(c)
  cfg = ts.step_config(c, eos_ids=(2,), pad_id=0)
  assert cfg.reward_weights == (1.0, 1.0) and cfg.overlong == (4, 2)
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  model = models.create(models.get_preset('tiny', vocab_size=V), mesh=mesh)
  optimizer = ts.make_optimizer(c.optim)
  state = ts.init_state(model, optimizer, cfg)
  reward_fn = ts.make_reward_fn(lambda t, m, i: np.zeros((len(t), 1), np.float32), mesh, 1)
  step = ts.make_train_step(nnx.graphdef(model), cfg, optimizer, reward_fn, mesh,
                            ts.shardings_of(state))
  batch = ts.Batch(jnp.ones((2, P), jnp.int32), jnp.ones((2, P), bool), jnp.arange(2))
  state, m = step(state, batch)
  # Every completion is 4 tokens (or stops at EOS): the overlong penalty sees it.
  assert 'reward/overlong' in m and float(m['reward/overlong']) <= 0
  assert m['ratio_per_iter'].shape == (2,)


def test_validation_of_rl_section():
  from r1jax import config as rc
  c = rc.base_config()
  c.rl.minibatches = 3
  with pytest.raises(rc.ConfigError, match='config.rl.prompts_per_step'):
    rc.validate(c)
  c = rc.base_config()
  c.rewards = {'acuracy': 1.0}
  with pytest.raises(rc.ConfigError, match='config.rewards.acuracy: unknown reward'):
    rc.validate(c)
  c = rc.base_config()
  c.rl.group_size = 1
  with pytest.raises(rc.ConfigError, match='config.rl.group_size'):
    rc.validate(c)
  mesh = shd.make_mesh(8, 1, 1)
  c = rc.base_config()
  c.rl.update(prompts_per_step=4, group_size=4)
  with pytest.raises(rc.ConfigError, match='do not split over'):
    rc.validate_for_mesh(c, mesh)
  c = rc.base_config()
  c.rl.update(prompts_per_step=8, group_size=4, decode_slots=12)
  with pytest.raises(rc.ConfigError, match='config.rl.decode_slots: 12 slots do not split'):
    rc.validate_for_mesh(c, mesh)
  c.rl.decode_slots = 33
  with pytest.raises(rc.ConfigError, match='config.rl.decode_slots: 33 slots for 32 samples'):
    rc.validate(c)


def test_mu1_several_minibatches_use_sampling_policy_ratio():
  """Issue 10.1: μ = 1 with M = 2 minibatches. The second minibatch was
  sampled by the policy before the first update, so its ratio is not 1 and
  clipping acts (R1's own schedule: one inner epoch over 16 minibatches)."""
  step, state, batch, _ = _setup(lr=3e-2, minibatches=2, beta=0.0)
  _, m = step(state, batch)
  ratio = float(m['ratio'])
  clipped = float(m['clip_low']) + float(m['clip_high'])
  print('μ 1, M 2: mean ratio', ratio, 'clipped fraction', clipped)
  assert abs(ratio - 1.0) > 1e-3, 'ratio of later minibatches is forced to 1'
  assert clipped > 0


def test_mu1_two_minibatches_take_one_old_logprob_forward(forwards):
  calls = forwards
  # (μ·M = 1 takes none: test_beta_zero_does_no_reference_forward.)
  step, state, batch, _ = _setup(beta=0.0, minibatches=2)
  step(state, batch)
  assert calls.count(False) == 1  # μ·M = 2: one old-policy forward


def test_nonfinite_update_is_skipped_inside_the_step():
  """Issue 10.3: a NaN loss or gradient leaves params and optimizer state
  untouched and is counted in `nonfinite_skipped`."""
  step, state, batch, _ = _setup(lr=1e-3)
  before = jax.device_get((state.params, state.opt_state))
  poisoned = jax.tree.map(lambda x: x, state)
  leaves, treedef = jax.tree.flatten(poisoned.params)
  leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
  poisoned = poisoned._replace(params=jax.tree.unflatten(treedef, leaves))
  nan_params = jax.device_get(poisoned.params)
  new, m = step(poisoned, batch)
  assert int(m['nonfinite_skipped']) == 1
  for a, b in zip(jax.tree.leaves(jax.device_get(new.params)), jax.tree.leaves(nan_params)):
    np.testing.assert_array_equal(a, b)  # untouched (NaN where it was NaN)
  for a, b in zip(jax.tree.leaves(jax.device_get(new.opt_state)), jax.tree.leaves(before[1])):
    np.testing.assert_array_equal(a, b)
  assert int(new.step) == 1  # the step still counts (data moved on)


def test_update_that_makes_params_nonfinite_is_skipped():
  """A finite loss whose update overflows the parameters is skipped too."""
  step, state, batch, _ = _setup(optimizer=optax.chain(optax.scale(1e30), optax.scale(1e30)),
                                 beta=0.0)
  before = jax.device_get(state.params)
  new, m = step(state, batch)
  assert int(m['nonfinite_skipped']) == 1
  for a, b in zip(jax.tree.leaves(jax.device_get(new.params)), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)


def test_step_finishes_when_a_reward_hangs():
  """Issue 10.9: a reward stuck in sympy inside the compiled step's
  pure_callback never returned (the thread-based limit could not fire)."""
  import time
  import hostile
  from r1jax import rewards
  scorer = rewards.RewardScorer({'hang': 1.0}, timeout_s=1.0, workers=2,
                                extra={'hang': hostile.sympy_hang})
  scorer([''], ['warm up'], [{}])

  def host_fn(tokens, mask, ids):
    texts = ['hang' if i == 0 else 'x' for i in range(len(tokens))]
    return scorer([''] * len(texts), texts, [{}] * len(texts))

  step, state, batch, _ = _setup(host_fn=host_fn)
  t0 = time.monotonic()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  print(f'step with a hanging reward: {time.monotonic() - t0:.1f}s (compile included)')
  assert scorer.timeouts == 1 and int(state.step) == 1
  assert time.monotonic() - t0 < 120
  scorer.close()


def test_samples_without_a_verdict_are_masked_out_of_the_update():
  """NaN rewards (the code sandbox failed: no verdict) neither poison the
  step nor teach anything: with every sample unjudged, nothing moves; with
  half of the prompts unjudged, the rest still trains. One compiled step, the
  host function switched between the two."""
  mode = ['none']

  def verdicts(tokens, mask, ids):
    r = even_share(tokens, mask, ids)
    unjudged = np.ones_like(r, bool) if mode[0] == 'none' else (ids[:, None] % 2 == 1)
    return np.where(unjudged, np.nan, r).astype(np.float32)

  step, state, batch, _ = _setup(host_fn=verdicts, optimizer=optax.sgd(1.0), beta=0.04)
  before = jax.tree.map(np.asarray, state.params)
  state, m = step(state, batch)
  assert np.isfinite(float(m['loss'])) and float(m['reward/total']) == 0
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.params))
  mode[0] = 'half'
  state, m = step(state, batch)
  assert np.isfinite(float(m['loss'])) and float(m['grad_norm']) > 0


def _lora_run(mesh):
  step, state, batch, _ = _setup(mesh=mesh, prompts=8, num_iterations=2, lora=True,
                                 optimizer=optax.sgd(1.0), beta=0.04)
  base = jax.device_get(step.base)
  state, m = step(state, batch)
  return jax.device_get(m), jax.device_get(state), base, jax.device_get(step.base)


def test_a_lora_step_trains_only_the_adapters_and_equals_one_device_on_a_mesh():
  m1, s1, base_before, base_after = _lora_run(None)
  # The state holds the adapters (and their optimizer state) only; the base
  # is an argument the step does not donate (a donated array could not be
  # read after it) and leaves as it was.
  names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(s1.params)[0]}
  assert names and all('_lora_' in n for n in names)
  jax.tree.map(np.testing.assert_array_equal, base_before, base_after)
  assert any(np.abs(np.asarray(b)).max() > 0 for p, b in
             jax.tree_util.tree_flatten_with_path(s1.params)[0] if '_lora_b' in
             jax.tree_util.keystr(p))
  # The reference: the adapters with B = 0 (the base policy), computed in
  # the step, neither stored nor a copy of the model; in the first of two
  # iterations the policy is the reference.
  assert s1.ref_params is None
  assert float(m1['kl_per_iter'][0]) == 0.0 and float(m1['kl_per_iter'][1]) > 0
  m8, s8, _, _ = _lora_run(shd.make_mesh(2, 2, 2))
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_lora_dropout_in_an_on_policy_step_draws_from_the_step_key():
  """lora_dropout (μ·M = 1): the first loss is the base's (B = 0: dropout
  cannot change it), the adapters' update differs from the one without
  dropout, is the same again from the same state, and the packed passes
  take it too."""
  def run(dropout, **kw):
    step, state, batch, _ = _setup(prompts=4, lora=True, lora_dropout=dropout,
                                   optimizer=optax.sgd(1.0), **kw)
    state, m = step(state, batch)
    return float(m['loss']), jax.device_get(state.params), step, batch

  loss0, p0, _, _ = run(0.0)
  loss1, p1, step, batch = run(0.5)
  assert loss1 == pytest.approx(loss0, abs=1e-6)
  diff = lambda a, b: max(float(np.abs(np.asarray(x) - np.asarray(y)).max())  # noqa: E731
                          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert diff(p0, p1) > 1e-4
  loss2, p2, _, _ = run(0.5)
  assert loss2 == loss1 and diff(p1, p2) == 0.0
  loss_p, p_packed, _, _ = run(0.5, pack=True)
  _, p_packed0, _, _ = run(0.0, pack=True)
  assert loss_p == pytest.approx(loss0, abs=1e-6) and diff(p_packed, p_packed0) > 1e-4

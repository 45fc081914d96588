"""The reward model: the Bradley–Terry loss and accuracy by hand, the
summary-only view, the score against a plain forward, learning a preference,
and its reward inside the compiled RL step (on general prompts only)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1jax import grpo, models, reward_model as rmod, sharding as shd, train_step as ts
from r1jax.rollout import SamplingConfig, generate_in_chunks

V = 64


def _model(seed=0):
  return models.create(models.get_preset('tiny', vocab_size=V), seed=seed)


def test_bradley_terry_loss_and_accuracy_by_hand():
  loss, acc = rmod.pair_loss(jnp.array([2.0, 0.0, 1.0]), jnp.array([0.0, 1.0, 1.0]))
  # softplus(-2), softplus(1), softplus(0) (a tie counts as wrong)
  expect = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(1.0)) + np.log(2.0)) / 3
  assert float(loss) == pytest.approx(expect, rel=1e-6)
  assert float(acc) == pytest.approx(1 / 3)


def test_the_summary_is_what_follows_the_last_think_end():
  END = 7
  tokens = jnp.array([[5, END, 8, 9, 0, 0], [5, 6, 3, 0, 0, 0], [END, 1, END, 2, 4, 0]])
  mask = tokens != 0
  got, keep = rmod.summary_tokens(tokens, mask, END)
  np.testing.assert_array_equal(keep.sum(1), [2, 3, 2])
  np.testing.assert_array_equal(jnp.where(keep, got, -1),
                                [[8, 9, -1, -1, -1, -1], [5, 6, 3, -1, -1, -1],
                                 [2, 4, -1, -1, -1, -1]])
  assert rmod.summary_text(' <think> a </think> <answer>7</answer>') == ' <answer>7</answer>'
  assert rmod.summary_text(' <think> unclosed') == ''
  assert rmod.summary_text('plain') == 'plain'


def test_on_device_scores_cut_summaries_to_the_trained_length():
  """A summary-only model scores the first max_len tokens of each summary
  (what it was trained on), not the whole [N, T] row."""
  END = 7
  model = _model()
  params = rmod.init_params(model)
  params['head'] = {'w': jnp.ones((model.cfg.hidden_size,), jnp.float32), 'b': jnp.float32(0)}
  prompt = jnp.array([[11, 12], [13, 14]])
  tokens = jnp.array([[5, END, 8, 9, 10, 0], [5, 6, 3, 4, 0, 0]])
  mask = tokens != 0
  rm = rmod.Loaded(nnx.graphdef(model), params, True, END, max_len=2)
  got = rmod.on_device_scores(rm, prompt, prompt != 0, tokens, mask)
  summary = jnp.array([[8, 9], [5, 6]])
  want = rmod.score(rm.graphdef, params, prompt, prompt != 0, summary, summary != 0)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_score_is_the_head_on_the_last_response_token_of_a_plain_forward():
  model = _model()
  graphdef = nnx.graphdef(model)
  params = rmod.init_params(model)
  params['head'] = {'w': jnp.asarray(np.random.default_rng(0).normal(size=model.cfg.hidden_size),
                                     jnp.float32), 'b': jnp.float32(0.5)}
  prompt = jnp.array([[0, 0, 11, 12], [13, 14, 15, 16]])
  pmask = prompt != 0
  resp = jnp.array([[21, 22, 23], [24, 0, 0], [25, 26, 0], [0, 0, 0]])  # G = 2; the last empty
  rmask = resp != 0
  got = rmod.score(graphdef, params, prompt, pmask, resp, rmask)
  for n in range(4):
    b = n // 2
    seq = jnp.concatenate([prompt[b][pmask[b]], resp[n][rmask[n]]])[None]
    h, _ = model.hidden(seq)
    want = h[0, -1] @ params['head']['w'] + 0.5
    assert float(got[n]) == pytest.approx(float(want), abs=1e-4)


def test_training_learns_a_preference():
  """Chosen responses end in token 7, rejected ones in 9: the model learns
  to rank them (held-out pairwise accuracy 1.0)."""
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  model = _model()
  graphdef = nnx.graphdef(model)
  r = np.random.default_rng(0)

  def pairs(n):
    prompt = r.integers(20, V, (n, 4)).astype(np.int32)
    body = r.integers(20, V, (n, 1, 3)).astype(np.int32)
    tokens = np.concatenate([np.repeat(body, 2, 1), np.array([7, 9])[None, :, None]
                             .repeat(n, 0)], axis=2).astype(np.int32)
    return {'prompt': prompt, 'prompt_mask': np.ones_like(prompt, bool), 'tokens': tokens,
            'mask': np.ones_like(tokens, bool)}

  optimizer = optax.adam(3e-3)
  params = rmod.init_params(model)
  state = rmod.RMState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  step = rmod.make_train_step(graphdef, optimizer, 2, mesh, None)
  for _ in range(40):
    state, m = step(state, pairs(16))
  held = rmod.Pairs(*pairs(32).values())
  loss, acc = rmod.held_out(rmod.make_eval(graphdef, mesh), state.params, held, 16, mesh)
  assert acc == 1.0 and loss < 0.1


@pytest.mark.parametrize('minibatches', [2, 8])
def test_the_rl_step_adds_the_models_reward_on_general_prompts_only(minibatches):
  """The step's reward/reward_model is the mean over samples of r(prompt,
  sample) on the general prompts (0 elsewhere), r computed on the step's
  own rollout (reproduced here from the same key); scored in the update's
  parts (8 minibatches of 4 prompts: each group split in 2 sub-groups)."""
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  B, G, P, T = 4, 2, 5, 6
  sampling = SamplingConfig(max_new_tokens=T, temperature=1.0, eos_ids=())
  cfg = ts.StepConfig(group_size=G, sampling=sampling, loss=grpo.LossConfig(beta=0.0),
                      reward_names=('ones',), reward_weights=(0.0, 1.0), reward_model=True,
                      minibatches=minibatches)  # the reward model scores the parts apart
  policy = _model(0)
  rm_model = _model(1)
  rm_params = rmod.init_params(rm_model)
  rm_params['head'] = {'w': jnp.ones((rm_model.cfg.hidden_size,), jnp.float32) * 0.1,
                       'b': jnp.float32(0.2)}
  rm = rmod.Loaded(nnx.graphdef(rm_model), rm_params, summary_only=False, think_end_id=None)
  general = np.array([0, 1, 0, 1], bool)  # prompts 1 and 3 are general

  def host(tokens, mask, ids):  # rule column, then the gate
    return np.stack([np.ones(len(ids)), general[np.asarray(ids)]], 1).astype(np.float32)

  optimizer = optax.sgd(0.0)
  state = ts.init_state(policy, optimizer, cfg, seed=3)
  step = ts.make_train_step(nnx.graphdef(policy), cfg, optimizer, ts.make_reward_fn(host, mesh, 2),
                            mesh, ts.shardings_of(state), reward_model=rm)
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(rng.integers(3, V, (B, P)), jnp.int32)
  batch = ts.Batch(prompt, jnp.ones((B, P), bool), jnp.arange(B, dtype=jnp.int32))
  key_sample, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
  ro = generate_in_chunks(policy, batch.prompt_BxP, batch.prompt_mask_BxP,
                          jax.random.fold_in(key_sample, 0), sampling, G)  # attempt 0's key;
  # before the step, which donates the policy's arrays
  r = rmod.on_device_scores(rm, batch.prompt_BxP, batch.prompt_mask_BxP, ro.tokens_NxT,
                            ro.mask_NxT)
  _, m = step(state, batch, rm.params)
  want = float(jnp.mean(r * jnp.repeat(jnp.asarray(general), G)))
  assert float(m['reward/reward_model']) == pytest.approx(want, rel=1e-5)
  assert float(m['reward/ones']) == 1.0

"""The GRPO step as ONE compiled function:

  (state, prompts [B·A, P], example ids) ─▶ rollout (G samples per prompt)
    ─▶ rewards (Python, via jax.pure_callback inside jax.shard_map: each device's
       host scores only the completions on that device)
    ─▶ DAPO dynamic sampling (optional: A > 1 attempts refill zero-spread groups)
    ─▶ advantages ─▶ reference log-probs (skipped when β = 0)
    ─▶ old log-probs (the sampling policy's, whenever μ·M > 1: every update
       after the first sees a policy that has moved since sampling; with
       μ·M = 1 the current policy, detached, is the sampling policy: the
       same forward as the update's, LoRA dropout masks included)
    ─▶ μ iterations × M minibatches of optimizer updates, each accumulating
       gradients over micro-batches (lax.scan); an update whose loss, gradient
       norm or new parameters are not finite is not applied (params and
       optimizer state kept, counted in `nonfinite_skipped`)
    ─▶ reference reset ─▶ metrics.

Minibatches and micro-batches split the batch by prompts, so the G completions
of a prompt share one prompt prefill in every forward pass (the prompt's KV is
computed for B prompts and repeated G times; gradients flow through it).
Log-probs are taken at the sampling temperature: log softmax(logits / τ).
"""
import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax import grpo, kernels, packing, sharding as shd
from r1jax.models import Decoder, lora as lora_lib
from r1jax.rewards import CORRECTNESS, MODEL_REWARD, overlong_penalty
from r1jax.rollout import SamplingConfig, generate_in_chunks

BATCH_AXES = ('data', 'fsdp')
# host_fn(tokens [n, T] int32, mask [n, T] bool, example_ids [n] int32) -> [n, R] float32
HostRewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class StepConfig(NamedTuple):
  """Static settings of the compiled step (see `step_config` for the mapping
  from config.rl)."""
  group_size: int
  sampling: SamplingConfig
  loss: grpo.LossConfig
  reward_names: tuple[str, ...]  # scored by the host function, in order
  reward_weights: tuple[float, ...]  # one per reward_names (+ overlong, + reward model)
  advantage: str = 'grpo'
  per_reward_norm: bool = False
  num_iterations: int = 1  # μ
  minibatches: int = 1  # optimizer updates per iteration
  grad_accum: int = 1  # micro-batches per update
  mask_truncated: bool = False
  reference_reset_every: int = 0  # 0: never
  dynamic_sampling_attempts: int = 1  # 1: off
  overlong: tuple[int, int] | None = None  # (max_len, cache_len) of DAPO's penalty
  logprob_impl: str = 'auto'
  # The rollout's prompts in this many sequential chunks (each with its own KV
  # cache, so the cache's peak is 1/R of the batch's); 1: all at once.
  rollout_chunks: int = 1
  decode_slots: int = 0  # per chunk; 0: a static batch (rollout.generate)
  # Teacher-forced passes over packed rows (r1jax/packing.py), `pack_rows`
  # rows per forward: as many forwards as the packed tokens need.
  pack: bool = False
  pack_rows: int = 0  # 0: _auto_pack_rows
  # A reward model scores the responses to prompts of kind 'general' on
  # device (reward_model.py); its weight is the last of reward_weights.
  reward_model: bool = False
  # LoRA (models/lora.py): the state's params are the adapters; the frozen
  # base is a step argument (after the reward model's), never copied.
  lora: bool = False
  # PEFT's lora_dropout in the update's forward; on-policy updates only
  # (μ·M = 1: the ratio's old log-probs are the same forward, detached).
  lora_dropout: float = 0.0


def step_config(config, eos_ids: tuple[int, ...], pad_id: int) -> StepConfig:
  """StepConfig from a validated config (sections rl and rewards)."""
  rl = config.rl
  names = tuple(n for n in config.rewards if n != MODEL_REWARD)
  weights = tuple(float(config.rewards[n]) for n in names)
  overlong = None
  if rl.overlong_max_len:
    overlong = (rl.overlong_max_len, rl.overlong_cache_len)
    weights += (float(rl.overlong_weight),)
  if MODEL_REWARD in config.rewards:
    weights += (float(config.rewards[MODEL_REWARD]),)
  return StepConfig(
      group_size=rl.group_size,
      sampling=SamplingConfig(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature,
                              top_p=rl.top_p, top_k=rl.top_k, eos_ids=tuple(eos_ids),
                              pad_id=pad_id),
      loss=grpo.LossConfig(beta=rl.beta, kl_estimator=rl.kl_estimator,
                           epsilon_low=rl.epsilon_low, epsilon_high=rl.epsilon_high,
                           dual_clip=rl.dual_clip, ratio=rl.ratio, loss_agg=rl.loss_agg),
      reward_names=names, reward_weights=weights, advantage=rl.advantage,
      per_reward_norm=rl.per_reward_norm, num_iterations=rl.num_iterations,
      minibatches=rl.minibatches, grad_accum=rl.grad_accum, mask_truncated=rl.mask_truncated,
      reference_reset_every=rl.reference_reset_every,
      dynamic_sampling_attempts=rl.dynamic_sampling_attempts, overlong=overlong,
      logprob_impl=rl.logprob_impl, rollout_chunks=rl.rollout_chunks,
      decode_slots=rl.decode_slots, pack=rl.pack, pack_rows=rl.pack_rows,
      reward_model=MODEL_REWARD in config.rewards,
      lora=bool(config.get('lora', {}).get('rank', 0)),
      lora_dropout=float(config.get('lora', {}).get('dropout', 0.0))
      if config.get('lora', {}).get('rank', 0) else 0.0)


def make_optimizer(optim, total_updates: int = 0) -> optax.GradientTransformation:
  """AdamW after global-norm clipping, with a linear warm-up to optim.lr,
  then a constant rate (schedule 'constant': R1's RL) or a cosine decay to
  final_lr_ratio x lr at update `total_updates` ('cosine': R1's SFT)."""
  if optim.get('schedule', 'constant') == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(
        0.0, optim.lr, optim.warmup_steps, max(total_updates, optim.warmup_steps + 1),
        optim.lr * optim.final_lr_ratio)
  elif optim.warmup_steps:
    lr = optax.warmup_constant_schedule(0.0, optim.lr, optim.warmup_steps)
  else:
    lr = optim.lr
  tx = optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
  if optim.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
  return tx


def updates_per_step(config) -> int:
  """Optimizer updates of one launcher step (μ inner epochs x minibatches)."""
  return config.rl.num_iterations * config.rl.minibatches


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar (replicated)
  params: nnx.State
  opt_state: Any
  ref_params: nnx.State | None  # None when β = 0
  rng: jax.Array  # uint32 [2] raw key


class Batch(NamedTuple):
  prompt_BxP: jax.Array  # int32, left-padded; B·A rows with A attempts
  prompt_mask_BxP: jax.Array  # bool
  example_ids_B: jax.Array  # int32, the host's key for each prompt's example


# ---------------------------------------------------------------- log-probs


def _head_logprobs(model: Decoder, h_NxTxD: jax.Array, targets_NxT: jax.Array,
                   temperature: float, impl: str, with_entropy: bool,
                   mesh: jax.sharding.Mesh | None):
  N, T, D = h_NxTxD.shape
  h_NxTxD = h_NxTxD / jnp.asarray(temperature or 1.0, h_NxTxD.dtype)
  if mesh is not None and model.cfg.vocab_size % mesh.shape.get('tensor', 1):
    # An uneven vocabulary split: left to XLA's partitioner, which cannot
    # partition a Pallas kernel, so the pure-JAX path.
    mesh, impl = None, 'naive' if impl == 'naive' else 'chunked'
  out = kernels.token_logprobs(h_NxTxD.reshape(N * T, D), model.head_weight(),
                               targets_NxT.reshape(N * T), impl=impl,
                               with_entropy=with_entropy, mesh=mesh)
  if with_entropy:
    return out[0].reshape(N, T), out[1].reshape(N, T)
  return out.reshape(N, T)


def completion_logprobs(model: Decoder, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                        tokens_NxT: jax.Array, temperature: float, impl: str = 'auto',
                        with_entropy: bool = False, mesh: jax.sharding.Mesh | None = None,
                        lora_dropout: tuple[float, jax.Array] | None = None):
  """log π(token) [N, T] of each completion token given its prompt (and the
  entropy [N, T] when asked), N = B·G, prompts prefilled once per group.
  With a mesh whose 'tensor' axis divides the vocabulary, the LM head runs
  per device under shard_map, vocab-parallel (kernels/vocab_parallel.py).
  `lora_dropout` (rate, key): the adapters' dropout (Decoder.hidden)."""
  B = prompt_BxP.shape[0]
  N = tokens_NxT.shape[0]
  # The last prompt position predicts token 0, completion position t token t+1.
  h_last_BxD, h_rest = model.hidden_with_prefix(prompt_BxP, prompt_mask_BxP,
                                                tokens_NxT[:, :-1], lora_dropout)
  h_NxTxD = jnp.concatenate([jnp.repeat(h_last_BxD[:, None], N // B, axis=0), h_rest], axis=1)
  return _head_logprobs(model, h_NxTxD, tokens_NxT, temperature, impl, with_entropy, mesh)


def packed_logprobs(model: Decoder, rows: packing.Rows, temperature: float, impl: str = 'auto',
                    with_entropy: bool = False, mesh: jax.sharding.Mesh | None = None,
                    lora_dropout: tuple[float, jax.Array] | None = None):
  """log π of every slot's target [R, L] over packed rows (r1jax/packing.py;
  0-padded slots give values that are never read), and the entropy."""
  h, _ = model.hidden(rows.tokens_RxL, positions_BxT=rows.positions_RxL,
                      segment_ids_BxT=rows.segments_RxL, lora_dropout=lora_dropout)
  return _head_logprobs(model, h, rows.targets_RxL, temperature, impl, with_entropy, mesh)


# ---------------------------------------------------------------- rewards


def host_reward_fn(tokenizer, scorer, get_example: Callable[[int], dict],
                   reward_model: bool = False) -> HostRewardFn:
  """Decodes completions and scores them with a `rewards.RewardScorer`.
  `get_example(id)` returns the example dict (with 'prompt' and 'answer').
  With a reward model, the prompts of kind 'general' (the model's: they
  have no checkable answer) are not scored by the correctness rules, and a
  last column marks them."""
  def fn(tokens, mask, example_ids):
    completions = tokenizer.decode_batch(tokens, mask)
    examples = [get_example(int(i)) for i in example_ids]
    prompts = [e.get('prompt', '') for e in examples]
    if not reward_model:
      return scorer(prompts, completions, examples)
    general = np.asarray([e.get('kind') == 'general' for e in examples])
    out = np.zeros((len(examples), len(scorer.names) + 1), np.float32)
    pick = lambda xs, rows: [x for x, r in zip(xs, rows) if r]  # noqa: E731
    if (~general).any():
      out[~general, :-1] = scorer(pick(prompts, ~general), pick(completions, ~general),
                                  pick(examples, ~general))
    rules = [j for j, n in enumerate(scorer.names) if n not in CORRECTNESS]
    if general.any() and rules:
      out[np.ix_(general, rules)] = scorer.score(
          [scorer.names[j] for j in rules], pick(prompts, general), pick(completions, general),
          pick(examples, general))
    out[:, -1] = general
    return out
  return fn


def make_reward_fn(host_fn: HostRewardFn, mesh: jax.sharding.Mesh, num_rewards: int):
  """A traceable (tokens, mask, ids) -> rewards [N, R] that calls `host_fn`
  once per device on that device's rows. Devices along 'tensor' hold the same
  rows; only tensor index 0 scores and a psum shares the result."""
  failures = [0]

  def callback(tokens, mask, ids, tensor_index):
    n = tokens.shape[0]
    if int(tensor_index) != 0 or n == 0:
      return np.zeros((n, num_rewards), np.float32)
    try:
      out = np.asarray(host_fn(tokens, mask, ids), np.float32)
      if out.shape != (n, num_rewards):
        raise ValueError(f'reward function returned shape {out.shape}, '
                         f'expected {(n, num_rewards)}')
      return out
    except Exception as e:  # pylint: disable=broad-except  # a reward bug must not kill training
      failures[0] += 1
      if failures[0] <= 3:
        logging.exception('reward host function failed (%s); scoring 0', e)
      return np.zeros((n, num_rewards), np.float32)

  def local(tokens, mask, ids):
    shape = jax.ShapeDtypeStruct((tokens.shape[0], num_rewards), jnp.float32)
    r = jax.pure_callback(callback, shape, tokens, mask, ids, jax.lax.axis_index('tensor'))
    return jax.lax.psum(r, 'tensor')

  spec = P(BATCH_AXES)
  fn = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                     check_vma=False)
  fn.failures = failures  # type: ignore[attr-defined]
  return fn


# ---------------------------------------------------------------- the step


def init_state(model: Decoder, optimizer: optax.GradientTransformation, cfg: StepConfig,
               seed: int = 0) -> TrainState:
  """With LoRA the params (and the optimizer's state) are the adapters only,
  and the reference is the adapters disabled (B = 0: the base policy),
  computed in the step rather than stored; with reference resets, a
  snapshot of the adapters (never a copy of the model)."""
  if cfg.lora:
    params = nnx.state(model, nnx.LoRAParam)
    ref = (jax.tree.map(jnp.copy, lora_lib.disabled(params))
           if cfg.loss.beta > 0 and cfg.reference_reset_every > 0 else None)
  else:
    params = nnx.state(model, nnx.Param)
    ref = jax.tree.map(jnp.copy, params) if cfg.loss.beta > 0 else None
  step = jnp.zeros((), jnp.int32)
  rng = jax.random.key_data(jax.random.key(seed))
  opt_state = jax.jit(optimizer.init)(params)
  some = jax.tree.leaves(params)[0]
  if isinstance(some.sharding, NamedSharding):
    # Moments follow their parameters' shardings; scalars (step counts, the
    # RNG) are replicated on the same mesh.
    rep = NamedSharding(some.sharding.mesh, P())
    on_mesh = lambda x: x if (isinstance(x.sharding, NamedSharding) and  # noqa: E731
                              x.sharding.mesh == rep.mesh) else jax.device_put(x, rep)
    step, rng, opt_state = jax.tree.map(on_mesh, (step, rng, opt_state))
  return TrainState(step, params, opt_state, ref, rng)


def shardings_of(tree):
  """The shardings of a (state) pytree, for jit's in/out_shardings."""
  return jax.tree.map(lambda x: x.sharding, tree)


def _split_prompts(tree, parts: int):
  """[B, ...] -> [parts, B/parts, ...] on every leaf, strided: part j takes
  rows j, j + parts, j + 2·parts, … With the rows split over the batch
  shards in contiguous runs (a multiple of `parts` each), every part holds
  the same number of rows on every shard and nothing moves between them."""
  return jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape(x.shape[0] // parts, parts, *x.shape[1:]), 0, 1), tree)


def _merge_prompts(tree):
  """The inverse of `_split_prompts`: [parts, B/parts, ...] -> [B, ...]."""
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


# Per-sample values of the step's data ([B, G, ...]); the rest are per prompt.
_PER_SAMPLE = ('tokens', 'mask', 'truncated', 'rewards', 'judged', 'loss_mask', 'adv', 'ref_logp',
               'old_logp')


def subgroups(B: int, G: int, shards: int, parts: int) -> int:
  """Into how many sub-groups of G/k samples the update splits each group,
  so that each of its `parts` minibatches and micro-batches holds the same
  number of (sub-)groups on every one of the batch `shards` (R1's schedule:
  512 prompts in 32 micro-batches over 32 chips needs k = 2). The prompt is
  then computed k times (once per sub-group) instead of moving rows between
  devices. 1 when no divisor of G gives that (the rows then move)."""
  return next((k for k in range(1, G + 1) if G % k == 0 and (B * k) % (shards * parts) == 0), 1)


def _as_subgroups(data: dict, k: int) -> dict:
  """[B, G, ...] -> [B·k, G/k, ...]; per-prompt values repeated k times.
  Device-local: each prompt's sub-groups stay where the prompt is."""
  if k == 1:
    return data
  def view(name, x):
    if name in _PER_SAMPLE:
      return x.reshape(x.shape[0] * k, x.shape[1] // k, *x.shape[2:])
    return jnp.repeat(x, k, axis=0)
  return {name: view(name, x) for name, x in data.items()}


def make_train_step(graphdef: nnx.GraphDef, cfg: StepConfig,
                    optimizer: optax.GradientTransformation, reward_fn,
                    mesh: jax.sharding.Mesh, state_shardings=None, reward_model=None):
  """Returns the jitted `step(state, batch) -> (state, metrics)`; with a
  reward model (`reward_model.Loaded`, cfg.reward_model) `step(state, batch,
  rm_params)`, its parameters an argument (not a constant of the program).

  `reward_fn` is `make_reward_fn(...)` (or any traceable function with that
  signature; with a reward model it returns one more column: which prompts
  the model scores). The state is donated.
  """
  G, mu, M, A = cfg.group_size, cfg.num_iterations, cfg.minibatches, cfg.grad_accum
  if cfg.lora_dropout and mu * M > 1:
    raise ValueError('lora_dropout needs on-policy updates (num_iterations * minibatches = 1)')
  tau = cfg.sampling.temperature
  if cfg.reward_model:
    if reward_model is None:
      raise ValueError('cfg.reward_model: pass the reward model (reward_model.load)')
    from r1jax import reward_model as rm_lib  # pylint: disable=g-import-not-at-top
  names = (cfg.reward_names + (('overlong',) if cfg.overlong else ())
           + ((MODEL_REWARD,) if cfg.reward_model else ()))
  weights = jnp.asarray(cfg.reward_weights, jnp.float32)
  if len(cfg.reward_weights) != len(names):
    raise ValueError(f'rl.rewards: {len(cfg.reward_weights)} weights for rewards {names}')
  acc_name = next((n for n in CORRECTNESS if n in names), None)
  batch_sharding = NamedSharding(mesh, P(BATCH_AXES))
  shards = mesh.shape['data'] * mesh.shape['fsdp']

  # With LoRA: the step's frozen-base argument, set by `step` while it traces
  # (model_with is only called inside it).
  frozen_base = [None]

  def model_with(params, rules):
    params = jax.lax.with_sharding_constraint(
        params, shd.state_shardings(params, mesh, rules))
    if cfg.lora:
      base = jax.lax.with_sharding_constraint(
          frozen_base[0], shd.state_shardings(frozen_base[0], mesh, rules))
      params = nnx.merge_state(jax.lax.stop_gradient(base), params)
    return nnx.merge(graphdef, params)

  def rollout_and_score(params, prompt, prompt_mask, ids, key, rm_params):
    with shd.activation_rules(mesh, shd.SAMPLE_RULES):
      per_chunk = prompt.shape[0] // cfg.rollout_chunks
      queues = shards if per_chunk % shards == 0 and cfg.decode_slots % shards == 0 else 1
      ro = generate_in_chunks(model_with(params, shd.SAMPLE_RULES), prompt, prompt_mask, key,
                              cfg.sampling, G, cfg.rollout_chunks, cfg.decode_slots, queues)
    rewards = reward_fn(ro.tokens_NxT, ro.mask_NxT, jnp.repeat(ids, G))
    judged = jnp.isfinite(rewards).all(axis=1)  # NaN: a reward without a verdict
    rewards = jnp.where(jnp.isfinite(rewards), rewards, 0.0)
    if cfg.reward_model:
      rewards, gate = rewards[:, :-1], rewards[:, -1]
    if cfg.overlong:
      lengths = ro.mask_NxT.sum(axis=1)
      rewards = jnp.concatenate(
          [rewards, overlong_penalty(lengths, *cfg.overlong)[:, None]], axis=1)
    B = prompt.shape[0]
    if cfg.reward_model:
      # In the update's M·A parts, one at a time: the reward model's
      # activations are then those of a micro-batch. Split as the update is
      # (sub-groups, then strided parts), so each part holds the same rows on
      # every batch shard and nothing moves between them.
      k = subgroups(B, G, shards, M * A)
      parts = M * A if (B * k) % (M * A) == 0 else 1
      loaded = dataclasses.replace(reward_model, params=rm_params)
      split = _split_prompts(_as_subgroups(dict(prompt=prompt, prompt_mask=prompt_mask,
                                                tokens=ro.tokens_NxT.reshape(B, G, -1),
                                                mask=ro.mask_NxT.reshape(B, G, -1)), k), parts)

      def rm_scores(p):
        with shd.activation_rules(mesh, shd.TRAIN_RULES):
          T_ = p['tokens'].shape[-1]
          return rm_lib.on_device_scores(loaded, p['prompt'], p['prompt_mask'],
                                         p['tokens'].reshape(-1, T_), p['mask'].reshape(-1, T_))
      r = jax.lax.map(rm_scores, split).reshape(parts, B * k // parts, G // k)
      r = jax.lax.stop_gradient(_merge_prompts(r).reshape(-1))  # [B·k, G/k] -> n = b·G + g
      rewards = jnp.concatenate([rewards, (r * gate)[:, None]], axis=1)
    groups = dict(prompt=prompt, prompt_mask=prompt_mask, ids=ids,
                  tokens=ro.tokens_NxT.reshape(B, G, -1), mask=ro.mask_NxT.reshape(B, G, -1),
                  truncated=ro.truncated_N.reshape(B, G), rewards=rewards.reshape(B, G, -1),
                  judged=judged.reshape(B, G))
    return groups, ro.num_steps

  def sample_groups(params, batch: Batch, key, rm_params=None):
    """Rollouts of B prompts; with dynamic sampling, refilled from further
    chunks of B prompts until every group has reward spread (or A attempts).
    Attempt a takes rows a, a + A, … of the batch, and each batch shard
    fills its own B/S groups from its own rows, so no group moves between
    devices (DAPO's buffer, per shard)."""
    attempts = cfg.dynamic_sampling_attempts
    B = batch.prompt_BxP.shape[0] // attempts
    chunk = lambda a, x: jax.lax.dynamic_index_in_dim(  # noqa: E731
        x.reshape(B, attempts, *x.shape[1:]), a, axis=1, keepdims=False)

    def attempt(a):
      g, steps = rollout_and_score(params, *(chunk(a, x) for x in batch), jax.random.fold_in(key, a),
                                   rm_params)
      total, judged = g['rewards'] @ weights, g['judged']  # spread among judged samples
      valid = (jnp.where(judged, total, -jnp.inf).max(axis=1)
               - jnp.where(judged, total, jnp.inf).min(axis=1)) > 1e-6
      return g, valid, steps

    groups, valid, steps = attempt(0)
    if attempts == 1:
      return groups, dict(decode_steps=steps)
    S = shards if B % shards == 0 else 1
    per_shard = lambda x: x.reshape(S, B // S, *x.shape[1:])  # noqa: E731
    # Groups with signal first, within each shard.
    order = jnp.argsort(~per_shard(valid), axis=1, stable=True)
    groups = jax.tree.map(lambda x: jax.vmap(lambda x, o: x[o])(per_shard(x), order), groups)
    count = per_shard(valid).sum(axis=1)

    def cond(c):
      return (c[0] < attempts) & jnp.any(c[1] < B // S)

    def body(c):
      a, count, groups, steps = c
      new, valid, s = attempt(a)
      slots, count = jax.vmap(grpo.dynamic_sampling_slots, (0, 0, None))(
          count, per_shard(valid), B // S)
      scatter = lambda buf, x, i: buf.at[i].set(x, mode='drop')  # noqa: E731
      groups = jax.tree.map(lambda buf, x: jax.vmap(scatter)(buf, per_shard(x), slots),
                            groups, new)
      return a + 1, count, groups, steps + s

    used, count, groups, steps = jax.lax.while_loop(cond, body, (1, count, groups, steps))
    groups = jax.tree.map(lambda x: x.reshape(B, *x.shape[2:]), groups)
    return groups, dict(decode_steps=steps, attempts=used, valid_groups=count.sum() / B)

  def logprobs(params, g, with_entropy=False, drop_key=None):
    model = model_with(params, shd.TRAIN_RULES)
    with shd.activation_rules(mesh, shd.TRAIN_RULES):
      N = g['tokens'].shape[0] * g['tokens'].shape[1]
      return completion_logprobs(model, g['prompt'], g['prompt_mask'],
                                 g['tokens'].reshape(N, -1), tau, impl=cfg.logprob_impl,
                                 with_entropy=with_entropy, mesh=mesh,
                                 lora_dropout=dropout(drop_key))

  def no_grad_logprobs(params, g, rows_M=None):
    """Per micro-batch (bounded memory), back in [B, G, T] layout; packed:
    per minibatch, as many forwards as its rows need."""
    if rows_M is None:
      parts = _split_prompts(g, M * A)
      out = jax.lax.map(lambda p: logprobs(params, p).reshape(p['tokens'].shape), parts)
      return jax.lax.stop_gradient(_merge_prompts(out))

    def one(args):
      p, rows = args
      forwards, count = split_rows(rows)

      def body(i, buf):
        return buf.at[i].set(packed(params, forwards.index(i)))

      buf = jax.lax.fori_loop(0, count, body, jnp.zeros(forwards.tokens_RxL.shape, jnp.float32))
      return packing.from_rows(merge_forwards(buf, rows), rows).reshape(p['tokens'].shape)

    out = jax.lax.map(one, (_split_prompts(g, M), rows_M))
    return jax.lax.stop_gradient(_merge_prompts(out))

  # ------------------------------------------------ packed teacher-forced passes

  def pack_minibatches(groups):
    """Each minibatch's sequences packed into rows (leading M axis), each
    batch shard's into its own rows."""
    def one(p):
      b, g = p['tokens'].shape[:2]
      return packing.pack(p['prompt'], p['prompt_mask'], p['tokens'].reshape(b * g, -1),
                          p['mask'].reshape(b * g, -1), b * g,
                          shards=shards if b % shards == 0 else 1)
    return jax.lax.map(one, _split_prompts(groups, M))

  def rows_per_forward(rows):
    R = rows.tokens_RxL.shape[0]
    return cfg.pack_rows or _auto_pack_rows(R, A, shards)

  def split_rows(rows, *more):
    """Rows (and per-slot arrays) as [F, m, L]: F forwards of m rows, m/S
    from each of the S shards' own rows, and the number of forwards that
    hold rows (the most any shard needs)."""
    R, L = rows.tokens_RxL.shape
    S, m = rows.rows.shape[0], rows_per_forward(rows)
    sharded = NamedSharding(mesh, P(None, BATCH_AXES))

    def split(x):  # [S·F·m/S, L] -> [S, F, m/S, L] -> [F, S·m/S, L]
      x = jnp.swapaxes(x.reshape(S, R // m, m // S, L), 0, 1).reshape(R // m, m, L)
      return jax.lax.with_sharding_constraint(x, sharded)

    fields = _Forwards(split(rows.tokens_RxL), split(rows.targets_RxL),
                       split(rows.positions_RxL), split(rows.segments_RxL))
    count = jnp.max((rows.rows + m // S - 1) // (m // S))
    return (fields, count) + tuple(jax.tree.map(split, x) for x in more)

  def merge_forwards(x_FxmxL, rows):
    """The inverse of `split_rows` for one array: [F, m, L] -> [R, L]."""
    F, m, L = x_FxmxL.shape
    S = rows.rows.shape[0]
    return jnp.swapaxes(x_FxmxL.reshape(F, S, m // S, L), 0, 1).reshape(F * m, L)

  def packed(params, forward, with_entropy=False, drop_key=None):
    model = model_with(params, shd.TRAIN_RULES)
    with shd.activation_rules(mesh, shd.TRAIN_RULES):
      return packed_logprobs(model, forward.rows(), tau, impl=cfg.logprob_impl,
                             with_entropy=with_entropy, mesh=mesh,
                             lora_dropout=dropout(drop_key))

  def dropout(key):
    """(rate, key) for the update's forward with LoRA dropout, else None."""
    return (cfg.lora_dropout, key) if cfg.lora_dropout and key is not None else None

  def step(state: TrainState, batch: Batch, rm_params=None, frozen=None):
    frozen_base[0] = frozen
    key = jax.random.wrap_key_data(state.rng)
    key_sample, key_next = jax.random.split(key)
    key_drop = jax.random.fold_in(key_sample, 0xd409)  # LoRA dropout's masks
    groups, sample_metrics = sample_groups(state.params, batch, key_sample, rm_params)
    mask = groups['mask']
    if cfg.mask_truncated:
      mask = mask & ~groups['truncated'][..., None]
    mask = mask & groups['judged'][..., None]
    adv = grpo.advantages(groups['rewards'], weights, cfg.advantage, cfg.per_reward_norm,
                          valid_BxG=groups['judged'])
    # The update's view: groups split into sub-groups where that keeps every
    # minibatch and micro-batch spread evenly over the batch shards.
    data = _as_subgroups(dict(groups, loss_mask=mask, adv=adv),
                         subgroups(mask.shape[0], G, shards, M * A))
    rows_M = pack_minibatches(data) if cfg.pack else None
    if state.ref_params is not None:
      data['ref_logp'] = no_grad_logprobs(state.ref_params, data, rows_M)
    elif cfg.lora and cfg.loss.beta > 0:  # the base itself: the adapters disabled
      data['ref_logp'] = no_grad_logprobs(lora_lib.disabled(state.params), data, rows_M)
    stale = mu * M > 1  # some update sees a policy other than the sampler
    if stale:
      data['old_logp'] = no_grad_logprobs(state.params, data, rows_M)

    def micro_loss(params, mb, norm, drop_key):
      logp, entropy = logprobs(params, mb, with_entropy=True, drop_key=drop_key)
      flat = lambda x: x.reshape(logp.shape) if x is not None else None  # noqa: E731
      old = flat(mb['old_logp']) if stale else jax.lax.stop_gradient(logp)
      m_NxT = flat(mb['loss_mask'])
      loss, metrics = grpo.policy_loss(logp, old, flat(mb.get('ref_logp')),
                                       jnp.reshape(mb['adv'], -1), m_NxT, cfg.loss, norm)
      metrics['entropy_sum'] = grpo.masked_sum(jax.lax.stop_gradient(entropy), m_NxT)
      return loss, metrics

    def packed_micro_loss(params, forward, per_slot, num_samples, drop_key):
      logp, entropy = packed(params, forward, with_entropy=True, drop_key=drop_key)
      m = per_slot['loss_mask']
      old = per_slot['old_logp'] if stale else jax.lax.stop_gradient(logp)
      loss, metrics = grpo.policy_loss(
          logp, old, per_slot.get('ref_logp'), per_slot['adv'], m, cfg.loss,
          weights_NxT=per_slot['weights'], segments=(forward.segments_RxL, num_samples + 1))
      metrics['entropy_sum'] = grpo.masked_sum(jax.lax.stop_gradient(entropy), m)
      return loss, metrics

    def packed_grads(params, mb, rows, m_mask, norm, drop_key):
      """The update's loss and gradient over its packed rows: a sum over the
      forwards that hold rows (the per-token weights carry the normalisers)."""
      n, T = m_mask.shape
      to = lambda x, fill=0.0: packing.to_rows(x.reshape(n, T), rows, fill)  # noqa: E731
      per_slot = dict(loss_mask=to(m_mask, False),
                      adv=to(jnp.broadcast_to(mb['adv'].reshape(n, 1), (n, T))),
                      weights=to(grpo.token_weights(m_mask, cfg.loss.loss_agg, norm)))
      for k in ('old_logp', 'ref_logp'):
        if k in mb:
          per_slot[k] = to(mb[k])
      forwards, count, per_slot = split_rows(rows, per_slot)
      grad_fn = lambda i: jax.value_and_grad(packed_micro_loss, has_aux=True)(  # noqa: E731
          params, forwards.index(i), jax.tree.map(lambda x: x[i], per_slot), n,
          jax.random.fold_in(drop_key, i))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, 0))
      return jax.lax.fori_loop(0, count, lambda i, acc: jax.tree.map(jnp.add, acc, grad_fn(i)),
                               zeros)

    def update(carry, index):
      params, opt_state = carry
      mb = jax.tree.map(lambda x: x[index % M], _split_prompts(data, M))
      m_mask = mb['loss_mask'].reshape(-1, mb['loss_mask'].shape[-1])
      norm = grpo.Normalisers(m_mask.shape[0], jnp.maximum(m_mask.sum(), 1), m_mask.shape[1])

      # Dropout keys of (step, update, micro-batch or packed forward).
      drop_key = jax.random.fold_in(key_drop, index)
      if rows_M is not None:
        rows = jax.tree.map(lambda x: x[index % M], rows_M)
        (loss, metrics), grads = packed_grads(params, mb, rows, m_mask, norm, drop_key)
      else:
        grad_fn = lambda micro, i: jax.value_and_grad(micro_loss, has_aux=True)(  # noqa: E731
            params, micro, norm, jax.random.fold_in(drop_key, i))
        micros = _split_prompts(mb, A)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             jax.eval_shape(grad_fn, jax.tree.map(lambda x: x[0], micros), 0))
        ((loss, metrics), grads), _ = jax.lax.scan(
            lambda acc, xs: (jax.tree.map(jnp.add, acc, grad_fn(*xs)), None), zeros,
            (micros, jnp.arange(A)))
      params, opt_state, grad_norm, finite = finite_update(optimizer, grads, params, opt_state,
                                                           loss)
      metrics = dict(metrics, loss=loss, grad_norm=grad_norm, nonfinite=~finite)
      return (params, opt_state), metrics

    (params, opt_state), per_update = jax.lax.scan(
        update, (state.params, state.opt_state), jnp.arange(mu * M))

    new_step = state.step + 1
    ref = state.ref_params
    if ref is not None and cfg.reference_reset_every > 0:
      ref = jax.lax.cond(new_step % cfg.reference_reset_every == 0,
                         lambda: params, lambda: ref)
    metrics = _metrics(per_update, groups, mask, adv, names, weights, acc_name, mu, M)
    metrics.update(sample_metrics)
    return TrainState(new_step, params, opt_state, ref, jax.random.key_data(key_next)), metrics

  data_sharding = Batch(batch_sharding, batch_sharding, batch_sharding)
  # Arguments: (state, batch[, reward model params][, frozen base (LoRA)]).
  extra = ((jax.tree.map(lambda x: x.sharding, reward_model.params),) if cfg.reward_model
           else ()) + ((None,) if cfg.lora else ())

  def call(state, batch, *args):
    rm_params = args[0] if cfg.reward_model else None
    return step(state, batch, rm_params, args[-1] if cfg.lora else None)

  return jax.jit(call, donate_argnums=0, in_shardings=(state_shardings, data_sharding, *extra),
                 out_shardings=(state_shardings, None))


def _auto_pack_rows(samples: int, micro_batches: int, shards: int) -> int:
  """Rows a packed forward takes by default: a quarter of a padded
  micro-batch's samples when that splits evenly over the batch shards, else
  a whole micro-batch's."""
  quarter = samples // (4 * micro_batches)
  if samples % (4 * micro_batches) == 0 and quarter % shards == 0:
    return quarter
  return samples // micro_batches


class _Forwards(NamedTuple):
  """Packed rows split into forwards: [F, m, L] each."""
  tokens_RxL: jax.Array
  targets_RxL: jax.Array
  positions_RxL: jax.Array
  segments_RxL: jax.Array

  def index(self, i) -> '_Forwards':
    return _Forwards(*(x[i] for x in self))

  def rows(self) -> packing.Rows:
    return packing.Rows(*self, slot_NxT=None, rows=None)


def finite_update(optimizer: optax.GradientTransformation, grads, params, opt_state, loss):
  """(params, opt_state, grad norm, finite): the optimizer's update applied
  only when the loss, the gradient and the result are all finite (else the
  old params and state, and finite False)."""
  grad_norm = optax.tree.norm(grads)
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_params)
  keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
  params, opt_state = jax.tree.map(keep, (new_params, new_opt_state), (params, opt_state))
  return params, opt_state, grad_norm, finite


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def _metrics(per_update, groups, mask, adv, names, weights, acc_name, mu, M):
  """Scalars for logging; '*_per_iter' vectors have one entry per μ iteration."""
  tokens = jnp.maximum(mask.sum(), 1)
  per_iter = {k: v.reshape(mu, M).sum(axis=1) / tokens
              for k, v in per_update.items() if k.endswith('_sum')}
  m = {k[:-4]: v[-1] for k, v in per_iter.items()}
  m.update({f'{k[:-4]}_per_iter': v for k, v in per_iter.items() if k != 'entropy_sum'})
  m['loss'] = per_update['loss'].mean()
  m['grad_norm'] = per_update['grad_norm'].mean()
  m['nonfinite_skipped'] = per_update['nonfinite'].sum()
  rewards = groups['rewards']
  total = rewards @ weights
  for i, name in enumerate(names):
    m[f'reward/{name}'] = rewards[..., i].mean()
  m['reward/total'] = total.mean()
  m['reward/zero_spread_groups'] = grpo.zero_spread_fraction(total)
  m['advantage/abs_mean'] = jnp.abs(adv).mean()
  if 'format' in names:
    m['format_rate'] = (rewards[..., names.index('format')] >= 1.0).mean()
  lengths = groups['mask'].sum(axis=-1).astype(jnp.float32)
  m['length/mean'], m['length/max'] = lengths.mean(), lengths.max()
  if acc_name is not None:
    correct = rewards[..., names.index(acc_name)] >= 0.5
    m['accuracy'] = correct.mean()
    safe_mean = lambda x, w: (x * w).sum() / jnp.maximum(w.sum(), 1)  # noqa: E731
    m['length/correct'] = safe_mean(lengths, correct)
    m['length/incorrect'] = safe_mean(lengths, ~correct)
  m['truncated'] = groups['truncated'].mean()
  m['tokens'] = groups['mask'].sum()
  return m

r"""GRPO and its variants as pure functions.

For a prompt q the policy samples a group of G completions o_1..o_G with
rewards r_i (a weighted sum of rule-based rewards). The advantage of o_i is
shared by all its tokens:

  grpo      Â_i = (r_i - mean_j r_j) / (std_j r_j + eps)          (DeepSeek-R1; std with ddof 0)
  drgrpo    Â_i =  r_i - mean_j r_j                                (Dr. GRPO: no std)
  rloo      Â_i =  r_i - mean_{j≠i} r_j = G/(G-1) (r_i - mean_j r_j)
  batch_std Â_i = (r_i - mean_j r_j) / (std of all r in the batch + eps)

With `per_reward=True` (GDPO) each reward component is normalised on its own
before the weighted sum, and the sum is re-standardised over the batch.

Per token t of o_i, with the importance ratio against the policy that sampled
(explicit old log-probs, so that with μ > 1 inner iterations the ratio differs
from 1 and clipping acts):

  ρ_t   = exp(log π_θ(o_t) - log π_old(o_t))          ('token')
  ρ_t   = exp(mean_t [log π_θ - log π_old])            ('sequence': GSPO, one ratio per completion)
  S_t   = min(ρ_t Â, clip(ρ_t, 1-ε_low, 1+ε_high) Â)   (clip-higher when ε_high > ε_low)
  S_t   = max(S_t, c Â) when Â < 0 and c > 1           (dual clip)
  KL_t  = k1: log π_θ - log π_ref
          k2: ½ (log π_θ - log π_ref)²
          k3: π_ref/π_θ - log(π_ref/π_θ) - 1           (R1's estimator; default)
  ℓ_t   = -S_t + β KL_t

and the loss aggregates ℓ over the completion tokens (mask m):

  seq_mean   (GRPO)    1/N Σ_i (Σ_t ℓ m / Σ_t m)
  token_mean (DAPO)    Σ_{i,t} ℓ m / Σ_{i,t} m
  constant   (Dr.GRPO) Σ_{i,t} ℓ m / (N · T_max)

Normalisers can be passed in so that micro-batches of one optimizer update
(gradient accumulation) add up to the loss of the whole update.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

ADVANTAGES = ('grpo', 'drgrpo', 'rloo', 'batch_std')
AGGREGATIONS = ('seq_mean', 'token_mean', 'constant')
KL_ESTIMATORS = ('k1', 'k2', 'k3')
RATIOS = ('token', 'sequence')


def _group_advantages(r_BxG: jax.Array, kind: str, eps: float, valid_BxG: jax.Array
                      ) -> jax.Array:
  """Over the valid members of each group only (the others get 0)."""
  w = valid_BxG.astype(jnp.float32)
  n_Bx1 = jnp.maximum(w.sum(axis=1, keepdims=True), 1.0)
  mean = (r_BxG * w).sum(axis=1, keepdims=True) / n_Bx1
  centred = (r_BxG - mean) * w
  if kind == 'grpo':
    std = jnp.sqrt((centred ** 2).sum(axis=1, keepdims=True) / n_Bx1)
    return centred / (std + eps)
  if kind == 'drgrpo':
    return centred
  if kind == 'rloo':
    return centred * (n_Bx1 / jnp.maximum(n_Bx1 - 1, 1.0))
  if kind == 'batch_std':  # the group's mean, the whole batch's std
    n = jnp.maximum(w.sum(), 1.0)
    std = jnp.sqrt((((r_BxG - (r_BxG * w).sum() / n) * w) ** 2).sum() / n)
    return centred / (std + eps)
  raise ValueError(f'rl.advantage: unknown estimator {kind!r}; known: {ADVANTAGES}')


def advantages(rewards_BxGxR: jax.Array, weights_R: jax.Array, kind: str = 'grpo',
               per_reward: bool = False, eps: float = 1e-6,
               valid_BxG: jax.Array | None = None) -> jax.Array:
  """Group-relative advantages [B, G] from per-reward scores [B, G, R].
  `valid_BxG` False marks samples without a verdict (a reward that could
  not judge them): they are left out of their group's statistics and get
  advantage 0 (the step also masks them out of the loss)."""
  rewards_BxGxR = rewards_BxGxR.astype(jnp.float32)
  if valid_BxG is None:
    valid_BxG = jnp.ones(rewards_BxGxR.shape[:2], bool)
  if not per_reward:
    return _group_advantages(rewards_BxGxR @ weights_R, kind, eps, valid_BxG)
  per = jax.vmap(lambda r: _group_advantages(r, kind, eps, valid_BxG), in_axes=2, out_axes=2)(
      rewards_BxGxR)
  total = per @ weights_R
  return _group_advantages(total.reshape(1, -1), 'batch_std', eps,
                           valid_BxG.reshape(1, -1)).reshape(total.shape)


def zero_spread_fraction(rewards_BxG: jax.Array, tol: float = 1e-6) -> jax.Array:
  """Share of groups whose rewards are all equal (they carry no signal)."""
  return jnp.mean(jnp.ptp(rewards_BxG, axis=1) <= tol)


def kl_divergence(logp_NxT: jax.Array, ref_logp_NxT: jax.Array,
                  estimator: str = 'k3') -> jax.Array:
  """Per-token estimate of KL(π_θ || π_ref) from samples of π_θ."""
  d = ref_logp_NxT - logp_NxT  # log π_ref/π_θ
  if estimator == 'k1':
    return -d
  if estimator == 'k2':
    return 0.5 * d * d
  if estimator == 'k3':
    return jnp.exp(d) - d - 1.0
  raise ValueError(f'rl.kl_estimator: unknown {estimator!r}; known: {KL_ESTIMATORS}')


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  return jnp.sum(jnp.where(mask, x, 0.0), axis=axis)


def importance_ratio(logp_NxT: jax.Array, old_logp_NxT: jax.Array, mask_NxT: jax.Array,
                     kind: str = 'token', segments: tuple[jax.Array, int] | None = None
                     ) -> jax.Array:
  """ρ per token [N, T]; 'sequence' (GSPO) broadcasts one ratio per completion:
  per row, or, in a packed layout, per `segments` = (sequence id of each
  token, number of ids)."""
  log_ratio = jnp.where(mask_NxT, logp_NxT - old_logp_NxT, 0.0)
  if kind == 'token':
    return jnp.exp(log_ratio)
  if kind == 'sequence':
    if segments is None:
      n = jnp.maximum(mask_NxT.sum(axis=1, keepdims=True), 1)
      seq = jnp.exp(log_ratio.sum(axis=1, keepdims=True) / n)
      return jnp.broadcast_to(seq, logp_NxT.shape)
    ids, count = segments
    total = jax.ops.segment_sum(log_ratio.ravel(), ids.ravel(), count)
    n = jnp.maximum(jax.ops.segment_sum(mask_NxT.ravel().astype(jnp.float32), ids.ravel(), count), 1)
    return jnp.exp(total / n)[ids]
  raise ValueError(f'rl.ratio: unknown {kind!r}; known: {RATIOS}')


class Normalisers(NamedTuple):
  """Denominators of the loss over one optimizer update (see module doc)."""
  num_seqs: jax.Array | float
  num_tokens: jax.Array | float
  max_len: int


def normalisers(mask_NxT: jax.Array) -> Normalisers:
  return Normalisers(mask_NxT.shape[0], jnp.maximum(mask_NxT.sum(), 1), mask_NxT.shape[1])


def token_weights(mask_NxT: jax.Array, kind: str, norm: Normalisers | None = None) -> jax.Array:
  """Each token's weight w in the aggregated loss Σ ℓ·m·w (module doc), rows
  being completions: what a packed layout carries along with its tokens."""
  norm = norm or normalisers(mask_NxT)
  if kind == 'seq_mean':
    per_seq = 1.0 / (jnp.maximum(mask_NxT.sum(axis=1, keepdims=True), 1) * norm.num_seqs)
    return jnp.broadcast_to(per_seq, mask_NxT.shape)
  if kind == 'token_mean':
    return jnp.full(mask_NxT.shape, 1.0 / norm.num_tokens)
  if kind == 'constant':
    return jnp.full(mask_NxT.shape, 1.0 / (norm.num_seqs * norm.max_len))
  raise ValueError(f'rl.loss_agg: unknown {kind!r}; known: {AGGREGATIONS}')


def aggregate(loss_NxT: jax.Array, mask_NxT: jax.Array, kind: str,
              norm: Normalisers | None = None) -> jax.Array:
  return masked_sum(loss_NxT * token_weights(mask_NxT, kind, norm), mask_NxT)


class LossConfig(NamedTuple):
  beta: float = 0.04
  kl_estimator: str = 'k3'
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  dual_clip: float = 0.0  # c > 1 enables dual clip; 0 disables
  ratio: str = 'token'
  loss_agg: str = 'seq_mean'


def policy_loss(logp_NxT: jax.Array, old_logp_NxT: jax.Array,
                ref_logp_NxT: jax.Array | None, adv_N: jax.Array, mask_NxT: jax.Array,
                cfg: LossConfig, norm: Normalisers | None = None, *,
                weights_NxT: jax.Array | None = None,
                segments: tuple[jax.Array, int] | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The clipped surrogate + β·KL loss and its measurements.

  Rows are completions, with one advantage each (adv [N]); or, in a packed
  layout (r1jax/packing.py), any rows of tokens with per-token advantages
  (adv of logp's shape), aggregation weights (`token_weights` of the
  completions, moved along) and, for the sequence ratio, `segments`.
  Measurements are sums over masked tokens (keys end in '_sum') so that they
  can be added across micro-batches and divided by the token count once.
  """
  ratio = importance_ratio(logp_NxT, old_logp_NxT, mask_NxT, cfg.ratio, segments)
  adv = adv_N.astype(jnp.float32)
  adv = adv if adv.shape == logp_NxT.shape else adv[:, None]
  clipped = jnp.clip(ratio, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)
  surrogate = jnp.minimum(ratio * adv, clipped * adv)
  if cfg.dual_clip > 1.0:
    surrogate = jnp.where(adv < 0, jnp.maximum(surrogate, cfg.dual_clip * adv), surrogate)
  per_token = -surrogate
  metrics = {
      'clip_low_sum': masked_sum((adv < 0) & (ratio < 1.0 - cfg.epsilon_low), mask_NxT),
      'clip_high_sum': masked_sum((adv > 0) & (ratio > 1.0 + cfg.epsilon_high), mask_NxT),
      'ratio_sum': masked_sum(ratio, mask_NxT),
  }
  if ref_logp_NxT is not None and cfg.beta > 0:
    kl = kl_divergence(logp_NxT, ref_logp_NxT, cfg.kl_estimator)
    per_token = per_token + cfg.beta * kl
    metrics['kl_sum'] = masked_sum(kl, mask_NxT)
  if weights_NxT is None:
    weights_NxT = token_weights(mask_NxT, cfg.loss_agg, norm)
  return masked_sum(per_token * weights_NxT, mask_NxT), metrics


def dynamic_sampling_slots(count: jax.Array, valid_B: jax.Array, capacity: int
                           ) -> tuple[jax.Array, jax.Array]:
  """DAPO dynamic sampling: where the valid groups of a new attempt go.

  `count` groups of the buffer are already filled. Valid groups take the next
  free slots in order; the rest (and any beyond `capacity`) get slot
  `capacity`, out of bounds, so a scatter with mode='drop' discards them.
  Returns (slots [B], new count).
  """
  rank = jnp.cumsum(valid_B) - 1
  slot = jnp.where(valid_B, count + rank, capacity)
  slot = jnp.where(slot < capacity, slot, capacity)
  return slot, jnp.minimum(count + valid_B.sum(), capacity)

"""Batched group sampling: prefill each prompt once, decode G samples of it.

  prompts [B, P] (left-padded) ──prefill──▶ prompt KV: v [L, B, K, P, H], k [L, B, K, H, P]
    static:     ──repeat G──▶ cache of B·G rows × C slots ──lax.while_loop decode──▶ [B·G, T]
    continuous: Z decode slots, a cache of Z rows × C slots; a slot whose sample
                ends takes the next pending one (its prompt's KV copied in)

C = P + T, rounded up to whole 128 slots when it spans more than one
64-slot decode block (`cache_slots`); a decode step reads the blocks (64
slots on CPU, 128 elsewhere) up to its own slot only. On CPU the static
batch keeps its cache as separate block buffers per layer, created as the
decode reaches them (`_static_blocks`; XLA's CPU backend copies every block
it reads out of a stacked [L, …] cache), with the same tokens.

Row n = b·G + g of the outputs is sample g of prompt b, whichever way it was
decoded. The static loop stops when every sequence has emitted an EOS id or
T = max_new_tokens tokens exist: rows that finished early are decoded (and
discarded) until the longest one ends. With `slots` Z < B·G the rollout is
continuously batched: Z rows are decoded per step, and when a slot's sample
emits EOS or reaches its budget the slot is refilled from the queue of
pending samples inside the same `lax.while_loop`, so the decode work follows
the tokens generated rather than B·G × the longest sample.

Randomness is per sample: token t of sample n is drawn with
fold_in(fold_in(key, n), t). A sample's tokens therefore do not depend on the
row or slot it is decoded in, nor on the slot count or the chunking: the
continuous sampler reproduces the static one token for token, as long as the
backend's batched matmuls give each row the same result whatever the batch
(true on this CPU, tested; not guaranteed by XLA on GPU or TPU, where a
last-bit difference can flip a sampled token).

On a mesh there is one queue per batch shard (`shards`): the Z/S slots of
shard d take only the samples of shard d's prompts, so a refill copies KV
within the device and nothing moves between devices.

Log-probs returned with the tokens are log softmax(logits / temperature) of the
sampled token — the distribution before top-p/top-k truncation, which is what
the GRPO ratio is taken against (as in TRL and veRL). Greedy (temperature 0)
returns log softmax(logits).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from r1jax.kernels import attention as attn_lib
from r1jax.models import Decoder
from r1jax.models.decoder import CACHE_SLOT_AXIS

# The most block reads (summed over the phases and layers) the block-buffer
# decode (CPU) unrolls into its program: compiling takes ~30 ms more per read
# (180 reads at 32 + 512 slots, 4 layers: 10 s instead of 4 s).
MAX_UNROLLED_READS = 512


class SamplingConfig(NamedTuple):
  max_new_tokens: int
  temperature: float = 1.0  # 0: greedy
  top_p: float = 1.0
  top_k: int = 0  # 0: off
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0


class Rollout(NamedTuple):
  tokens_NxT: jax.Array  # int32 completion tokens, pad_id after the end
  mask_NxT: jax.Array  # bool, True up to and including the EOS
  logp_NxT: jax.Array  # float32 log π(token) (see module doc), 0 where masked
  truncated_N: jax.Array  # bool: no EOS within max_new_tokens (or the budget)
  num_steps: jax.Array  # int32: decode steps actually run


def filter_logits(logits_NxV: jax.Array, top_p: float, top_k: int) -> jax.Array:
  """Sets logits outside the top-k / top-p nucleus to -inf (static options)."""
  if top_k > 0:
    kth = jax.lax.top_k(logits_NxV, top_k)[0][..., -1:]
    logits_NxV = jnp.where(logits_NxV < kth, -jnp.inf, logits_NxV)
  if top_p < 1.0:
    sorted_desc = -jnp.sort(-logits_NxV, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Keep a token if the mass strictly before it is < top_p (the top token
    # is always kept); the threshold is the smallest kept logit.
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = before < top_p
    threshold = jnp.min(jnp.where(kept, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    logits_NxV = jnp.where(logits_NxV < threshold, -jnp.inf, logits_NxV)
  return logits_NxV


def token_keys(key: jax.Array, sample_N: jax.Array, t_N: jax.Array) -> jax.Array:
  """The key of token t of sample n, one per row: fold_in(fold_in(key, n), t)."""
  return jax.vmap(lambda n, t: jax.random.fold_in(jax.random.fold_in(key, n), t))(
      sample_N, jnp.broadcast_to(t_N, sample_N.shape))


def sample_logits(logits_NxV: jax.Array, keys_N: jax.Array, cfg: SamplingConfig
                  ) -> tuple[jax.Array, jax.Array]:
  """Next tokens [N] and their log-probs [N] (see module doc); row i draws
  with keys_N[i]."""
  logits_NxV = logits_NxV.astype(jnp.float32)
  if cfg.temperature == 0:
    tokens = jnp.argmax(logits_NxV, axis=-1)
    logp_all = jax.nn.log_softmax(logits_NxV, axis=-1)
  else:
    scaled = logits_NxV / cfg.temperature
    logp_all = jax.nn.log_softmax(scaled, axis=-1)
    tokens = jax.vmap(jax.random.categorical)(
        keys_N, filter_logits(scaled, cfg.top_p, cfg.top_k))
  logp = jnp.take_along_axis(logp_all, tokens[:, None], axis=-1)[:, 0]
  return tokens.astype(jnp.int32), logp


class _Out(NamedTuple):
  """The outputs being written, one row per sample."""
  tokens_NxT: jax.Array
  mask_NxT: jax.Array
  logp_NxT: jax.Array
  done_N: jax.Array  # EOS emitted or budget reached

  def emit(self, n_Z, t_Z, token_Z, logp_Z, write_Z, eos, budget_N):
    """Token t of sample n for the rows where `write`; n may be out of range
    (ignored). Returns the outputs and whether each written sample ended."""
    n = jnp.where(write_Z, n_Z, self.done_N.shape[0])  # out of range: dropped
    ended = jnp.isin(token_Z, eos) | (t_Z + 1 >= budget_N.at[n].get(mode='fill', fill_value=1))
    return _Out(self.tokens_NxT.at[n, t_Z].set(token_Z, mode='drop'),
                self.mask_NxT.at[n, t_Z].set(True, mode='drop'),
                self.logp_NxT.at[n, t_Z].set(logp_Z, mode='drop'),
                self.done_N.at[n].set(ended, mode='drop')), ended

  def emit_column(self, t, token_N, logp_N, eos, budget_N):
    """Token t of every sample not yet done (the static batch: row n is
    sample n), written as one column."""
    write = ~self.done_N
    ended = jnp.isin(token_N, eos) | (t + 1 >= budget_N)
    col = lambda x, new: x.at[:, t].set(jnp.where(write, new, x[:, t]))  # noqa: E731
    return _Out(col(self.tokens_NxT, token_N), col(self.mask_NxT, True),
                col(self.logp_NxT, logp_N), self.done_N | (write & ended))


def generate(model: Decoder, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
             key: jax.Array, cfg: SamplingConfig, group_size: int = 1, *,
             slots: int = 0, shards: int = 1, sample_ids_N: jax.Array | None = None,
             budget_N: jax.Array | None = None) -> Rollout:
  """Samples `group_size` completions for each prompt; see the module doc.

  slots: decode slots; 0 (or ≥ B·G) decodes all B·G samples as one static
    batch, fewer batches them continuously.
  shards: the continuous sampler's queues, one per batch shard of the
    prompts (each shard's slots decode only its own samples); must divide
    B and `slots`.
  sample_ids_N: the samples' indices for their random keys (default
    0..B·G-1; a chunk of a larger batch passes its rows' global indices).
  budget_N: per-sample limits on new tokens (≤ max_new_tokens): a sample
    ends at its budget as at T (what benchmarks use to draw length
    distributions)."""
  B, P = prompt_BxP.shape
  G, T = group_size, cfg.max_new_tokens
  N = B * G
  ids_N = jnp.arange(N, dtype=jnp.int32) if sample_ids_N is None else sample_ids_N
  budget_N = (jnp.full((N,), T, jnp.int32) if budget_N is None
              else jnp.minimum(budget_N.astype(jnp.int32), T))

  prompt_mask_BxP = prompt_mask_BxP.astype(bool)
  prompt_len_B = prompt_mask_BxP.sum(axis=1)
  positions_BxP = jnp.maximum(jnp.cumsum(prompt_mask_BxP, axis=1) - 1, 0)
  hidden, prefix = model.hidden(prompt_BxP, positions_BxT=positions_BxP,
                                cache=model.init_cache(B, P), cache_index=0,
                                cache_mask_BxS=prompt_mask_BxP)
  # Token 0 of every sample comes from its prompt's last position.
  logits_BxV = model.logits_from_hidden(hidden[:, -1:])[:, 0]
  eos = jnp.asarray(cfg.eos_ids or (-1,), jnp.int32)
  out = _Out(jnp.full((N, T), cfg.pad_id, jnp.int32), jnp.zeros((N, T), bool),
             jnp.zeros((N, T), jnp.float32), jnp.zeros((N,), bool))
  args = (model, key, cfg, G, prefix, prompt_mask_BxP, prompt_len_B, logits_BxV,
          ids_N, budget_N, eos, out)
  if 0 < slots < N:
    if B % shards or slots % shards:
      raise ValueError(f'{shards} queues do not split {B} prompts and {slots} slots')
    return _continuous(slots, shards, *args)
  phases = _block_phases(P, T)
  reads = model.cfg.num_layers * sum(j + 1 for j in phases)  # phase j reads blocks 0..j
  if (model.cfg.attention != 'dense' and cache_slots(P, T) > attn_lib.DECODE_BLOCK
      and reads <= MAX_UNROLLED_READS):
    return jax.lax.platform_dependent(cpu=lambda: _static_blocks(*args),
                                      default=lambda: _static(*args))
  return _static(*args)


def cache_slots(P: int, T: int) -> int:
  """The KV cache's length for P prompt slots and T new tokens: P + T,
  rounded up to whole decode blocks when it spans more than one, so that the
  stacked decode (attn_lib.decode) and the block buffers read the same blocks
  and agree bit for bit."""
  Sb = attn_lib.ACCEL_DECODE_BLOCK  # a multiple of DECODE_BLOCK: whole blocks of both
  return P + T if P + T <= attn_lib.DECODE_BLOCK else -(-(P + T) // Sb) * Sb


def _block_phases(P: int, T: int) -> range:
  """The cache blocks the decode writes into, in order: token t is fed at
  slot P + t - 1, so the first is the block of slot P."""
  return range(P // attn_lib.DECODE_BLOCK, -(-(P + T) // attn_lib.DECODE_BLOCK))


def _sample_column(model, hidden_Nx1xD, t, key, ids_N, cfg, out, eos, budget_N):
  """Token t of every sample from the last hidden states, written as one
  column of the outputs (the static batch)."""
  logits = model.logits_from_hidden(hidden_Nx1xD)[:, 0]
  token, logp = sample_logits(logits, token_keys(key, ids_N, t), cfg)
  return token, out.emit_column(t, token, logp, eos, budget_N)


def _static_start(key, cfg, G, S, prompt_mask_BxP, prompt_len_B, logits_BxV, ids_N, budget_N,
                  eos, out):
  """What both static loops start from, per sample: the prompt's key mask
  padded to the S cache slots, the prompt length, and token 0 (from the
  prompt's last position) written: (mask [N, S], lengths [N], token 0 [N],
  outputs)."""
  rep = lambda x: jnp.repeat(x, G, axis=0)  # noqa: E731
  P = prompt_mask_BxP.shape[1]
  token0_N, logp0_N = sample_logits(rep(logits_BxV), token_keys(key, ids_N, jnp.int32(0)), cfg)
  return (rep(jnp.pad(prompt_mask_BxP, ((0, 0), (0, S - P)))), rep(prompt_len_B), token0_N,
          out.emit_column(0, token0_N, logp0_N, eos, budget_N))


def _static(model, key, cfg, G, prefix, prompt_mask_BxP, prompt_len_B, logits_BxV,
            ids_N, budget_N, eos, out):
  N, T = out.tokens_NxT.shape
  P = prompt_mask_BxP.shape[1]
  S = cache_slots(P, T)
  slots = jnp.arange(S)
  cache = {k: jnp.repeat(_pad_slots(k, v, S - P), G, axis=1) for k, v in prefix.items()}
  prefix_mask_NxS, prompt_len_N, token0_N, out = _static_start(
      key, cfg, G, S, prompt_mask_BxP, prompt_len_B, logits_BxV, ids_N, budget_N, eos, out)

  def cond(carry):
    t, _, _, out = carry
    return (t < T) & ~jnp.all(out.done_N)

  def body(carry):
    t, cache, last_N, out = carry
    # Feed token t-1 (slot P+t-1) and sample token t.
    cache_mask = prefix_mask_NxS | ((slots >= P) & (slots < P + t))[None]
    hidden, cache = model.hidden(last_N[:, None], positions_BxT=(prompt_len_N + t - 1)[:, None],
                                 cache=cache, cache_index=P + t - 1, cache_mask_BxS=cache_mask)
    token, out = _sample_column(model, hidden, t, key, ids_N, cfg, out, eos, budget_N)
    return t + 1, cache, token, out

  t, _, _, out = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, token0_N, out))
  return Rollout(out.tokens_NxT, out.mask_NxT, out.logp_NxT, ~_eos_seen(out, eos), t)


def _pad_slots(name: str, x: jax.Array, n: int) -> jax.Array:
  """A cache array ('k' or 'v') with n empty slots appended."""
  return jnp.pad(x, [(0, n if a == CACHE_SLOT_AXIS[name] else 0) for a in range(x.ndim)])


def _static_blocks(model, key, cfg, G, prefix, prompt_mask_BxP, prompt_len_B, logits_BxV,
                   ids_N, budget_N, eos, out):
  """`_static` for XLA's CPU backend, with the same tokens and log-probs: the
  cache is held as separate block buffers per layer (Decoder.decode_blocks)
  and the decode loop runs in phases, one per block, phase j writing block
  j and reading blocks 0..j. The stacked cache's decode copies every block
  it reads out of the [L, …] array (and every layer's weights out of theirs),
  which cost more than the attention's dots (benchmarks/grpo_step.py at 512
  new tokens). A block's buffer is created when its phase starts."""
  N, T = out.tokens_NxT.shape
  P = prompt_mask_BxP.shape[1]
  Sb, L = attn_lib.DECODE_BLOCK, model.cfg.num_layers
  n_blocks = cache_slots(P, T) // Sb
  prompt_blocks = -(-P // Sb)
  pre = {k: jnp.repeat(_pad_slots(k, v, prompt_blocks * Sb - P), G, axis=1)
         for k, v in prefix.items()}
  k_blocks = [[pre['k'][l, ..., j * Sb:(j + 1) * Sb] for j in range(prompt_blocks)]
              for l in range(L)]
  v_blocks = [[pre['v'][l, :, :, j * Sb:(j + 1) * Sb] for j in range(prompt_blocks)]
              for l in range(L)]
  del pre
  prefix_mask_NxS, prompt_len_N, token0_N, out = _static_start(
      key, cfg, G, n_blocks * Sb, prompt_mask_BxP, prompt_len_B, logits_BxV, ids_N, budget_N,
      eos, out)
  weights = model.layer_weights()
  t, last_N = jnp.int32(1), token0_N

  # Token t is fed at slot P + t - 1: phase j runs the steps whose slot lies in block j.
  for j in _block_phases(P, T):
    if j >= prompt_blocks:
      k_blocks = [ks + [jnp.zeros_like(k_blocks[0][0])] for ks in k_blocks]
      v_blocks = [vs + [jnp.zeros_like(v_blocks[0][0])] for vs in v_blocks]
    end = min(T, (j + 1) * Sb - P + 1)
    slots = jnp.arange((j + 1) * Sb)
    kept_k = [ks[:j] for ks in k_blocks]
    kept_v = [vs[:j] for vs in v_blocks]

    def cond(carry, end=end):
      t, _, _, out = carry
      return (t < end) & ~jnp.all(out.done_N)

    def body(carry, slots=slots, kept_k=kept_k, kept_v=kept_v, j=j):
      t, blocks, last_N, out = carry
      valid = prefix_mask_NxS[:, :(j + 1) * Sb] | ((slots >= P) & (slots < P + t))[None]
      hidden, blocks = model.decode_blocks(
          last_N[:, None], (prompt_len_N + t - 1)[:, None], weights,
          [ks + [k] for ks, (k, _) in zip(kept_k, blocks)],
          [vs + [v] for vs, (_, v) in zip(kept_v, blocks)], P + t - 1, valid)
      token, out = _sample_column(model, hidden, t, key, ids_N, cfg, out, eos, budget_N)
      return t + 1, blocks, token, out

    blocks = [(ks[j], vs[j]) for ks, vs in zip(k_blocks, v_blocks)]
    t, blocks, last_N, out = jax.lax.while_loop(cond, body, (t, blocks, last_N, out))
    k_blocks = [ks[:j] + [k] for ks, (k, _) in zip(k_blocks, blocks)]
    v_blocks = [vs[:j] + [v] for vs, (_, v) in zip(v_blocks, blocks)]
  return Rollout(out.tokens_NxT, out.mask_NxT, out.logp_NxT, ~_eos_seen(out, eos), t)


def _eos_seen(out: _Out, eos) -> jax.Array:
  return jnp.any(jnp.isin(out.tokens_NxT, eos) & out.mask_NxT, axis=1)


class _Slots(NamedTuple):
  """The continuous sampler's state: the cache has one row per decode slot
  (Z); the rest is per shard and slot [S, Z/S], with each shard's samples
  numbered locally (0..N/S-1; N/S: none)."""
  cache: dict  # k [L, Z, K, H, C], v [L, Z, K, C, H]
  valid: jax.Array  # bool [S, Z/S, C]: the key slots each slot's sample attends to
  sample: jax.Array  # int32: the (local) sample in the slot
  t: jax.Array  # int32: tokens that sample has emitted
  last: jax.Array  # int32: its last token (fed next)
  live: jax.Array  # bool: still generating
  queued: jax.Array  # int32 [S]: samples each shard has handed to slots (its queue's head)
  steps: jax.Array  # int32: decode steps run
  out: _Out  # [S, N/S, ...]


def _continuous(Z, S, model, key, cfg, G, prefix, prompt_mask_BxP, prompt_len_B, logits_BxV,
                ids_N, budget_N, eos, out):
  """Z slots in S groups, one per batch shard: group d works through the
  queue of shard d's samples (those of its B/S prompts), so a refill copies
  KV only from the shard's own prompts. The refill and the writes are
  batched over the shards (vmap): XLA partitions them along the shards with
  no communication."""
  N, T = out.tokens_NxT.shape
  B, P = prompt_mask_BxP.shape
  Zs, Ns, Bs = Z // S, N // S, B // S
  C = cache_slots(P, T)
  slot_ids = jnp.arange(C)

  def part(x, axis=0):  # [..., S·n, ...] -> [..., S, n, ...]
    return x.reshape(*x.shape[:axis], S, x.shape[axis] // S, *x.shape[axis + 1:])

  def whole(x, axis=0):  # the inverse
    return x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:])

  shard_consts = (jax.tree.map(lambda v: part(v, 1), prefix), part(prompt_mask_BxP),
                  part(logits_BxV), part(ids_N), part(budget_N))

  def refill_shard(cache, valid, sample, t, last, live, queued, out,
                   prefix, pmask, logits, ids, budget):
    """One shard's free slots take its next pending samples, in queue order:
    the prompt's KV and mask are copied in and token 0 (drawn from the
    prefill) is emitted."""
    free = ~live
    head = queued + jnp.cumsum(free) - 1
    take = free & (head < Ns)
    n = jnp.where(take, head, Ns)
    b = jnp.minimum(n // G, Bs - 1)
    dst = jnp.where(take, jnp.arange(Zs), Zs)  # out of range: untouched
    cache = {k: v.at[(slice(None), dst) + (slice(None),) * (CACHE_SLOT_AXIS[k] - 2)
                     + (slice(0, P),)].set(prefix[k][:, b], mode='drop')
             for k, v in cache.items()}
    valid = jnp.where(take[:, None], jnp.pad(pmask[b], ((0, 0), (0, C - P))), valid)
    token, logp = sample_logits(logits[b], token_keys(key, ids[jnp.minimum(n, Ns - 1)],
                                                      jnp.int32(0)), cfg)
    out, ended = out.emit(n, jnp.zeros((Zs,), jnp.int32), token, logp, take, eos, budget)
    return (cache, valid, jnp.where(take, n, jnp.where(live, sample, Ns)),
            jnp.where(take, 1, t), jnp.where(take, token, last), jnp.where(take, ~ended, live),
            queued + take.sum(), out)

  def refill(s: _Slots) -> _Slots:
    cache = jax.tree.map(lambda v: part(v, 1), s.cache)
    cache, *rest = jax.vmap(refill_shard, in_axes=(1,) + (0,) * 7 + (1,) + (0,) * 4, out_axes=(1,) + (0,) * 7)(
        cache, s.valid, s.sample, s.t, s.last, s.live, s.queued, s.out, *shard_consts)
    return _Slots(jax.tree.map(lambda v: whole(v, 1), cache), *rest[:6], s.steps, rest[6])

  def can_refill(s: _Slots):
    return jnp.any(jnp.any(~s.live, axis=1) & (s.queued < Ns))

  def refill_all(s: _Slots) -> _Slots:
    # A sample can end at token 0; its slot takes another at once.
    return jax.lax.while_loop(can_refill, refill, s)

  def decode(s: _Slots) -> _Slots:
    # The slot of the token fed; idle slots write (harmlessly) at P and do
    # not lengthen the cache blocks read.
    idx = jnp.where(s.live, P + s.t - 1, P)
    valid = s.valid | (slot_ids == idx[..., None])
    # Per-shard lookups (gathers batched over the shards).
    local = lambda x_SxM, i_SxZ: jnp.take_along_axis(x_SxM, i_SxZ, axis=1)  # noqa: E731
    prompt_len = local(part(prompt_len_B), jnp.minimum(s.sample // G, Bs - 1))
    hidden, cache = model.hidden(whole(s.last)[:, None],
                                 positions_BxT=whole(prompt_len + idx - P)[:, None],
                                 cache=s.cache, cache_index=whole(idx),
                                 cache_mask_BxS=whole(valid))
    logits = model.logits_from_hidden(hidden)[:, 0]
    ids = local(part(ids_N), jnp.minimum(s.sample, Ns - 1))
    token, logp = sample_logits(logits, token_keys(key, whole(ids), whole(s.t)), cfg)
    token, logp = part(token), part(logp)
    out, ended = jax.vmap(lambda o, *a: o.emit(*a[:5], eos, a[5]))(
        s.out, s.sample, s.t, token, logp, s.live, part(budget_N))
    return _Slots(cache, valid, s.sample, s.t + s.live, token, s.live & ~ended,
                  s.queued, s.steps + 1, out)

  per_slot = lambda fill, dtype: jnp.full((S, Zs), fill, dtype)  # noqa: E731
  s = _Slots(model.init_cache(Z, C), jnp.zeros((S, Zs, C), bool),
             per_slot(Ns, jnp.int32), per_slot(0, jnp.int32), per_slot(0, jnp.int32),
             per_slot(False, bool), jnp.zeros((S,), jnp.int32), jnp.int32(1),
             jax.tree.map(part, out))
  s = refill_all(s)
  s = jax.lax.while_loop(lambda s: jnp.any(s.live) | jnp.any(s.queued < Ns),
                         lambda s: refill_all(decode(s)), s)
  out = jax.tree.map(whole, s.out)
  return Rollout(out.tokens_NxT, out.mask_NxT, out.logp_NxT, ~_eos_seen(out, eos), s.steps)


def generate_in_chunks(model: Decoder, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                       key: jax.Array, cfg: SamplingConfig, group_size: int = 1,
                       chunks: int = 1, slots: int = 0, shards: int = 1) -> Rollout:
  """`generate` on the prompts in `chunks` sequential parts, each with its own
  KV cache, so the cache's peak is 1/chunks of the whole batch's (R1's
  rollout of 512 prompts x 16 samples x 33k tokens). Chunk r takes prompts
  r, r+R, r+2R, …: with the batch split over devices in contiguous runs, each
  chunk is spread over every device and nothing moves between them. Samples
  keep their global indices for their keys, so the tokens are the whole
  batch's; the rows come back in prompt order. `slots` and `shards` apply
  per chunk."""
  if chunks == 1:
    return generate(model, prompt_BxP, prompt_mask_BxP, key, cfg, group_size, slots=slots,
                    shards=shards)
  B, R, G = prompt_BxP.shape[0], chunks, group_size
  part = lambda x: jnp.swapaxes(x.reshape(B // R, R, *x.shape[1:]), 0, 1)  # noqa: E731
  ids = part(jnp.arange(B * G, dtype=jnp.int32).reshape(B, G)).reshape(R, -1)
  ro = jax.lax.map(
      lambda a: generate(model, a[0], a[1], key, cfg, G, slots=slots, shards=shards,
                         sample_ids_N=a[2]),
      (part(prompt_BxP), part(prompt_mask_BxP), ids))
  # [R, B/R·G, …] -> [B·G, …]: row n continues prompt n // G, as in generate.
  whole = lambda x: jnp.swapaxes(x.reshape(R, B // R, G, *x.shape[2:]), 0, 1).reshape(  # noqa: E731
      B * G, *x.shape[2:])
  return Rollout(*(whole(x) for x in ro[:4]), ro.num_steps.max())

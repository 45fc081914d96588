"""Attention for the teacher-forced passes, with memory linear in length.

  out[b,k,g,t] = Σ_s softmax_s(q[b,k,g,t] · k[b,k,s] / √H + mask) v[b,k,s]

GQA layout: q [B, K, G, T, H] (G query heads per kv head), k and v
[B, K, S, H]. The mask is described, never materialised as [T, S]:

  allowed(b, t, s) = key_valid[b, s]
                     & s <= q_offset + t                (causal in key slots)
                     & q_segment[b, t] == k_segment[b, s]   (packed rows; optional)

which covers the three key layouts of the decoder: a sequence's own keys
(q_offset 0), a shared prompt prefix followed by a continuation's own keys
(q_offset P) and a KV cache (q_offset = the cache index). Disallowed scores
are a finite -1e30, as in the dense path, so rows with no allowed key (left
padding) stay finite.

Implementations (`model.attention`):

  dense      the [T, S] scores (the reference; decode steps use it: T = 1);
  blockwise  pure JAX: a loop over key blocks with an online softmax; a
             custom VJP recomputes each tile from the saved log-sum-exp
             (FlashAttention's backward), so memory is linear in T rather
             than O(T·S). Where the query offset is static (the
             teacher-forced passes) the queries go in chunks aligned to the
             key blocks and each chunk reads only the key blocks up to its
             own: the causal tiles, [block, block] each; a traced offset
             (a prefill into a cache) reads every key block for all T
             queries at once. CPU default for sequences longer than one
             block;
  splash     the maintained Pallas TPU kernel
             (jax.experimental.pallas.ops.tpu.splash_attention), per device
             under jax.shard_map (attention_tpu.py);
  triton     the Pallas Triton flash-attention kernel that ships with jax
             (jax.experimental.pallas.ops.gpu.attention), per device under
             jax.shard_map (attention_gpu.py): GPU, linear memory, bf16
             (f32 runs without tensor cores); a query's validity is its own
             key slot's (see attention_gpu.py); lowered for CUDA and run
             interpreted on CPU in the tests, not yet run on a GPU (none was
             lent), so `auto` does not pick it; blockwise when the query
             offset is not static;
  cudnn      jax.nn.dot_product_attention(implementation='cudnn') (GPU,
             fp16/bf16 only; not yet run: no GPU was lent). The mask goes
             in dense, [B, 1, T, S]: cuDNN takes padding only as
             right-aligned sequence lengths. Not linear in memory;
  auto       splash on TPU (blockwise when the query offset is not static),
             blockwise elsewhere, dense when the keys fit one block; chosen
             when the computation is lowered (jax.lax.platform_dependent), so
             an AOT lowering for TPU from a CPU host gets the kernel.
"""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ('auto', 'dense', 'blockwise', 'splash', 'triton', 'cudnn')
BLOCK = 512
NEG_INF = -1e30


class Mask(NamedTuple):
  """The attention mask, described (see the module docstring)."""
  key_valid_BxS: jax.Array  # bool
  q_offset: jax.Array | int = 0  # key slot of query 0
  q_segment_BxT: jax.Array | None = None  # int32; with k_segment_BxS
  k_segment_BxS: jax.Array | None = None

  def dense(self, T: int) -> jax.Array:
    """The [B, T, S] boolean mask (the dense path's)."""
    S = self.key_valid_BxS.shape[1]
    causal = jnp.arange(S)[None, :] <= (self.q_offset + jnp.arange(T))[:, None]
    allowed = causal[None] & self.key_valid_BxS[:, None, :]
    if self.q_segment_BxT is not None:
      allowed &= self.q_segment_BxT[:, :, None] == self.k_segment_BxS[:, None, :]
    return allowed


def dense(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, mask: Mask) -> jax.Array:
  dt = q_BxKxGxTxH.dtype
  T, H = q_BxKxGxTxH.shape[3:]
  mm = dict(preferred_element_type=jnp.float32)
  scores = jnp.einsum('bkgth,bksh->bkgts', q_BxKxGxTxH, k_BxKxSxH, **mm) * (1.0 / math.sqrt(H))
  scores = jnp.where(mask.dense(T)[:, None, None], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(dt)
  return jnp.einsum('bkgts,bksh->bkgth', probs, v_BxKxSxH, **mm).astype(dt)


# ------------------------------------------------------------------ blockwise


def _blocks(x, block, axis, fill):
  """x padded along `axis` to a multiple of `block` and split there into a
  leading block axis: [..., S, ...] -> [S/block, ..., block, ...]."""
  pad = (-x.shape[axis]) % block
  if pad:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    x = jnp.pad(x, widths, constant_values=fill)
  shape = x.shape[:axis] + (x.shape[axis] // block, block) + x.shape[axis + 1:]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def _allowed(valid_BxSb, slots_Sb, qslots_T, qseg_BxT, kseg_BxSb):
  """[B, 1, 1, T, Sb] for one key block."""
  a = valid_BxSb[:, None, :] & (slots_Sb[None, None, :] <= qslots_T[None, :, None])
  if qseg_BxT is not None:
    a &= qseg_BxT[:, :, None] == kseg_BxSb[:, None, :]
  return a[:, None, None]


def _scores(q, kj, scale):
  return jnp.einsum('bkgth,bksh->bkgts', q, kj, preferred_element_type=jnp.float32) * scale


def _key_blocks(k, v, mask: Mask, block):
  S = k.shape[2]
  seg = mask.k_segment_BxS
  return (_blocks(k, block, 2, 0), _blocks(v, block, 2, 0),
          _blocks(mask.key_valid_BxS, block, 1, False),
          _blocks(jnp.arange(S, dtype=jnp.int32), block, 0, S),
          None if seg is None else _blocks(seg, block, 1, -1))


def _recompute(body):
  """A scan body whose intermediates are never saved per block. Inside the
  model's layer scan, JAX's partial evaluation of these scans would
  otherwise compute each block's [T, block] mask ahead and keep all of them
  (memory quadratic in length); under jax.checkpoint only the body's inputs
  are kept."""
  return jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable,
                        prevent_cse=False)


def _forward(q, k, v, mask: Mask, block):
  T, H = q.shape[3:]
  scale = 1.0 / math.sqrt(H)
  qslots = mask.q_offset + jnp.arange(T, dtype=jnp.int32)

  def body(carry, xs):
    kj, vj, valid, slots, kseg = xs
    allowed = _allowed(valid, slots, qslots, mask.q_segment_BxT, kseg)
    return _forward_tile(carry, q, kj, vj, allowed, scale), None

  (m, l, acc), _ = jax.lax.scan(_recompute(body), _forward_init(q.shape),
                                _key_blocks(k, v, mask, block))
  return (acc / l[..., None]).astype(q.dtype), m + jnp.log(l)


def _forward_init(shape):
  """The online softmax's (max, sum, output) before any key block."""
  return (jnp.full(shape[:-1], NEG_INF, jnp.float32), jnp.zeros(shape[:-1], jnp.float32),
          jnp.zeros(shape, jnp.float32))


def _forward_tile(carry, q, kj, vj, allowed, scale):
  """One key block of the online softmax: the [T, block] tile."""
  m, l, acc = carry
  s = jnp.where(allowed, _scores(q, kj, scale), NEG_INF)
  m_new = jnp.maximum(m, s.max(axis=-1))
  p = jnp.exp(s - m_new[..., None])
  corr = jnp.exp(m - m_new)
  l = l * corr + p.sum(axis=-1)
  acc = acc * corr[..., None] + jnp.einsum('bkgts,bksh->bkgth', p.astype(q.dtype), vj,
                                           preferred_element_type=jnp.float32)
  return m_new, l, acc


def _backward_tile(q, kj, vj, allowed, lse, do, delta, scale):
  """One [T, block] tile of FlashAttention's backward (q, do in f32): its
  share of d q, and d k, d v of the key block."""
  mm = dict(preferred_element_type=jnp.float32)
  s = jnp.where(allowed, _scores(q, kj, scale), NEG_INF)
  p = jnp.exp(s - lse[..., None])
  dv = jnp.einsum('bkgts,bkgth->bksh', p, do, **mm)
  dp = jnp.einsum('bkgth,bksh->bkgts', do, vj.astype(jnp.float32), **mm)
  ds = jnp.where(allowed, p * (dp - delta[..., None]), 0.0) * scale
  dq = jnp.einsum('bkgts,bksh->bkgth', ds, kj.astype(jnp.float32), **mm)
  dk = jnp.einsum('bkgts,bkgth->bksh', ds, q, **mm)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blockwise(q, k, v, mask, block):
  return _forward(q, k, v, mask, block)[0]


def _blockwise_fwd(q, k, v, mask, block):
  out, lse = _forward(q, k, v, mask, block)
  return out, (q, k, v, mask, out, lse)


def _blockwise_bwd(block, res, d_out):
  """FlashAttention's backward, one key block at a time: p is recomputed
  from the saved log-sum-exp, d q accumulates, d k and d v are per block."""
  q, k, v, mask, out, lse = res
  B, K, G, T, H = q.shape
  S = k.shape[2]
  scale = 1.0 / math.sqrt(H)
  qslots = mask.q_offset + jnp.arange(T, dtype=jnp.int32)
  do = d_out.astype(jnp.float32)
  delta = jnp.sum(do * out.astype(jnp.float32), axis=-1)  # [B, K, G, T]
  q32 = q.astype(jnp.float32)

  def body(dq, xs):
    kj, vj, valid, slots, kseg = xs
    allowed = _allowed(valid, slots, qslots, mask.q_segment_BxT, kseg)
    dq_j, dk, dv = _backward_tile(q32, kj, vj, allowed, lse, do, delta, scale)
    return dq + dq_j, (dk, dv)

  dq, (dk, dv) = jax.lax.scan(_recompute(body), jnp.zeros((B, K, G, T, H), jnp.float32),
                              _key_blocks(k, v, mask, block))
  unblock = lambda x: jnp.moveaxis(x, 0, 2).reshape(B, K, -1, H)[:, :, :S]  # noqa: E731
  # The mask holds integers and booleans only: their cotangents are float0.
  no_grad = jax.tree.map(lambda x: np.zeros(jnp.shape(x), jax.dtypes.float0), mask)
  return (dq.astype(q.dtype), unblock(dk).astype(k.dtype), unblock(dv).astype(v.dtype), no_grad)


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


# Causal tiles only. Where the query offset is static, the queries are cut
# into chunks aligned to the key blocks (chunk c holds the queries in key
# slots [c·block, (c+1)·block), padded at both ends), and chunk c reads key
# blocks 0..c only: n(n+1)/2 tiles of n², the same tile size, two nested
# loops (the inner one's trip count grows with c) whatever the length.


def _chunks(q_offset: int, T: int, block: int):
  """(front padding, first chunk's key block, query chunks)."""
  front = q_offset % block
  return front, q_offset // block, -(-(front + T) // block)


def _query_chunks(x, mask: Mask, block, fill):
  """[B, K, G, T, ...] -> [chunks, B, K, G, block, ...] on the chunk grid."""
  front, _, nq = _chunks(mask.q_offset, x.shape[3], block)
  widths = [(0, 0)] * x.ndim
  widths[3] = (front, nq * block - front - x.shape[3])
  return _blocks(jnp.pad(x, widths, constant_values=fill), block, 3, fill)


def _chunk_masks(mask: Mask, T, block):
  """Per chunk: the queries' key slots [chunks, block] and segments
  [chunks, B, block] (padded queries: segment -2, which no key has)."""
  front, c0, nq = _chunks(mask.q_offset, T, block)
  qslots = (c0 * block + jnp.arange(nq * block, dtype=jnp.int32)).reshape(nq, block)
  qseg = mask.q_segment_BxT
  if qseg is not None:
    qseg = _blocks(jnp.pad(qseg, ((0, 0), (front, nq * block - front - T)),
                           constant_values=-2), block, 1, -2)
  return qslots, qseg


def _forward_causal(q, k, v, mask: Mask, block):
  B, K, G, T, H = q.shape
  scale = 1.0 / math.sqrt(H)
  _, c0, nq = _chunks(mask.q_offset, T, block)
  keys = _key_blocks(k, v, mask, block)
  n = keys[0].shape[0]
  qc = _query_chunks(q, mask, block, 0)
  qslots, qseg = _chunk_masks(mask, T, block)

  def chunk(i, outs):
    qi = qc[i]
    qseg_i = None if qseg is None else qseg[i]

    def body(j, carry):
      kj, vj, valid, slots, kseg = (None if x is None else x[j] for x in keys)
      allowed = _allowed(valid, slots, qslots[i], qseg_i, kseg)
      return _forward_tile(carry, qi, kj, vj, allowed, scale)

    m, l, acc = jax.lax.fori_loop(0, jnp.minimum(c0 + i + 1, n), _recompute(body),
                                  _forward_init(qi.shape))
    out, lse = outs
    return out.at[i].set((acc / l[..., None]).astype(q.dtype)), lse.at[i].set(m + jnp.log(l))

  outs = (jnp.zeros((nq, B, K, G, block, H), q.dtype), jnp.zeros((nq, B, K, G, block), jnp.float32))
  out, lse = jax.lax.fori_loop(0, nq, chunk, outs)
  return _unchunk(out, mask, T, block), _unchunk(lse, mask, T, block)


def _unchunk(x, mask: Mask, T, block):
  """[chunks, B, K, G, block, ...] -> [B, K, G, T, ...]."""
  front, _, _ = _chunks(mask.q_offset, T, block)
  x = jnp.moveaxis(x, 0, 3)
  return x.reshape(*x.shape[:3], -1, *x.shape[5:])[:, :, :, front:front + T]


# The static query offset travels outside the mask (`q_offset=None` in it):
# the mask's arrays are differentiable arguments with float0 cotangents.
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _causal(q, k, v, mask, offset, block):
  return _forward_causal(q, k, v, mask._replace(q_offset=offset), block)[0]


def _causal_fwd(q, k, v, mask, offset, block):
  out, lse = _forward_causal(q, k, v, mask._replace(q_offset=offset), block)
  return out, (q, k, v, mask, out, lse)


def _causal_bwd(offset, block, res, d_out):
  """The blockwise backward over the causal tiles: per query chunk, its key
  blocks; d q per chunk, d k and d v accumulated per key block."""
  q, k, v, mask, out, lse = res
  no_grad = jax.tree.map(lambda x: np.zeros(jnp.shape(x), jax.dtypes.float0), mask)
  mask = mask._replace(q_offset=offset)
  B, K, G, T, H = q.shape
  S = k.shape[2]
  scale = 1.0 / math.sqrt(H)
  _, c0, nq = _chunks(mask.q_offset, T, block)
  keys = _key_blocks(k, v, mask, block)
  n = keys[0].shape[0]
  do = d_out.astype(jnp.float32)
  delta = jnp.sum(do * out.astype(jnp.float32), axis=-1)
  qc, doc = (_query_chunks(x, mask, block, 0) for x in (q.astype(jnp.float32), do))
  deltac, lsec = (_query_chunks(x, mask, block, 0) for x in (delta, lse))
  qslots, qseg = _chunk_masks(mask, T, block)

  def chunk(i, grads):
    qi, doi, lsei, deltai = qc[i], doc[i], lsec[i], deltac[i]
    qseg_i = None if qseg is None else qseg[i]

    def body(j, carry):
      dqi, dk, dv = carry
      kj, vj, valid, slots, kseg = (None if x is None else x[j] for x in keys)
      allowed = _allowed(valid, slots, qslots[i], qseg_i, kseg)
      dq_j, dk_j, dv_j = _backward_tile(qi, kj, vj, allowed, lsei, doi, deltai, scale)
      return dqi + dq_j, dk.at[j].add(dk_j), dv.at[j].add(dv_j)

    dq, dk, dv = grads
    dqi, dk, dv = jax.lax.fori_loop(0, jnp.minimum(c0 + i + 1, n), _recompute(body),
                                    (jnp.zeros_like(qi), dk, dv))
    return dq.at[i].set(dqi), dk, dv

  zeros = jnp.zeros((n, B, K, block, H), jnp.float32)
  dq, dk, dv = jax.lax.fori_loop(0, nq, chunk, (jnp.zeros_like(qc), zeros, zeros))
  unblock = lambda x: jnp.moveaxis(x, 0, 2).reshape(B, K, -1, H)[:, :, :S]  # noqa: E731
  return (_unchunk(dq, mask, T, block).astype(q.dtype), unblock(dk).astype(k.dtype),
          unblock(dv).astype(v.dtype), no_grad)


_causal.defvjp(_causal_fwd, _causal_bwd)


def balanced_block(S: int, block: int) -> int:
  """The key block for S keys: as few blocks as `block` allows, of equal
  size (a multiple of 8), so the last is not mostly padding (544 keys: two
  of 272, not 512 + 32 padded to 512)."""
  n = -(-S // block)
  return min(block, -(-(-(-S // n)) // 8) * 8)


def blockwise(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, mask: Mask, block: int = BLOCK,
              causal_tiles: bool = True) -> jax.Array:
  block = balanced_block(k_BxKxSxH.shape[2], block)
  if isinstance(mask.q_offset, int) and mask.q_offset < 0:
    raise ValueError(f'attention: query offset {mask.q_offset}; the first query is at a key '
                     'slot >= 0')
  if causal_tiles and isinstance(mask.q_offset, int):
    return _causal(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, mask._replace(q_offset=None),
                   mask.q_offset, block)
  mask = mask._replace(q_offset=jnp.asarray(mask.q_offset, jnp.int32))
  return _blockwise(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, mask, block)


# ------------------------------------------------------------------- decode

# On CPU 64 rather than 128: 2.6 s instead of 3.1 s for the 512-token
# rollout of benchmarks/grpo_step.py (block buffers; 32 and 48 were no
# faster); the stacked decode there reads the block buffers' blocks. On TPU
# and GPU 128: TPU tiles an array's minor axis (K's slots) by 128, and
# slicing 64 slots out of it made XLA keep relaid-out copies of the whole
# cache (the paper preset with decode slots: 61.78 GiB a chip instead of
# 47.57). Caches are whole multiples of both (rollout.cache_slots).
DECODE_BLOCK = 64
ACCEL_DECODE_BLOCK = 128


def _decode_init(q_BxKxGxTxH):
  B, K, G, T, H = q_BxKxGxTxH.shape
  return (jnp.full((B, K, G, T), NEG_INF, jnp.float32), jnp.zeros((B, K, G, T), jnp.float32),
          jnp.zeros((B, K, G, T, H), jnp.float32))


def _decode_block(carry, q_BxKxGxTxH, kj, vj, valid, slots, qslots):
  """The online softmax's update by one key block (k [B, K, H, Sb], v [B,
  K, Sb, H]), shared by both decode forms so that they agree bit for bit."""
  m, l, acc = carry
  scale = 1.0 / math.sqrt(q_BxKxGxTxH.shape[-1])
  s = jnp.einsum('bkgth,bkhs->bkgts', q_BxKxGxTxH, kj,
                 preferred_element_type=jnp.float32) * scale
  s = jnp.where(_allowed(valid, slots, qslots, None, None), s, NEG_INF)
  m_new = jnp.maximum(m, s.max(axis=-1))
  p = jnp.exp(s - m_new[..., None])
  corr = jnp.exp(m - m_new)
  acc = acc * corr[..., None] + jnp.einsum('bkgts,bksh->bkgth', p.astype(q_BxKxGxTxH.dtype),
                                           vj, preferred_element_type=jnp.float32)
  return m_new, l * corr + p.sum(axis=-1), acc


def decode(q_BxKxGxTxH, k_all, v_all, layer, key_valid_BxS, q_offset,
           block: int | None = None) -> jax.Array:
  """`_decode` in blocks of DECODE_BLOCK slots on CPU and ACCEL_DECODE_BLOCK
  elsewhere (or of `block`), chosen when the computation is lowered."""
  if block is not None:
    return _decode(q_BxKxGxTxH, k_all, v_all, layer, key_valid_BxS, q_offset, block)
  by = lambda b: functools.partial(_decode, block=b)  # noqa: E731
  return jax.lax.platform_dependent(q_BxKxGxTxH, k_all, v_all, layer, key_valid_BxS, q_offset,
                                    cpu=by(DECODE_BLOCK), default=by(ACCEL_DECODE_BLOCK))


def _decode(q_BxKxGxTxH, k_all, v_all, layer, key_valid_BxS, q_offset, block: int) -> jax.Array:
  """A decode step over a KV cache that reads only the filled slots: key
  blocks up to the last query's slot (a dynamic trip count), each sliced from
  the stacked cache k_all [L, B, K, H, S] / v_all [L, B, K, S, H] at `layer`
  (the decoder's layout: q·Kᵀ is a plain product there), with an online
  softmax. The slots past the last query (the rest of the cache) are never
  read, so a step costs what has been generated so far, not P + T. Same
  mask semantics as `Mask(key_valid_BxS, q_offset)` for queries whose own
  slot is valid (a decode step's always is; a row with no allowed key would
  average the blocks read, not all S); no gradient is needed. With S a
  multiple of `block` the blocks are those of `decode_blocks`, and so are
  the results, bit for bit: a block with no allowed key leaves the running
  sums exactly as they were."""
  B, K, G, T, H = q_BxKxGxTxH.shape
  S = k_all.shape[4]
  block = min(block, S)
  qslots = q_offset + jnp.arange(T, dtype=jnp.int32)
  n_blocks = (q_offset + T + block - 1) // block  # blocks holding slots <= the last query

  def body(j, carry):
    nominal = j * block
    start = jnp.minimum(nominal, S - block)  # the last block may overlap the one before
    kj = jax.lax.dynamic_slice(k_all, (layer, 0, 0, 0, start), (1, B, K, H, block))[0]
    vj = jax.lax.dynamic_slice(v_all, (layer, 0, 0, start, 0), (1, B, K, block, H))[0]
    valid = jax.lax.dynamic_slice(key_valid_BxS, (0, start), (B, block))
    slots = start + jnp.arange(block, dtype=jnp.int32)
    valid &= slots >= nominal  # each slot counted once
    return _decode_block(carry, q_BxKxGxTxH, kj, vj, valid, slots, qslots)

  _, l, acc = jax.lax.fori_loop(0, n_blocks, body, _decode_init(q_BxKxGxTxH))
  return (acc / l[..., None]).astype(q_BxKxGxTxH.dtype)


def decode_blocks(q_BxKxGxTxH, k_blocks, v_blocks, key_valid_BxS, q_offset) -> jax.Array:
  """`decode` over a cache held as separate block buffers (k_blocks[j] [B,
  K, H, Sb], v_blocks[j] [B, K, Sb, H]: slots [j·Sb, (j+1)·Sb)), all of them
  read. On XLA's CPU backend every slice of a larger array is a copy, so a
  loop over the blocks of one cache array spends more time copying blocks
  out than in the dots; separate buffers go to the dots as they are."""
  T = q_BxKxGxTxH.shape[3]
  Sb = k_blocks[0].shape[3]
  qslots = q_offset + jnp.arange(T, dtype=jnp.int32)
  carry = _decode_init(q_BxKxGxTxH)
  for j, (kj, vj) in enumerate(zip(k_blocks, v_blocks)):
    slots = j * Sb + jnp.arange(Sb, dtype=jnp.int32)
    carry = _decode_block(carry, q_BxKxGxTxH, kj, vj, key_valid_BxS[:, j * Sb:(j + 1) * Sb],
                          slots, qslots)
  _, l, acc = carry
  return (acc / l[..., None]).astype(q_BxKxGxTxH.dtype)


# --------------------------------------------------------------- dispatch


def cudnn(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, mask: Mask) -> jax.Array:
  """jax.nn.dot_product_attention with cuDNN's fused kernel (GPU). The mask
  goes in as a boolean [B, 1, T, S]: left padding is not expressible as the
  sequence lengths cuDNN takes instead."""
  B, K, G, T, H = q_BxKxGxTxH.shape
  q = jnp.transpose(q_BxKxGxTxH.reshape(B, K * G, T, H), (0, 2, 1, 3))  # [B, T, N, H]
  k = jnp.transpose(k_BxKxSxH, (0, 2, 1, 3))
  v = jnp.transpose(v_BxKxSxH, (0, 2, 1, 3))
  out = jax.nn.dot_product_attention(q, k, v, mask=mask.dense(T)[:, None],
                                     implementation='cudnn')
  return jnp.transpose(out, (0, 2, 1, 3)).reshape(B, K, G, T, H)


def attention(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, mask: Mask, impl: str = 'auto',
              block: int = BLOCK) -> jax.Array:
  if impl not in IMPLS:
    raise ValueError(f'model.attention: unknown {impl!r}; known: {IMPLS}')
  S = k_BxKxSxH.shape[2]
  args = (q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, mask)
  if impl == 'dense' or (impl == 'auto' and S <= block):
    return dense(*args)
  if impl == 'blockwise':
    return blockwise(*args, block=block)
  if impl == 'cudnn':
    return cudnn(*args)
  fallback = functools.partial(blockwise, block=block)
  offset = mask.q_offset
  static = isinstance(offset, (int, np.integer))  # else a traced cache index (a prefill)
  if impl == 'triton':
    from r1jax.kernels import attention_gpu  # pylint: disable=g-import-not-at-top
    return attention_gpu.flash(*args) if static else fallback(*args)
  from r1jax.kernels import attention_tpu  # pylint: disable=g-import-not-at-top
  if impl == 'splash':
    return attention_tpu.splash(*args)
  if not static:  # no static splash mask
    return fallback(*args)
  offset = int(offset)
  # platform_dependent traces its operands, so the static offset is bound here.
  with_offset = lambda f: lambda q, k, v, m: f(q, k, v, m._replace(q_offset=offset))  # noqa: E731
  return jax.lax.platform_dependent(*args, tpu=with_offset(attention_tpu.splash),
                                    default=with_offset(fallback))

"""Splash attention (the maintained Pallas TPU kernel of
jax.experimental.pallas.ops.tpu.splash_attention) for `attention.Mask`.

Why splash and not a library (tokamax): splash ships with jax itself (no
extra wheel on the pod, the same version as the compiler), and has what the
decoder needs: a lazily evaluated causal mask with an offset (a continuation
after a shared prompt), segment ids (padding and packed rows) and a fused
backward.

Per device, under `jax.shard_map` over the active mesh (batch over the data
axes, kv heads over 'tensor' where they divide); inside, the MQA kernel is
vmapped over batch rows and kv heads, each call taking the G query heads of
one kv head (GQA). Padding is expressed as segment ids: a valid key or
query has segment 1 (or its packed segment id + 1), padding 0, and a padded
query always has a padded key at or before it, so no row is fully masked.
T and S are padded up to a multiple of the block size.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

BLOCK = 512  # q and kv blocks (multiples of 128); smaller sequences use their padded length


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _kernel(T: int, S: int, offset: int, G: int, block_q: int, block_kv: int,
            interpret: bool):
  mask = sm.MultiHeadMask([sm.CausalMask((T, S), offset=offset)] * G)
  sizes = sk.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                        block_q_dkv=block_q, block_kv_dkv=block_kv,
                        block_kv_dkv_compute=block_kv, block_q_dq=block_q, block_kv_dq=block_kv)
  return sk.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _segments(valid, segment):
  ids = jnp.ones(valid.shape, jnp.int32) if segment is None else segment.astype(jnp.int32) + 1
  return jnp.where(valid, ids, 0)


def _local(q, k, v, q_seg, kv_seg, offset: int, interpret: bool):
  """One device: q [B, K, G, T, H], k/v [B, K, S, H], segments [B, T] / [B, S]."""
  B, K, G, T, H = q.shape
  S = k.shape[2]
  bq = min(BLOCK, _round_up(T, 128))
  bkv = min(BLOCK, _round_up(S, 128))
  Tp, Sp = _round_up(T, bq), _round_up(S, bkv)
  q = jnp.pad(q, ((0, 0), (0, 0), (0, 0), (0, Tp - T), (0, 0)))
  k = jnp.pad(k, ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
  v = jnp.pad(v, ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
  q_seg = jnp.pad(q_seg, ((0, 0), (0, Tp - T)))
  kv_seg = jnp.pad(kv_seg, ((0, 0), (0, Sp - S)))
  # Built per trace (not cached: the kernel holds arrays of the trace that
  # made it; jax.lax.platform_dependent traces this branch on every platform).
  kernel = _kernel(Tp, Sp, offset, G, bq, bkv, interpret)
  scale = 1.0 / np.sqrt(H)

  def one(q_GxTxH, k_SxH, v_SxH, segments):
    return kernel(q_GxTxH * scale, k_SxH, v_SxH, segment_ids=segments)

  def row(q_KxGxTxH, k_KxSxH, v_KxSxH, qs, ks):
    segments = sk.SegmentIds(q=qs, kv=ks)
    return jax.vmap(one, in_axes=(0, 0, 0, None))(q_KxGxTxH, k_KxSxH, v_KxSxH, segments)

  out = jax.vmap(row)(q.astype(k.dtype), k, v, q_seg, kv_seg)
  return out[:, :, :, :T].astype(q.dtype)


def splash(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, mask, interpret: bool = False):
  """`attention.Mask` semantics; q_offset must be a Python int (a static
  mask). The query's own validity is the key validity of its slot when the
  keys are its own (S == T), else every query is valid (a continuation)."""
  from r1jax import sharding as shd  # pylint: disable=g-import-not-at-top
  offset = mask.q_offset
  if not isinstance(offset, (int, np.integer)):
    raise ValueError('splash attention needs a static query offset')
  B, K, G, T, H = q_BxKxGxTxH.shape
  S = k_BxKxSxH.shape[2]
  q_valid = (mask.key_valid_BxS[:, offset:offset + T] if offset + T <= S
             else jnp.ones((B, T), bool))
  q_seg = _segments(q_valid, mask.q_segment_BxT)
  kv_seg = _segments(mask.key_valid_BxS, mask.k_segment_BxS)
  local = functools.partial(_local, offset=int(offset), interpret=interpret)
  return shd.per_device_attention(local, q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, q_seg, kv_seg)

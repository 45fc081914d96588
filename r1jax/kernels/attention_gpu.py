"""Flash attention on GPU (the Pallas Triton kernel that ships with jax,
jax.experimental.pallas.ops.gpu.attention.mha) for `attention.Mask`.

Why this kernel rather than cuDNN's (`model.attention='cudnn'`): it takes
segment ids, so left padding and packed rows need no [T, S] mask (cuDNN
through jax.nn.dot_product_attention expresses padding only as right-aligned
sequence lengths, so `attention.cudnn` passes a dense mask), it runs in f32
as well as bf16 (cuDNN's takes fp16/bf16 only), it has a fused backward,
and it runs interpreted on CPU, where its values are tested against the
dense path. Not yet run on a GPU (none was lent). Two things to know before
it is: Pallas lowers f32 dots at full IEEE precision (no tensor cores), so
bf16 is the practical dtype on a GPU; and in bf16 its backward rounds more
than blockwise's (the kernel keeps its softmax-gradient term and the
per-query-head dk/dv in bf16, and the G heads of a kv head are summed in
bf16).

The kernel's mask is causal over one index space shared by queries and keys
(query i sees keys <= i) with one segment-id array for both. So each query
is placed at its own key slot, q_offset + t, in a query array as long as
the keys; the other slots get zero queries whose outputs are dropped (the
continuation after a P-token prompt computes P extra rows: a few percent at
R1's lengths). A slot's segment is its key's: a valid key has segment 1 (or
its packed segment id + 1), padding 0, so a real query never sees padding
and a padding slot's query sees at least its own key (no row is fully
masked). A query's segment is the segment of its own slot's key, which holds
for every mask the decoder builds (packed rows: one segment array for both;
a continuation: every continuation key is valid); a query whose own slot is
padding sees only padding (dense would let it see earlier valid keys), which
changes nothing downstream: such positions are padding themselves, read by
no valid query and masked out of every loss. Keys are padded to a multiple
of 128, and GQA repeats each kv head for its G query heads (memory stays
linear in length). The forward's blocks shrink with the row size (64 for
f32 at head_dim 128) so that a block's q, k, v and accumulator stay within a
GPU's shared memory; the backward's are the kernel's 32.

Per device, under `jax.shard_map` over the active mesh as splash is
(attention_tpu.py): batch over the data axes, kv heads over 'tensor'.
"""
import functools

import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.gpu import attention as gpu_attention

BLOCK = 128  # keys are padded to a multiple of this (the largest forward block)


def block_sizes(dtype, head_dim: int) -> gpu_attention.BlockSizes:
  """Forward blocks of 128 rows up to 256 bytes a row (bf16 at head_dim
  128, f32 at 64), halved for each doubling beyond (f32 at 128: 64), so that
  q, the double-buffered k and v blocks and the f32 accumulator stay near
  100 KiB of shared memory; the backward's blocks are the kernel's 32."""
  row = jnp.dtype(dtype).itemsize * max(16, 1 << (head_dim - 1).bit_length())
  block = max(16, BLOCK * 256 // max(row, 256))
  return gpu_attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=32,
                                  block_kv_dkv=32, block_q_dq=32, block_kv_dq=32)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _local(q, k, v, segments, offset: int, interpret: bool):
  """One device: q [B, K, G, T, H], k/v [B, K, S, H], segments [B, S]."""
  B, K, G, T, H = q.shape
  S = k.shape[2]
  Sp = _round_up(S, BLOCK)
  # [B, S', K·G, H]: query t at its key slot, head k·G + g (kv head k).
  q_slots = jnp.pad(jnp.moveaxis(q.reshape(B, K * G, T, H), 1, 2).astype(k.dtype),
                    ((0, 0), (offset, Sp - offset - T), (0, 0), (0, 0)))
  kv = lambda x: jnp.repeat(jnp.pad(jnp.moveaxis(x, 1, 2), ((0, 0), (0, Sp - S), (0, 0), (0, 0))),  # noqa: E731
                            G, axis=2)
  segments = jnp.pad(segments, ((0, 0), (0, Sp - S)))
  out = gpu_attention.mha(q_slots, kv(k), kv(v), segments, sm_scale=1.0 / np.sqrt(H),
                          causal=True, block_sizes=block_sizes(k.dtype, H), interpret=interpret)
  out = out[:, offset:offset + T]  # [B, T, K·G, H]
  return jnp.moveaxis(out, 2, 1).reshape(B, K, G, T, H).astype(q.dtype)


def flash(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, mask, interpret: bool = False):
  """`attention.Mask` semantics (see the module doc for the query's
  segment); q_offset must be a Python int with q_offset + T <= S."""
  from r1jax import sharding as shd  # pylint: disable=g-import-not-at-top
  offset = mask.q_offset
  if not isinstance(offset, (int, np.integer)):
    raise ValueError('GPU flash attention needs a static query offset')
  T, S = q_BxKxGxTxH.shape[3], k_BxKxSxH.shape[2]
  if not 0 <= offset <= S - T:
    raise ValueError(f'GPU flash attention: queries at slots {offset}..{offset + T - 1} '
                     f'lie outside the {S} keys')
  ids = (jnp.ones(mask.key_valid_BxS.shape, jnp.int32) if mask.k_segment_BxS is None
         else mask.k_segment_BxS.astype(jnp.int32) + 1)
  segments = jnp.where(mask.key_valid_BxS, ids, 0)
  local = functools.partial(_local, offset=int(offset), interpret=interpret)
  return shd.per_device_attention(local, q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, segments)

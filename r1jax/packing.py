"""Sequence packing for the teacher-forced passes (reference, old-policy and
update forwards).

Sample n of prompt b is the sequence  prompt_b (its P_b real tokens) ++
completion_n[:len_n - 1]  of ℓ_n = P_b + len_n - 1 tokens: the last prompt
position predicts completion token 0, completion position t predicts token
t + 1, and the last completion token is never an input. Sequences are packed
best-fit decreasing (R1's packing: longest first, each into the fullest row
that still holds it) into rows of L = P + T - 1 slots, so a row holds at most
one sequence of the longest possible length and many short ones. Each token
keeps its own position (RoPE restarts per sequence) and a segment id
(sample + 1; 0 marks empty slots), and attention is causal within a segment
(kernels/attention.py's q_segment / k_segment).

  rows_RxL [R, L]: R = N rows at most (every sequence alone); only the
  first `rows` hold anything, and the passes run over micro-batches of m
  rows, as many as are in use (a dynamic trip count), so their FLOPs follow
  the real token count Σ ℓ_n, not N × (P + T).

With `shards` S > 1 (the batch shards of a mesh) each shard's N/S sequences
(those of its B/S prompts: the batch is split over devices in contiguous
runs) are packed into its own R/S rows, shard-major, so every shard holds the
same number of rows and no sequence moves to another device; the packing,
`to_rows` and `from_rows` are batched over the shards (vmap), which XLA
partitions without communication.

Per-token values of the completions ([N, T]: log-probs, advantages, masks)
move between the two layouts with `to_rows` / `from_rows`: completion token t
of sample n sits at the slot that predicts it, row_n, offset_n + P_b - 1 + t.
The prompt is computed once per sample rather than once per group: cheaper
than the padded layout whenever completions vary in length more than the
G-1 extra prompt copies cost (benchmarks/packing.py measures both).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Rows(NamedTuple):
  """N sequences packed into R rows of L slots."""
  tokens_RxL: jax.Array  # int32 inputs (0 in empty slots)
  targets_RxL: jax.Array  # int32: the token each slot predicts
  positions_RxL: jax.Array  # int32: position within its sequence
  segments_RxL: jax.Array  # int32: sample + 1; 0 in empty slots
  slot_NxT: jax.Array  # int32: index (row·L + slot) within its shard's rows predicting token t of sample n; R/S·L past the end
  rows: jax.Array  # int32 [S]: rows in use on each shard (a prefix of its R/S)


def best_fit(lengths_N: jax.Array, row_len: int, num_rows: int
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Best-fit decreasing: sequences in order of decreasing length, each into
  the row with the least room that still holds it (a fresh row if none).
  Returns (row [N], offset [N], rows used). Every length must be ≤ row_len
  and num_rows ≥ N guarantees room; used rows are a prefix 0..rows-1 (a
  fresh row is always the lowest-numbered empty one)."""
  order = jnp.argsort(-lengths_N, stable=True)

  def place(room_R, n):
    need = lengths_N[n]
    room = jnp.where(room_R >= need, room_R, row_len + 1)
    r = jnp.argmin(room)  # the tightest fit; ties: the lowest row
    return room_R.at[r].add(-need), (r, row_len - room_R[r])

  room, (row_sorted, offset_sorted) = jax.lax.scan(
      place, jnp.full((num_rows,), row_len, jnp.int32), order)
  row = jnp.zeros_like(row_sorted).at[order].set(row_sorted)
  offset = jnp.zeros_like(offset_sorted).at[order].set(offset_sorted)
  return row, offset, jnp.sum(room < row_len).astype(jnp.int32)


def pack(prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array, tokens_NxT: jax.Array,
         mask_NxT: jax.Array, num_rows: int, shards: int = 1) -> Rows:
  """Packs the N = B·G sequences (row n continues prompt n // G) into
  `num_rows` (≥ N) rows of P + T - 1 slots, each of the `shards`
  contiguous parts of the batch into its own num_rows/shards rows;
  `mask_NxT` marks each completion's tokens (a prefix of its row, at least
  one token). Segment ids are global (sample + 1)."""
  S, N = shards, tokens_NxT.shape[0]
  part = lambda x: x.reshape(S, x.shape[0] // S, *x.shape[1:])  # noqa: E731
  rows = jax.vmap(_pack_one, (0, 0, 0, 0, None))(
      part(prompt_BxP), part(prompt_mask_BxP), part(tokens_NxT), part(mask_NxT), num_rows // S)
  first = (jnp.arange(S, dtype=jnp.int32) * (N // S))[:, None, None]
  segments = jnp.where(rows.segments_RxL > 0, rows.segments_RxL + first, 0)
  whole = lambda x: x.reshape(num_rows, x.shape[-1])  # noqa: E731
  return Rows(whole(rows.tokens_RxL), whole(rows.targets_RxL), whole(rows.positions_RxL),
              whole(segments), rows.slot_NxT.reshape(N, -1), rows.rows)


def _pack_one(prompt_BxP, prompt_mask_BxP, tokens_NxT, mask_NxT, num_rows) -> Rows:
  """`pack` for one shard (segment ids from 1, indices within its rows)."""
  B, P = prompt_BxP.shape
  N, T = tokens_NxT.shape
  G, L = N // B, P + T - 1
  prompt_len_N = jnp.repeat(prompt_mask_BxP.sum(axis=1), G).astype(jnp.int32)
  completion_len_N = jnp.maximum(mask_NxT.sum(axis=1), 1).astype(jnp.int32)
  length_N = prompt_len_N + completion_len_N - 1
  row_N, offset_N, rows = best_fit(length_N, L, num_rows)

  # The sequences left-aligned: the prompts are left-padded, so sequence n
  # starts at column P - P_b of [prompt ++ completion].
  seq_NxS = jnp.concatenate([jnp.repeat(prompt_BxP, G, axis=0), tokens_NxT], axis=1)
  j = jnp.arange(L + 1, dtype=jnp.int32)
  col = jnp.minimum(P - prompt_len_N[:, None] + j[None], P + T - 1)
  full = jnp.take_along_axis(seq_NxS, col, axis=1)  # [N, L + 1]
  inside = j[None, :L] < length_N[:, None]
  flat = jnp.where(inside, row_N[:, None] * L + offset_N[:, None] + j[None, :L], num_rows * L)

  def scatter(values_NxL):
    out = jnp.zeros((num_rows * L,), values_NxL.dtype)
    return out.at[flat.ravel()].set(values_NxL.ravel(), mode='drop').reshape(num_rows, L)

  t = jnp.arange(T, dtype=jnp.int32)
  slot = row_N[:, None] * L + offset_N[:, None] + prompt_len_N[:, None] - 1 + t[None]
  slot = jnp.where(t[None] < completion_len_N[:, None], slot, num_rows * L)
  return Rows(tokens_RxL=scatter(full[:, :L]), targets_RxL=scatter(full[:, 1:]),
              positions_RxL=scatter(jnp.broadcast_to(j[:L], (N, L))),
              segments_RxL=scatter(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=jnp.int32)[:, None],
                                                    (N, L))),
              slot_NxT=slot, rows=rows)


def to_rows(x_NxT: jax.Array, rows: Rows, fill=0) -> jax.Array:
  """Per-token completion values [N, T] into the packed layout [R, L] (each
  at the slot predicting its token; `fill` elsewhere)."""
  R, L = rows.tokens_RxL.shape
  S = rows.rows.shape[0]

  def one(x, slot):
    out = jnp.full((R // S * L,), fill, x.dtype)
    return out.at[slot.ravel()].set(x.ravel(), mode='drop')

  part = lambda x: x.reshape(S, x.shape[0] // S, *x.shape[1:])  # noqa: E731
  return jax.vmap(one)(part(x_NxT), part(rows.slot_NxT)).reshape(R, L)


def from_rows(x_RxL: jax.Array, rows: Rows) -> jax.Array:
  """The packed layout [R, L] back to [N, T] (0 past each completion's end)."""
  S = rows.rows.shape[0]
  N, T = rows.slot_NxT.shape
  one = lambda x, slot: x.ravel().at[slot].get(mode='fill', fill_value=0)  # noqa: E731
  return jax.vmap(one)(x_RxL.reshape(S, -1), rows.slot_NxT.reshape(S, N // S, T)).reshape(N, T)

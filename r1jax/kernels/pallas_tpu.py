"""Pallas TPU (Mosaic) kernels for log p(target) = log softmax(hidden · weightᵀ)[target].

Three kernels, none of which writes the [N, V] logits to HBM:

  forward  grid (token blocks ‖, vocab blocks →). Per token block, VMEM
           scratch holds the running max m, Σ e^(l-m), the target logit and,
           for the entropy, Σ e^(l-m)·l (all f32); the last vocab block writes
           logp = target logit - (m + log s), the log-sum-exp and the entropy.
  d hidden grid (token blocks ‖, vocab blocks →): recomputes each logits tile,
           d logits = g · (onehot(target) - softmax), and accumulates
           d logits · W in a [bn, D] f32 scratch written once per token block.
  d weight grid (vocab blocks ‖, token blocks →): the same in the transposed
           orientation (logitsᵀ = W · hᵀ, so d logitsᵀ · h needs no transpose),
           accumulating a [bv, D] f32 scratch written once per vocab block.

(‖ "parallel": megacore chips split it over their two TensorCores; → "arbitrary":
sequential, the axis the scratch accumulates over.)

Layouts. Per-token vectors (targets, lse, g, the outputs) travel lane-replicated
as [N, 128] (token = row) for the kernels whose tiles are [tokens, vocab], and
sublane-replicated as [8, N] for the d weight kernel, whose tiles are
[vocab, tokens]; this is the layout of the row statistics in JAX's own TPU flash
attention. TPU HBM tiles f32 arrays by (8, 128), so an [N, 1] array would take
the same space as [N, 128]. N is padded to the token block (a copy of hidden,
cheap next to the kernel); the weight is never padded: the last vocab block is
partial, its rows past V hold unspecified data, and columns ≥ V are masked with
-inf (forward) or 0 (backward) using the block index and the true V; the d hidden
kernel also zeroes those weight rows in the last block, since 0 · NaN = NaN.

Block sizes and VMEM. A token block streams the whole weight once per kernel,
so a forward step does 2·bn·bv·D flops per bv·D weight bytes loaded: with bf16
that is bn flops per byte, and bn = 512 keeps v5e (197 TF/s over 0.82 TB/s ≈
240) and v5p (≈190) MXU-bound and v6e (≈560) close to it. `_vmem_bytes` counts
each kernel's double-buffered in/out blocks, scratch and ~4 live [bn, bv] f32
temporaries; `plan` starts from TOKEN_BLOCK × VOCAB_BLOCK (512 × 1024) and halves
a block until that estimate is under VMEM_BUDGET (24 MiB), passing
VMEM_LIMIT (32 MiB) to Mosaic: v5e's default scoped limit is 16 MiB, v6e's
32 MiB; physical VMEM is 64 MiB (v5p, v7) to 128 MiB (v5e, v6e). The d hidden
and d weight accumulations loop over D in 512-column slices, so their f32 dot
results are [bn, 512] rather than [bn, D]. For bf16 the plans are
  D 1536: forward 512 × 1024 (20 MiB), d hidden 512 × 512, d weight 512 × 512;
  D 4096: forward 512 × 512 (23 MiB), d hidden 256 × 512, d weight 512 × 256.
These are estimates checked by lowering, not by a TPU compile (none here).
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from r1jax.kernels import manual

TOKEN_BLOCK = 512
VOCAB_BLOCK = 1024
VMEM_BUDGET = 24 * 2**20
VMEM_LIMIT = 32 * 2**20
LANES, SUBLANES = 128, 8
D_SLICE = 512  # columns per accumulation dot in the backward kernels
_NT = (((1,), (1,)), ((), ()))  # contract the last dims: a · bᵀ


def _round_up(x, m):
  return -(-x // m) * m


def _d_slices(d):
  """Static [start, stop) column slices of D for the backward accumulation;
  lane-aligned (multiples of 128) or, for odd D, the whole width."""
  if d % LANES:
    return [(0, d)]
  return [(a, min(a + D_SLICE, d)) for a in range(0, d, D_SLICE)]


def _vmem_bytes(kernel, bn, bv, d, itemsize):
  """Estimated VMEM of one kernel (see the module docstring)."""
  blocks = 2 * (bn + bv) * d * itemsize  # double-buffered hidden and weight blocks
  temps = 4 * bn * bv * 4  # logits, exp, mask, d logits
  vec = bn * LANES * 4  # one lane-replicated per-token block
  if kernel == 'forward':  # targets in, 3 outputs, 4 scratch vectors
    return blocks + temps + 2 * vec + 2 * 3 * vec + 4 * vec
  rows = bn if kernel == 'dhidden' else bv  # the accumulated [rows, D] block
  vecs = 2 * 3 * (vec if kernel == 'dhidden' else SUBLANES * bn * 4)
  out_and_acc = 2 * rows * d * itemsize + rows * d * 4
  return blocks + temps + vecs + out_and_acc + rows * min(d, D_SLICE) * 4


def _fit(kernel, bn, bv, d, itemsize):
  """Halves the larger block (on a tie, the one the kernel keeps resident: tokens
  for forward and d hidden, vocabulary for d weight) until the VMEM estimate is
  within budget. Halving only multiples of 256 keeps blocks multiples of 128 that
  divide the padded N."""
  resident_is_tokens = kernel != 'dweight'
  while _vmem_bytes(kernel, bn, bv, d, itemsize) > VMEM_BUDGET:
    tokens_first = bn > bv or (bn == bv and resident_is_tokens)
    if tokens_first and bn % 256 == 0:
      bn //= 2
    elif bv % 256 == 0:
      bv //= 2
    elif bn % 256 == 0:
      bn //= 2
    else:
      break  # nothing left to halve; Mosaic will report the overflow
  return bn, bv


def plan(n, v, d, itemsize, token_block=TOKEN_BLOCK, vocab_block=VOCAB_BLOCK,
         interpret=False):
  """{kernel: (token block, vocab block)} and the padded N."""
  if vocab_block % LANES or (not interpret and token_block % LANES):
    raise ValueError(f'pallas blocks must be multiples of {LANES} (vocab_block always, '
                     f'token_block on TPU): got {token_block} × {vocab_block}')
  bn = min(token_block, _round_up(n, SUBLANES if interpret else LANES))
  bv = min(vocab_block, _round_up(v, LANES))
  blocks = {k: _fit(k, bn, bv, d, itemsize) for k in ('forward', 'dhidden', 'dweight')}
  return blocks, _round_up(n, bn)


def _params(semantics):
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=VMEM_LIMIT)


def _lanes(x_N):
  return jnp.broadcast_to(x_N[:, None], (x_N.shape[0], LANES))


def _sublanes(x_N):
  return jnp.broadcast_to(x_N[None, :], (SUBLANES, x_N.shape[0]))


def _tile(x, bv):
  """[bn, 128] lane-replicated → [bn, bv]."""
  return jnp.tile(x, (1, bv // LANES))


# ---------------------------------------------------------------- forward


def _forward_kernel(t_ref, h_ref, w_ref, *refs, vocab, with_entropy):
  if with_entropy:
    logp_ref, lse_ref, ent_ref, m_ref, s_ref, x_ref, u_ref = refs
  else:
    (logp_ref, lse_ref, m_ref, s_ref, x_ref), ent_ref, u_ref = refs, None, None
  j = pl.program_id(1)
  bn, bv = h_ref.shape[0], w_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    for r in (s_ref, x_ref, u_ref):
      if r is not None:
        r[...] = jnp.zeros(r.shape, jnp.float32)

  logits = jax.lax.dot_general(h_ref[...], w_ref[...], _NT, preferred_element_type=jnp.float32)
  col = j * bv + jax.lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
  ragged = vocab % bv != 0
  if ragged:  # columns past V hold whatever the partial weight block held
    logits = jnp.where(col < vocab, logits, -jnp.inf)
  m_prev = m_ref[...]
  m_new = jnp.maximum(m_prev, logits.max(axis=1, keepdims=True))
  alpha = jnp.exp(m_prev - m_new)  # rescales the old sums to the new max
  e = jnp.exp(logits - _tile(m_new, bv))
  s_ref[...] = alpha * s_ref[...] + e.sum(axis=1, keepdims=True)
  hit = col == _tile(t_ref[...], bv)  # exactly one vocab block holds the target
  x_ref[...] += jnp.where(hit, logits, 0.0).sum(axis=1, keepdims=True)
  if with_entropy:
    el = e * logits
    if ragged:  # 0 · -inf
      el = jnp.where(col < vocab, el, 0.0)
    u_ref[...] = alpha * u_ref[...] + el.sum(axis=1, keepdims=True)
  m_ref[...] = m_new

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    lse = m_ref[...] + jnp.log(s_ref[...])
    lse_ref[...] = lse
    logp_ref[...] = x_ref[...] - lse
    if with_entropy:
      ent_ref[...] = lse - u_ref[...] / s_ref[...]


def _forward(h_NxD, w_VxD, t_N, bn, bv, with_entropy, interpret):
  """Padded-N inputs → lane-replicated (logp, lse[, entropy]) [N, 128] f32."""
  h_NxD, w_VxD, t_N = manual.align(h_NxD, w_VxD, t_N)
  (n, d), v = h_NxD.shape, w_VxD.shape[0]
  vec = pl.BlockSpec((bn, LANES), lambda i, j: (i, 0))
  n_out = 3 if with_entropy else 2
  cost = pl.CostEstimate(
      flops=2 * n * v * d, transcendentals=n * v,
      bytes_accessed=(n // bn) * v * d * w_VxD.dtype.itemsize + n * d * h_NxD.dtype.itemsize)
  return pl.pallas_call(
      functools.partial(_forward_kernel, vocab=v, with_entropy=with_entropy),
      grid=(n // bn, pl.cdiv(v, bv)),
      in_specs=[vec, pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
                pl.BlockSpec((bv, d), lambda i, j: (j, 0))],
      out_specs=[vec] * n_out,
      out_shape=[manual.struct((n, LANES), jnp.float32, h_NxD)] * n_out,
      scratch_shapes=[pltpu.VMEM((bn, LANES), jnp.float32)] * (n_out + 1),  # m, s, x[, u]
      compiler_params=_params(('parallel', 'arbitrary')),
      cost_estimate=cost, interpret=interpret, name='token_logprobs_fwd',
  )(_lanes(t_N), h_NxD, w_VxD)


# ---------------------------------------------------------------- backward


def _dhidden_kernel(t_ref, lse_ref, g_ref, h_ref, w_ref, dh_ref, acc_ref, *, vocab):
  j, last = pl.program_id(1), pl.num_programs(1) - 1
  bn, bv = h_ref.shape[0], w_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  logits = jax.lax.dot_general(h_ref[...], w_ref[...], _NT, preferred_element_type=jnp.float32)
  col = j * bv + jax.lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
  p = jnp.exp(logits - _tile(lse_ref[...], bv))
  onehot = (col == _tile(t_ref[...], bv)).astype(jnp.float32)
  dlogits = _tile(g_ref[...], bv) * (onehot - p)
  ragged = vocab % bv != 0
  if ragged:
    dlogits = jnp.where(col < vocab, dlogits, 0.0)
  dlogits = dlogits.astype(w_ref.dtype)

  def accumulate(mask_rows):
    for a, b in _d_slices(w_ref.shape[1]):
      w = w_ref[:, a:b]
      if mask_rows:  # rows past V: unspecified data, and 0 · NaN = NaN
        row = j * bv + jax.lax.broadcasted_iota(jnp.int32, w.shape, 0)
        w = jnp.where(row < vocab, w, jnp.zeros_like(w))
      acc_ref[:, a:b] += jnp.dot(dlogits, w, preferred_element_type=jnp.float32)

  if ragged:  # only the last block pays for the mask
    pl.when(j < last)(lambda: accumulate(False))
    pl.when(j == last)(lambda: accumulate(True))
  else:
    accumulate(False)

  @pl.when(j == last)
  def _write():
    dh_ref[...] = acc_ref[...].astype(dh_ref.dtype)


def _dweight_kernel(t_ref, lse_ref, g_ref, h_ref, w_ref, dw_ref, acc_ref, *, vocab):
  j, i = pl.program_id(0), pl.program_id(1)
  bn, bv = h_ref.shape[0], w_ref.shape[0]

  @pl.when(i == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  logits_T = jax.lax.dot_general(w_ref[...], h_ref[...], _NT, preferred_element_type=jnp.float32)
  row = j * bv + jax.lax.broadcasted_iota(jnp.int32, (bv, bn), 0)
  p_T = jnp.exp(logits_T - lse_ref[0:1, :])
  onehot_T = (row == t_ref[0:1, :]).astype(jnp.float32)
  dlogits_T = g_ref[0:1, :] * (onehot_T - p_T)
  if vocab % bv:  # rows past V are dropped on write, but must not be NaN
    dlogits_T = jnp.where(row < vocab, dlogits_T, 0.0)
  dlogits_T = dlogits_T.astype(h_ref.dtype)
  for a, b in _d_slices(h_ref.shape[1]):
    acc_ref[:, a:b] += jnp.dot(dlogits_T, h_ref[:, a:b], preferred_element_type=jnp.float32)

  @pl.when(i == pl.num_programs(1) - 1)
  def _write():
    dw_ref[...] = acc_ref[...].astype(dw_ref.dtype)


def _backward(h_NxD, w_VxD, t_N, lse_N, g_N, blocks, interpret):
  """Padded-N inputs (g = 0 on padded rows) → (d hidden [N, D], d weight [V, D])."""
  h_NxD, w_VxD, t_N, lse_N, g_N = manual.align(h_NxD, w_VxD, t_N, lse_N, g_N)
  (n, d), v = h_NxD.shape, w_VxD.shape[0]
  flops, trans = 4 * n * v * d, n * v
  bn, bv = blocks['dhidden']
  vec = pl.BlockSpec((bn, LANES), lambda i, j: (i, 0))
  dh = pl.pallas_call(
      functools.partial(_dhidden_kernel, vocab=v),
      grid=(n // bn, pl.cdiv(v, bv)),
      in_specs=[vec, vec, vec, pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
                pl.BlockSpec((bv, d), lambda i, j: (j, 0))],
      out_specs=pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
      out_shape=manual.struct(h_NxD.shape, h_NxD.dtype, h_NxD),
      scratch_shapes=[pltpu.VMEM((bn, d), jnp.float32)],
      compiler_params=_params(('parallel', 'arbitrary')),
      cost_estimate=pl.CostEstimate(flops=flops, transcendentals=trans, bytes_accessed=(
          (n // bn) * v * d * w_VxD.dtype.itemsize + 2 * n * d * h_NxD.dtype.itemsize)),
      interpret=interpret, name='token_logprobs_dhidden',
  )(_lanes(t_N), _lanes(lse_N), _lanes(g_N), h_NxD, w_VxD)

  bn, bv = blocks['dweight']
  vec = pl.BlockSpec((SUBLANES, bn), lambda j, i: (0, i))
  dw = pl.pallas_call(
      functools.partial(_dweight_kernel, vocab=v),
      grid=(pl.cdiv(v, bv), n // bn),
      in_specs=[vec, vec, vec, pl.BlockSpec((bn, d), lambda j, i: (i, 0)),
                pl.BlockSpec((bv, d), lambda j, i: (j, 0))],
      out_specs=pl.BlockSpec((bv, d), lambda j, i: (j, 0)),
      out_shape=manual.struct(w_VxD.shape, w_VxD.dtype, h_NxD),
      scratch_shapes=[pltpu.VMEM((bv, d), jnp.float32)],
      compiler_params=_params(('parallel', 'arbitrary')),
      cost_estimate=pl.CostEstimate(flops=flops, transcendentals=trans, bytes_accessed=(
          pl.cdiv(v, bv) * n * d * h_NxD.dtype.itemsize + 2 * v * d * w_VxD.dtype.itemsize)),
      interpret=interpret, name='token_logprobs_dweight',
  )(_sublanes(t_N), _sublanes(lse_N), _sublanes(g_N), h_NxD, w_VxD)
  return dh, dw


# ---------------------------------------------------------------- custom VJP


def _pad_rows(x, n):
  if x.shape[0] == n:
    return x
  return jnp.pad(x, [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _logprobs(hidden_NxD, weight_VxD, targets_N, token_block, vocab_block, with_entropy,
              interpret):
  return _logprobs_fwd(hidden_NxD, weight_VxD, targets_N, token_block, vocab_block,
                       with_entropy, interpret)[0]


def _plan(hidden_NxD, weight_VxD, token_block, vocab_block, interpret):
  (n, d), v = hidden_NxD.shape, weight_VxD.shape[0]
  itemsize = max(hidden_NxD.dtype.itemsize, weight_VxD.dtype.itemsize)
  return plan(n, v, d, itemsize, token_block, vocab_block, interpret)


def _logprobs_fwd(hidden_NxD, weight_VxD, targets_N, token_block, vocab_block, with_entropy,
                  interpret):
  n = hidden_NxD.shape[0]
  blocks, n_pad = _plan(hidden_NxD, weight_VxD, token_block, vocab_block, interpret)
  outs = _forward(_pad_rows(hidden_NxD, n_pad), weight_VxD, _pad_rows(targets_N, n_pad),
                  *blocks['forward'], with_entropy, interpret)
  logp, lse = outs[0][:n, 0], outs[1][:n, 0]
  entropy = jax.lax.stop_gradient(outs[2][:n, 0]) if with_entropy else None
  return (logp, entropy), (hidden_NxD, weight_VxD, targets_N, lse)


def _logprobs_bwd(token_block, vocab_block, with_entropy, interpret, res, grads):
  hidden_NxD, weight_VxD, targets_N, lse_N = res
  n = hidden_NxD.shape[0]
  blocks, n_pad = _plan(hidden_NxD, weight_VxD, token_block, vocab_block, interpret)
  g_N = grads[0].astype(jnp.float32)  # the entropy carries no gradient
  pad = lambda x: _pad_rows(x, n_pad)  # noqa: E731  (padded rows: g = 0, lse = 0)
  dh, dw = _backward(pad(hidden_NxD), weight_VxD, pad(targets_N), pad(lse_N), pad(g_N),
                     blocks, interpret)
  return manual.cotangent_like(dh[:n], hidden_NxD), manual.cotangent_like(dw, weight_VxD), None


_logprobs.defvjp(_logprobs_fwd, _logprobs_bwd)


def token_logprobs(hidden_NxD, weight_VxD, targets_N, *, with_entropy=False,
                   token_block=TOKEN_BLOCK, vocab_block=VOCAB_BLOCK, interpret=False):
  """(log p(target) [N] f32, entropy [N] f32 or None). `interpret=True` runs the
  kernels in Pallas' interpreter (the only way on CPU); False needs a TPU, or
  lowering with `lowering_platforms=('tpu',)`."""
  return _logprobs(hidden_NxD, weight_VxD, targets_N.astype(jnp.int32), token_block,
                   vocab_block, with_entropy, interpret)


def vmem_plan_mib(n, v, d, itemsize):
  """{kernel: (bn, bv, estimated MiB)} for the default blocks: the numbers in
  the module docstring."""
  blocks, _ = plan(n, v, d, itemsize)
  return {k: (bn, bv, _vmem_bytes(k, bn, bv, d, itemsize) / 2**20)
          for k, (bn, bv) in blocks.items()}


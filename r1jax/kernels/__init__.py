"""Per-token log-probs from final hidden states and the LM head.

  token_logprobs(hidden [N, D], weight [V, D], targets [N]) = log softmax(hidden · weightᵀ)[target]

With vocabularies of 128k–152k the [N, V] logits are the largest tensor of an
RL step. Implementations:

  naive    materialises the logits (the reference);
  chunked  pure JAX: a map over token chunks × a scan over vocab chunks with an
           online log-sum-exp; a custom VJP recomputes each [Nc, Vc] tile in
           the backward (Cut Cross-Entropy / Liger style), so memory is
           O(Nc·Vc) instead of O(N·V). The CPU default.
  pallas   the same algorithm as three Pallas TPU (Mosaic) kernels (forward;
           d hidden; d weight), tiles living in VMEM (`pallas_tpu.py`). Off TPU
           it runs in Pallas' interpreter unless `interpret=False` is passed
           (which only lowering for TPU accepts): correct, but slow.
  auto     pallas on TPU, chunked elsewhere, chosen when the computation is
           lowered (`jax.lax.platform_dependent`), so an AOT lowering for TPU
           from a CPU host gets the kernel.

Given a mesh (`mesh=`), any of them runs per device under `jax.shard_map`,
vocab-parallel over the 'tensor' axis: each device handles its slice of the
head and only per-token log-sum-exps are combined (vocab_parallel.py).

The entropy (optional, for metrics) is returned without a gradient.
"""
import functools

import jax
import jax.numpy as jnp

from r1jax.kernels import manual, pallas_tpu, vocab_parallel

IMPLS = ('naive', 'chunked', 'pallas', 'auto')
TOKEN_CHUNK = 1024
VOCAB_CHUNK = 8192


def _naive(hidden_NxD, weight_VxD, targets_N):
  logits = jnp.einsum('nd,vd->nv', hidden_NxD, weight_VxD, preferred_element_type=jnp.float32)
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(logp_all, targets_N[:, None], axis=-1)[:, 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  return logp, jax.lax.stop_gradient(entropy)


def _pad_to(x, multiple, axis):
  pad = (-x.shape[axis]) % multiple
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def _over_vocab(body, carry, weight_VxD, vocab_chunk):
  """Folds `body(carry, w_tile, v0)` over the vocabulary in tiles of
  `vocab_chunk` rows, read in place with dynamic_slice (the weight is never
  padded or copied); a shorter last tile is a second, static call."""
  V = weight_VxD.shape[0]
  full, rest = divmod(V, vocab_chunk)

  def step(carry, c):
    v0 = c * vocab_chunk
    return body(carry, jax.lax.dynamic_slice_in_dim(weight_VxD, v0, vocab_chunk), v0), None

  carry, _ = jax.lax.scan(step, carry, jnp.arange(full))
  if rest:
    carry = body(carry, weight_VxD[full * vocab_chunk:], full * vocab_chunk)
  return carry


def _logits(h_NxD, w_VcxD):
  return jnp.einsum('nd,vd->nv', h_NxD, w_VcxD, preferred_element_type=jnp.float32)


def _forward_rows(h_NxD, targets_N, weight_VxD, vocab_chunk):
  """Online log-sum-exp over vocab tiles for one token chunk.
  Returns (logp, entropy, lse)."""
  N = h_NxD.shape[0]

  def body(carry, w, v0):
    m, s, t, target_logit = carry  # running max, Σe^(l-m), Σe^(l-m)·l, target logit
    logits = _logits(h_NxD, w)
    m_new = jnp.maximum(m, logits.max(axis=-1))
    scale = jnp.exp(m - m_new)
    e = jnp.exp(logits - m_new[:, None])
    s = s * scale + e.sum(axis=-1)
    t = t * scale + jnp.sum(e * logits, axis=-1)
    local = targets_N - v0
    in_tile = (local >= 0) & (local < w.shape[0])
    picked = jnp.take_along_axis(logits, jnp.clip(local, 0, w.shape[0] - 1)[:, None], -1)[:, 0]
    return m_new, s, t, jnp.where(in_tile, picked, target_logit)

  zeros = manual.varying(jnp.zeros((N,), jnp.float32), h_NxD, weight_VxD, targets_N)
  m, s, t, target_logit = _over_vocab(
      body, (zeros - jnp.inf, zeros, zeros, zeros), weight_VxD, vocab_chunk)
  lse = m + jnp.log(s)
  return target_logit - lse, lse - t / s, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked(hidden_NxD, weight_VxD, targets_N, token_chunk, vocab_chunk):
  return _chunked_fwd(hidden_NxD, weight_VxD, targets_N, token_chunk, vocab_chunk)[0]


def _chunked_fwd(hidden_NxD, weight_VxD, targets_N, token_chunk, vocab_chunk):
  N = hidden_NxD.shape[0]
  h = _pad_to(hidden_NxD, token_chunk, 0).reshape(-1, token_chunk, hidden_NxD.shape[1])
  t = _pad_to(targets_N, token_chunk, 0).reshape(-1, token_chunk)
  logp, entropy, lse = jax.lax.map(
      lambda a: _forward_rows(a[0], a[1], weight_VxD, vocab_chunk), (h, t))
  out = (logp.reshape(-1)[:N], jax.lax.stop_gradient(entropy.reshape(-1)[:N]))
  return out, (hidden_NxD, weight_VxD, targets_N, lse.reshape(-1)[:N])


def _chunked_bwd(token_chunk, vocab_chunk, res, grads):
  """Vocab tiles outside, token chunks inside: each tile's d weight is
  accumulated over all tokens in a [Vc, D] f32 buffer and written once into
  the output, d hidden accumulates in place in an [N, D] f32 buffer. Each
  [Nc, Vc] logits tile is recomputed: d logits = g · (onehot(target) - softmax)."""
  hidden_NxD, weight_VxD, targets_N, lse_N = res
  g_N = grads[0].astype(jnp.float32)  # the entropy carries no gradient
  N, D = hidden_NxD.shape
  rows = lambda x: _pad_to(x, token_chunk, 0).reshape(-1, token_chunk, *x.shape[1:])  # noqa: E731
  h, t, lse, g = rows(hidden_NxD), rows(targets_N), rows(lse_N), rows(g_N)  # padded rows: g = 0

  def tile(carry, w, v0):
    dh_all, dweight = carry

    def chunk(inner, i):
      dh_all, dw = inner
      logits = _logits(h[i], w)
      p = jnp.exp(logits - lse[i][:, None])
      onehot = (t[i] - v0)[:, None] == jnp.arange(w.shape[0])[None]
      dlogits = g[i][:, None] * (onehot.astype(jnp.float32) - p)
      dh_all = dh_all.at[i].add(jnp.einsum('nv,vd->nd', dlogits.astype(w.dtype), w,
                                           preferred_element_type=jnp.float32))
      dw = dw + jnp.einsum('nv,nd->vd', dlogits.astype(h.dtype), h[i],
                           preferred_element_type=jnp.float32)
      return (dh_all, dw), None

    dw = manual.varying(jnp.zeros(w.shape, jnp.float32), h, w, g)
    (dh_all, dw), _ = jax.lax.scan(chunk, (dh_all, dw), jnp.arange(h.shape[0]))
    dweight = jax.lax.dynamic_update_slice_in_dim(dweight, dw.astype(dweight.dtype), v0, 0)
    return dh_all, dweight

  init = (jnp.zeros(h.shape, jnp.float32), jnp.zeros(weight_VxD.shape, weight_VxD.dtype))
  dh_all, dweight = _over_vocab(
      tile, tuple(manual.varying(x, h, weight_VxD, g) for x in init), weight_VxD, vocab_chunk)
  dh = dh_all.reshape(-1, D)[:N].astype(hidden_NxD.dtype)
  return manual.cotangent_like(dh, hidden_NxD), manual.cotangent_like(dweight, weight_VxD), None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def _pallas(hidden_NxD, weight_VxD, targets_N, with_entropy, token_block, vocab_block,
            interpret):
  return pallas_tpu.token_logprobs(
      hidden_NxD, weight_VxD, targets_N, with_entropy=with_entropy, token_block=token_block,
      vocab_block=vocab_block, interpret=interpret)


def _chunked_call(hidden_NxD, weight_VxD, targets_N, token_chunk, vocab_chunk):
  return _chunked(hidden_NxD, weight_VxD, targets_N.astype(jnp.int32),
                  min(token_chunk, hidden_NxD.shape[0]), min(vocab_chunk, weight_VxD.shape[0]))


def token_logprobs(hidden_NxD: jax.Array, weight_VxD: jax.Array, targets_N: jax.Array,
                   *, impl: str = 'naive', with_entropy: bool = False,
                   token_chunk: int = TOKEN_CHUNK, vocab_chunk: int = VOCAB_CHUNK,
                   token_block: int = pallas_tpu.TOKEN_BLOCK,
                   vocab_block: int = pallas_tpu.VOCAB_BLOCK,
                   interpret: bool | None = None, mesh: jax.sharding.Mesh | None = None
                   ) -> jax.Array | tuple[jax.Array, jax.Array]:
  """log p(target) [N] in f32; with_entropy also returns the entropy [N].

  *_chunk size the `chunked` tiles, *_block the Pallas ones (`pallas`,
  `auto` on TPU). `interpret` (pallas only): None = interpret unless the
  default backend is a TPU; False to lower for TPU from another host.
  With a `mesh` of more than one device the call runs under `jax.shard_map`
  (vocab_parallel.py): tokens split over 'data' x 'fsdp', the weight over the
  vocabulary on 'tensor' (Mosaic kernels cannot be partitioned automatically,
  and a vocab-parallel head never gathers whole logits rows)."""
  if mesh is not None and mesh.size > 1:
    local = functools.partial(token_logprobs, impl=impl, token_chunk=token_chunk,
                              vocab_chunk=vocab_chunk, token_block=token_block,
                              vocab_block=vocab_block, interpret=interpret)
    return vocab_parallel.token_logprobs(hidden_NxD, weight_VxD, targets_N, mesh, local=local,
                                         with_entropy=with_entropy)
  if impl == 'naive':
    logp, entropy = _naive(hidden_NxD, weight_VxD, targets_N)
  elif impl == 'chunked':
    logp, entropy = _chunked_call(hidden_NxD, weight_VxD, targets_N, token_chunk, vocab_chunk)
  elif impl == 'pallas':
    if interpret is None:
      interpret = jax.default_backend() != 'tpu'
    logp, entropy = _pallas(hidden_NxD, weight_VxD, targets_N, with_entropy, token_block,
                            vocab_block, interpret)
  elif impl == 'auto':
    # Both branches are traced, only the lowering platform's one is lowered,
    # and differentiation goes through each branch's own custom VJP. The
    # branches must return the same structure, hence `keep`.
    keep = (lambda f: f) if with_entropy else (lambda f: lambda *a: (f(*a)[0], None))
    logp, entropy = jax.lax.platform_dependent(
        hidden_NxD, weight_VxD, targets_N,
        tpu=keep(functools.partial(_pallas, with_entropy=with_entropy, token_block=token_block,
                                   vocab_block=vocab_block, interpret=False)),
        default=keep(functools.partial(_chunked_call, token_chunk=token_chunk,
                                       vocab_chunk=vocab_chunk)))
  else:
    raise ValueError(f'logprob impl {impl!r} is not available; known: {IMPLS}')
  return (logp, entropy) if with_entropy else logp

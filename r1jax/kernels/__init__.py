"""Per-token log-probs from final hidden states and the LM head.

  token_logprobs(hidden [N, D], weight [V, D], targets [N]) = log softmax(hidden · weightᵀ)[target]

With vocabularies of 128k–152k the [N, V] logits are the largest tensor of an
RL step. Implementations:

  naive    materialises the logits (the reference);
  chunked  pure JAX: a map over token chunks × a scan over vocab chunks with an
           online log-sum-exp; a custom VJP recomputes each [Nc, Vc] tile in
           the backward (Cut Cross-Entropy / Liger style), so memory is
           O(Nc·Vc) instead of O(N·V). The CPU default.

The entropy (optional, for metrics) is returned without a gradient.
"""
import functools

import jax
import jax.numpy as jnp

IMPLS = ('naive', 'chunked')
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


def _tiles(weight_VxD, vocab_chunk):
  """[C, Vc, D] vocab tiles and the number of real rows V."""
  V, D = weight_VxD.shape
  w = _pad_to(weight_VxD, vocab_chunk, 0)
  return w.reshape(-1, vocab_chunk, D), V


def _tile_logits(h_NxD, w_VcxD, c, vocab_chunk, V):
  """f32 logits of one vocab tile, -inf on padded vocabulary rows."""
  logits = jnp.einsum('nd,vd->nv', h_NxD, w_VcxD, preferred_element_type=jnp.float32)
  valid = c * vocab_chunk + jnp.arange(vocab_chunk) < V
  return jnp.where(valid[None], logits, -jnp.inf)


def _forward_rows(h_NxD, targets_N, tiles, V, vocab_chunk):
  """Online log-sum-exp over vocab tiles for one token chunk.
  Returns (logp, entropy, lse)."""
  N = h_NxD.shape[0]

  def body(carry, xs):
    m, s, t, target_logit = carry  # running max, Σe^(l-m), Σe^(l-m)·l, target logit
    w, c = xs
    logits = _tile_logits(h_NxD, w, c, vocab_chunk, V)
    m_new = jnp.maximum(m, logits.max(axis=-1))
    scale = jnp.exp(m - m_new)
    e = jnp.exp(logits - m_new[:, None])
    s = s * scale + e.sum(axis=-1)
    t = t * scale + jnp.sum(jnp.where(e > 0, e * logits, 0.0), axis=-1)
    local = targets_N - c * vocab_chunk
    in_tile = (local >= 0) & (local < vocab_chunk)
    picked = jnp.take_along_axis(logits, jnp.clip(local, 0, vocab_chunk - 1)[:, None], -1)[:, 0]
    target_logit = jnp.where(in_tile, picked, target_logit)
    return (m_new, s, t, target_logit), None

  init = (jnp.full((N,), -jnp.inf, jnp.float32), jnp.zeros((N,), jnp.float32),
          jnp.zeros((N,), jnp.float32), jnp.zeros((N,), jnp.float32))
  (m, s, t, target_logit), _ = jax.lax.scan(body, init, (tiles, jnp.arange(tiles.shape[0])))
  lse = m + jnp.log(s)
  return target_logit - lse, lse - t / s, lse


def _backward_rows(h_NxD, targets_N, lse_N, g_N, tiles, V, vocab_chunk):
  """d hidden [N, D] and d tiles [C, Vc, D] for one token chunk, recomputing
  each tile: d logits = g · (onehot(target) - softmax)."""

  def body(dh, xs):
    w, c = xs
    logits = _tile_logits(h_NxD, w, c, vocab_chunk, V)
    p = jnp.exp(logits - lse_N[:, None])
    onehot = (targets_N - c * vocab_chunk)[:, None] == jnp.arange(vocab_chunk)[None]
    dlogits = g_N[:, None] * (onehot.astype(jnp.float32) - p)
    dh = dh + jnp.einsum('nv,vd->nd', dlogits.astype(w.dtype), w,
                         preferred_element_type=jnp.float32)
    dw = jnp.einsum('nv,nd->vd', dlogits.astype(h_NxD.dtype), h_NxD,
                    preferred_element_type=jnp.float32)
    return dh, dw

  dh0 = jnp.zeros(h_NxD.shape, jnp.float32)
  return jax.lax.scan(body, dh0, (tiles, jnp.arange(tiles.shape[0])))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked(hidden_NxD, weight_VxD, targets_N, token_chunk, vocab_chunk):
  return _chunked_fwd(hidden_NxD, weight_VxD, targets_N, token_chunk, vocab_chunk)[0]


def _chunked_fwd(hidden_NxD, weight_VxD, targets_N, token_chunk, vocab_chunk):
  N = hidden_NxD.shape[0]
  tiles, V = _tiles(weight_VxD, vocab_chunk)
  h = _pad_to(hidden_NxD, token_chunk, 0).reshape(-1, token_chunk, hidden_NxD.shape[1])
  t = _pad_to(targets_N, token_chunk, 0).reshape(-1, token_chunk)
  logp, entropy, lse = jax.lax.map(
      lambda a: _forward_rows(a[0], a[1], tiles, V, vocab_chunk), (h, t))
  out = (logp.reshape(-1)[:N], jax.lax.stop_gradient(entropy.reshape(-1)[:N]))
  return out, (hidden_NxD, weight_VxD, targets_N, lse.reshape(-1)[:N])


def _chunked_bwd(token_chunk, vocab_chunk, res, grads):
  hidden_NxD, weight_VxD, targets_N, lse_N = res
  g_N = grads[0].astype(jnp.float32)  # the entropy carries no gradient
  N, D = hidden_NxD.shape
  tiles, V = _tiles(weight_VxD, vocab_chunk)
  pad = lambda x: _pad_to(x, token_chunk, 0).reshape(-1, token_chunk, *x.shape[1:])  # noqa: E731
  rows = (pad(hidden_NxD), pad(targets_N), pad(lse_N), pad(g_N))  # padded rows have g = 0

  def per_chunk(dw_acc, xs):
    h, t, lse, g = xs
    dh, dw = _backward_rows(h, t, lse, g, tiles, V, vocab_chunk)
    return dw_acc + dw, dh

  dw, dh = jax.lax.scan(per_chunk, jnp.zeros(tiles.shape, jnp.float32), rows)
  dhidden = dh.reshape(-1, D)[:N].astype(hidden_NxD.dtype)
  dweight = dw.reshape(-1, D)[:V].astype(weight_VxD.dtype)
  return dhidden, dweight, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def token_logprobs(hidden_NxD: jax.Array, weight_VxD: jax.Array, targets_N: jax.Array,
                   *, impl: str = 'naive', with_entropy: bool = False,
                   token_chunk: int = TOKEN_CHUNK, vocab_chunk: int = VOCAB_CHUNK
                   ) -> jax.Array | tuple[jax.Array, jax.Array]:
  """log p(target) [N] in f32; with_entropy also returns the entropy [N]."""
  if impl == 'naive':
    logp, entropy = _naive(hidden_NxD, weight_VxD, targets_N)
  elif impl == 'chunked':
    token_chunk = min(token_chunk, hidden_NxD.shape[0])
    vocab_chunk = min(vocab_chunk, weight_VxD.shape[0])
    logp, entropy = _chunked(hidden_NxD, weight_VxD, targets_N.astype(jnp.int32),
                             token_chunk, vocab_chunk)
  else:
    raise ValueError(f'logprob impl {impl!r} is not available; known: {IMPLS}')
  return (logp, entropy) if with_entropy else logp

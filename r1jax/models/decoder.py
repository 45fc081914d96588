"""One Flax NNX decoder for the Qwen2 / Qwen2.5, Qwen3 (dense) and Llama 3.x families.

Shape legend: B batch, T query length, S key/cache length, D model dim,
N query heads, K kv heads, G = N/K queries per kv head, H head dim,
F MLP dim, V vocab, L layers.

Per layer (pre-norm):
  x += Wo · softmax(RoPE(q) RoPE(k)ᵀ / √H + mask) v,  q,k,v = RMSNorm(x)·W{q,k,v} (+b)
       (Qwen3: q, k = RMSNorm_H(q), RMSNorm_H(k) over each head, before RoPE)
  x += W_down (silu(RMSNorm(x)·W_gate) ⊙ RMSNorm(x)·W_up)
then a final RMSNorm and the LM head (tied to the embedding or not).

Layers are stored stacked (leading L axis) and applied with `lax.scan`, so
compile time does not grow with depth and `remat` wraps one layer body. The KV
cache is `{'k': [L, B, K, H, S], 'v': [L, B, K, S, H]}`, updated in place at
`cache_index`: kv heads before slots (much faster than [B, S, K, H] on CPU),
and K with its slots minor, so a decode step's q·Kᵀ is a plain [G, H] × [H,
S] product (with K as [S, H] XLA's CPU dot repacks every block it reads).
`CACHE_SLOT_AXIS` says where each keeps its slots.
"""
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.kernels import attention as attn_lib
from r1jax.models.config import LORA_TARGETS, ModelConfig
from r1jax import sharding as shd
from r1jax.sharding import constrain

Cache = dict[str, jax.Array]
# Where each cache array keeps its slots (S): what code that pads, copies or
# slices a cache along its slots reads.
CACHE_SLOT_AXIS = {'k': 4, 'v': 3}


def _param(rngs: nnx.Rngs | None, init: str, shape: tuple[int, ...],
           dtype: Any, axes: tuple[str | None, ...]) -> nnx.Param:
  if init == 'normal':
    value = 0.02 * jax.random.normal(rngs.params(), shape, dtype)
  elif init == 'ones':
    value = jnp.ones(shape, dtype)
  else:
    value = jnp.zeros(shape, dtype)
  return nnx.Param(value, logical_axes=axes)


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (w.astype(jnp.float32) * y).astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  """Inverse frequencies [H/2], with Llama 3 scaling when configured."""
  h = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  s = cfg.rope_scaling_dict
  if not s:
    return inv_freq
  factor, lo, hi = s['factor'], s['low_freq_factor'], s['high_freq_factor']
  old_len = s['original_max_position_embeddings']
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - lo) / (hi - lo)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array,
               inv_freq: jax.Array) -> jax.Array:
  """Rotate-half RoPE (the HF convention), computed in f32."""
  angles = positions_BxT.astype(jnp.float32)[..., None] * inv_freq  # B,T,H/2
  cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  x = x_BxTxNxH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos + rotated * sin).astype(x_BxTxNxH.dtype)


class Layers(nnx.Module):
  """All L transformer blocks, each weight stacked along a leading L axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None):
    L, D, F = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pd = jnp.dtype(cfg.param_dtype)
    p = lambda init, shape, axes: _param(rngs, init, shape, pd, axes)  # noqa: E731
    self.input_norm = p('ones', (L, D), ('layers', 'norm'))
    self.q_proj = p('normal', (L, D, N, H), ('layers', 'embed', 'heads', 'head_dim'))
    self.k_proj = p('normal', (L, D, K, H), ('layers', 'embed', 'kv_heads', 'head_dim'))
    self.v_proj = p('normal', (L, D, K, H), ('layers', 'embed', 'kv_heads', 'head_dim'))
    if cfg.qkv_bias:
      self.q_bias = p('zeros', (L, N, H), ('layers', 'heads', 'head_dim'))
      self.k_bias = p('zeros', (L, K, H), ('layers', 'kv_heads', 'head_dim'))
      self.v_bias = p('zeros', (L, K, H), ('layers', 'kv_heads', 'head_dim'))
    if cfg.qk_norm:
      self.q_norm = p('ones', (L, H), ('layers', 'norm'))
      self.k_norm = p('ones', (L, H), ('layers', 'norm'))
    self.o_proj = p('normal', (L, N, H, D), ('layers', 'heads', 'head_dim', 'embed'))
    self.post_attention_norm = p('ones', (L, D), ('layers', 'norm'))
    self.gate_proj = p('normal', (L, D, F), ('layers', 'embed', 'mlp'))
    self.up_proj = p('normal', (L, D, F), ('layers', 'embed', 'mlp'))
    self.down_proj = p('normal', (L, F, D), ('layers', 'mlp', 'embed'))
    r = cfg.lora_rank
    for t in cfg.lora_targets:  # adapters: A [L, in..., r], B [L, r, out...]
      (a_shape, a_axes), (b_shape, b_axes) = _lora_shapes(cfg, t)
      fan_in = math.prod(a_shape[1:-1])
      bound = 1.0 / math.sqrt(fan_in)
      a = jax.random.uniform(rngs.params() if rngs is not None else jax.random.key(0),
                             (L, *a_shape[1:-1], r), pd, -bound, bound)
      setattr(self, f'{t}_lora_a', nnx.LoRAParam(a, logical_axes=a_axes))
      setattr(self, f'{t}_lora_b', nnx.LoRAParam(jnp.zeros((L, r, *b_shape[2:]), pd),
                                                 logical_axes=b_axes))

  def weights(self) -> dict[str, jax.Array]:
    return {k: v.get_value() for k, v in vars(self).items() if isinstance(v, nnx.Param)}


@jax.custom_vjp
def project(x_BxTxI: jax.Array, w: jax.Array) -> jax.Array:
  """x [B, T, I] times a weight [I, ...] (its first axis contracted), in f32:
  [B, T, ...]. The same as the einsum, with a backward written out so that
  the weight's gradient is one matmul contracting (b, t) into [I, ...]
  directly. JAX's own transpose rule computes it as [..., I] and transposes;
  XLA's CPU backend then fuses that transpose back into the elementwise
  backward producing the cotangent (silu's, for the MLP), which it writes in
  [F, B·T] order with scalar strided stores: 0.8 s of a 3.6 s update pass
  (benchmarks/grpo_step.py at 512 new tokens)."""
  return jax.lax.dot_general(x_BxTxI, w, (((2,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _project_fwd(x, w):
  return project(x, w), (x, w)


def _project_bwd(res, g):
  x, w = res
  outs = tuple(range(2, g.ndim))
  dx = jax.lax.dot_general(g, w, ((outs, tuple(range(1, w.ndim))), ((), ())),
                           preferred_element_type=jnp.float32)
  dw = jax.lax.dot_general(x, g, (((0, 1), (0, 1)), ((), ())),
                           preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dw.astype(w.dtype)


project.defvjp(_project_fwd, _project_bwd)


def _lora_shapes(cfg: ModelConfig, target: str):
  """((A shape, A axes), (B shape, B axes)) of one target, layers first; A's
  input axes and B's output axes are the base weight's (so they shard alike)."""
  L, D, F, r = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.lora_rank
  N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  ins = {'q': ((D,), ('embed',)), 'k': ((D,), ('embed',)), 'v': ((D,), ('embed',)),
         'o': ((N, H), ('heads', 'head_dim')), 'gate': ((D,), ('embed',)),
         'up': ((D,), ('embed',)), 'down': ((F,), ('mlp',))}[target]
  outs = {'q': ((N, H), ('heads', 'head_dim')), 'k': ((K, H), ('kv_heads', 'head_dim')),
          'v': ((K, H), ('kv_heads', 'head_dim')), 'o': ((D,), ('embed',)),
          'gate': ((F,), ('mlp',)), 'up': ((F,), ('mlp',)), 'down': ((D,), ('embed',))}[target]
  return (((L, *ins[0], r), ('layers', *ins[1], None)),
          ((L, r, *outs[0]), ('layers', None, *outs[1])))


def _lora_term(cfg: ModelConfig, w: dict[str, jax.Array], target: str, x: jax.Array,
               ins: str, outs: str, drop: dict | None = None) -> jax.Array | float:
  """(alpha / r) · B(A x) for `target`, or 0 without its adapter. `ins` and
  `outs` are the einsum letters of x's features and of the output's. With
  `drop` ({'key': this layer's key data, 'keep': 1 - rate}) x is dropped out
  first (inverted dropout; the base path sees x whole)."""
  a = w.get(f'{target}_lora_a')
  if a is None:
    return 0.0
  if drop is not None:  # PEFT's lora_dropout: on the adapter's input only
    key = jax.random.fold_in(jax.random.wrap_key_data(drop['key']), LORA_TARGETS.index(target))
    keep = drop['keep']
    x = jnp.where(jax.random.bernoulli(key, keep, x.shape), x / keep.astype(x.dtype),
                  jnp.zeros((), x.dtype))
  mm = dict(preferred_element_type=jnp.float32)
  lead = 'bt'
  xa = jnp.einsum(f'{lead}{ins},{ins}r->{lead}r', x, a, **mm).astype(x.dtype)
  return cfg.lora_scale * jnp.einsum(f'{lead}r,r{outs}->{lead}{outs}', xa,
                                     w[f'{target}_lora_b'], **mm)


def _dropout_weights(cfg: ModelConfig, lora_dropout: tuple[float, jax.Array] | None) -> dict:
  """{'_lora_dropout': a key per layer and the keep rate}, scanned with the
  layers' weights, or {} when no dropout applies."""
  if lora_dropout is None or not lora_dropout[0] > 0 or not cfg.lora_rank:
    return {}
  rate, key = lora_dropout
  return {'_lora_dropout': {
      'key': jax.random.key_data(jax.random.split(key, cfg.num_layers)),
      'keep': jnp.full((cfg.num_layers,), 1.0 - rate, jnp.float32)}}


def _block(cfg: ModelConfig, w: dict[str, jax.Array], x_BxTxD: jax.Array,
           positions_BxT: jax.Array, mask: attn_lib.Mask,
           cache: tuple[jax.Array, jax.Array, jax.Array] | None = None,
           cache_index: jax.Array | None = None,
           prefix: tuple[jax.Array, jax.Array] | None = None,
           attend=None):
  """One transformer block; the keys attended to are one of:
    - `cache` (k [L,B,K,H,S], v [L,B,K,S,H], layer index): this chunk's keys/values are
      written into it in place (only the new slots), attention reads the
      layer's slice;
    - `prefix` (k [B',K,P,H], v): a shared prefix, each row repeated B/B'
      times, followed by this chunk's own keys;
    - `attend`: a function of (q [B,K,G,T,H], this chunk's k, v [B,K,T,H])
      giving the attention's output [B,K,G,T,H] (a decode step over block
      buffers, `Decoder.decode_blocks`);
    - none of these: this chunk's own keys.
  `mask` describes which keys each query sees (kernels/attention.py).
  Returns (x, updated cache or None, (this chunk's k, v) as [B,K,T,H])."""
  dt = x_BxTxD.dtype
  B, T, _ = x_BxTxD.shape
  K, G, H = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
  drop = w.get('_lora_dropout')
  w = {k: v.astype(dt) for k, v in w.items() if k != '_lora_dropout'}
  _lora = functools.partial(_lora_term, drop=drop)  # pylint: disable=redefined-outer-name
  inv_freq = rope_inv_freq(cfg)
  mm = dict(preferred_element_type=jnp.float32)

  h = rms_norm(x_BxTxD, w['input_norm'], cfg.rms_norm_eps)
  q = project(h, w['q_proj']) + _lora(cfg, w, 'q', h, 'd', 'nh')
  k = project(h, w['k_proj']) + _lora(cfg, w, 'k', h, 'd', 'kh')
  v = project(h, w['v_proj']) + _lora(cfg, w, 'v', h, 'd', 'kh')
  if cfg.qkv_bias:
    q, k, v = q + w['q_bias'], k + w['k_bias'], v + w['v_bias']
  if cfg.qk_norm:
    q = rms_norm(q.astype(dt), w['q_norm'], cfg.rms_norm_eps)
    k = rms_norm(k.astype(dt), w['k_norm'], cfg.rms_norm_eps)
  q = apply_rope(q.astype(dt), positions_BxT, inv_freq)
  k = apply_rope(k.astype(dt), positions_BxT, inv_freq)
  q = constrain(q, ('batch', 'length', 'act_heads', None))
  k_BxKxTxH = jnp.swapaxes(k, 1, 2)
  v_BxKxTxH = jnp.swapaxes(v.astype(dt), 1, 2)
  # Batch dims (b, k) lead and contractions are trailing: the layout XLA's
  # CPU and TPU dots want, forward and backward.
  q_BxKxGxTxH = jnp.transpose(q.reshape(B, T, K, G, H), (0, 2, 3, 1, 4))
  k_BxKxSxH = None
  if attend is not None:
    attn = attend(q_BxKxGxTxH, k_BxKxTxH, v_BxKxTxH)
  elif cache is not None:
    k_all, v_all, layer = cache
    if jnp.ndim(cache_index):  # one slot per row (continuous batching; T = 1)
      if shd.is_split('batch', B):
        # Batched over the rows (vmap), so XLA partitions the write along
        # the sharded batch with no communication (a plain scatter's row
        # indices would be gathered).
        write_k = jax.vmap(lambda c, i, x: jax.lax.dynamic_update_slice(
            c, x[None, :, :, None], (layer, 0, 0, i)), in_axes=(1, 0, 0), out_axes=1)
        write_v = jax.vmap(lambda c, i, x: jax.lax.dynamic_update_slice(
            c, x[None, :, None], (layer, 0, i, 0)), in_axes=(1, 0, 0), out_axes=1)
        k_all = write_k(k_all, cache_index, k_BxKxTxH[:, :, 0])
        v_all = write_v(v_all, cache_index, v_BxKxTxH[:, :, 0])
      else:
        # One device: the plain scatter, which XLA's CPU backend does in
        # place (the batched form copies the cache: 2.7x slower decode).
        rows = jnp.arange(B)
        k_all = k_all.at[layer, rows, :, :, cache_index].set(k_BxKxTxH[:, :, 0])
        v_all = v_all.at[layer, rows, :, cache_index].set(v_BxKxTxH[:, :, 0])
    else:
      k_all = jax.lax.dynamic_update_slice(k_all, jnp.swapaxes(k_BxKxTxH, 2, 3)[None],
                                           (layer, 0, 0, 0, cache_index))
      v_all = jax.lax.dynamic_update_slice(v_all, v_BxKxTxH[None], (layer, 0, 0, cache_index, 0))
    cache = (k_all, v_all, layer)
    if T == 1 and cfg.attention != 'dense' and k_all.shape[4] > attn_lib.DECODE_BLOCK:
      # A decode step reads only the cache blocks filled so far (a cache of
      # one block is read whole, as the dense path does).
      attn = attn_lib.decode(q_BxKxGxTxH, k_all, v_all, layer, mask.key_valid_BxS,
                             mask.q_offset)
    else:
      k_BxKxSxH = jnp.swapaxes(
          jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False), 2, 3)
      v_BxKxSxH = jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False)
  elif prefix is not None:
    reps = B // prefix[0].shape[0]
    k_BxKxSxH = jnp.concatenate([jnp.repeat(prefix[0], reps, axis=0), k_BxKxTxH], axis=2)
    v_BxKxSxH = jnp.concatenate([jnp.repeat(prefix[1], reps, axis=0), v_BxKxTxH], axis=2)
  else:
    k_BxKxSxH, v_BxKxSxH = k_BxKxTxH, v_BxKxTxH
  if k_BxKxSxH is not None:
    k_BxKxSxH = constrain(k_BxKxSxH, ('batch', 'act_kv_heads', 'cache_length', None))
    v_BxKxSxH = constrain(v_BxKxSxH, ('batch', 'act_kv_heads', 'cache_length', None))
    attn = attn_lib.attention(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, mask,
                              'dense' if T == 1 else cfg.attention, cfg.attention_block)
  out = jnp.einsum('bkgth,kghd->btd', attn, w['o_proj'].reshape(K, G, H, -1), **mm)
  if 'o_lora_a' in w:  # the adapter reads the heads as [B, T, N, H]
    heads = jnp.transpose(attn, (0, 3, 1, 2, 4)).reshape(B, T, K * G, H)
    out = out + _lora(cfg, w, 'o', heads, 'nh', 'd')
  out = out.astype(dt)
  x = constrain(x_BxTxD + out, ('batch', 'length', 'act_embed'))

  h = rms_norm(x, w['post_attention_norm'], cfg.rms_norm_eps)
  x = constrain(x + _mlp_chunks(cfg, w, h, drop), ('batch', 'length', 'act_embed'))
  return x, cache, (k_BxKxTxH, v_BxKxTxH)


def _mlp(cfg: ModelConfig, w: dict[str, jax.Array], h_BxTxD: jax.Array, drop) -> jax.Array:
  _lora = functools.partial(_lora_term, drop=drop)  # pylint: disable=redefined-outer-name
  gate = project(h_BxTxD, w['gate_proj']) + _lora(cfg, w, 'gate', h_BxTxD, 'd', 'f')
  up = project(h_BxTxD, w['up_proj']) + _lora(cfg, w, 'up', h_BxTxD, 'd', 'f')
  act = constrain((jax.nn.silu(gate) * up).astype(h_BxTxD.dtype), ('batch', 'length', 'act_mlp'))
  return (project(act, w['down_proj'])
          + _lora(cfg, w, 'down', act, 'f', 'd')).astype(h_BxTxD.dtype)


def _mlp_chunks(cfg: ModelConfig, w: dict[str, jax.Array], h_BxTxD: jax.Array, drop) -> jax.Array:
  """The MLP, over chunks of `cfg.mlp_chunk` positions where the sequence is
  longer: its [B, T, F] activations (gate and up in f32, their cotangents)
  then exist one chunk at a time in the forward. With `cfg.remat` each
  chunk is also rematerialised in the backward, so the backward holds one
  chunk's too; the remat'd layer's own recompute then skips the chunks'
  forward (only their inputs, h, are kept), so this adds no work. Without
  remat the chunks' activations are kept for the backward, as the whole
  MLP's are. At R1-Zero's 32,768 tokens they were the largest buffers of
  the update pass (8.75 GiB each for Qwen2.5-1.5B's 8 sequences a chip).
  The chunks are of equal size (T = 4,097 in two of 2,049). LoRA dropout
  draws each chunk's mask with the chunk's index folded into the key."""
  B, T, D = h_BxTxD.shape
  if not cfg.mlp_chunk or T <= cfg.mlp_chunk:
    return _mlp(cfg, w, h_BxTxD, drop)
  n = -(-T // cfg.mlp_chunk)
  c = -(-T // n)
  h = jnp.pad(h_BxTxD, ((0, 0), (0, n * c - T), (0, 0)))
  h_NxBxCxD = jnp.moveaxis(h.reshape(B, n, c, D), 1, 0)

  def body(_, xs):
    i, h_BxCxD = xs
    d = drop
    if d is not None:
      d = dict(d, key=jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(d['key']), i)))
    return None, _mlp(cfg, w, constrain(h_BxCxD, ('batch', 'length', 'act_embed')), d)

  if cfg.remat:
    body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable,
                          prevent_cse=False)
  _, out = jax.lax.scan(body, None, (jnp.arange(n), h_NxBxCxD))
  return jnp.moveaxis(out, 0, 1).reshape(B, n * c, D)[:, :T]


class Decoder(nnx.Module):
  """Causal LM. `model(tokens_BxT)` → logits [B, T, V] in f32."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
    self.cfg = cfg
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    pd = jnp.dtype(cfg.param_dtype)
    V, D = cfg.vocab_size, cfg.hidden_size
    self.embed = _param(rngs, 'normal', (V, D), pd, ('vocab', 'embed'))
    self.layers = Layers(cfg, rngs=rngs)
    self.final_norm = _param(rngs, 'ones', (D,), pd, ('norm',))
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, 'normal', (V, D), pd, ('vocab', 'embed'))

  # -- the LM head, kept separate so fused log-prob kernels can consume
  # hidden states without materialising [T, V] logits.
  def head_weight(self) -> jax.Array:
    """LM head in [V, D] layout (the tied embedding when tied)."""
    w = self.embed if self.cfg.tie_embeddings else self.lm_head
    return w.get_value().astype(jnp.dtype(self.cfg.dtype))

  def logits_from_hidden(self, hidden_BxTxD: jax.Array) -> jax.Array:
    logits = jnp.einsum('btd,vd->btv', hidden_BxTxD, self.head_weight(),
                        preferred_element_type=jnp.float32)
    return constrain(logits, ('batch', 'length', 'act_vocab'))

  def init_cache(self, batch: int, length: int) -> Cache:
    """Zeros in the cache's layout (module doc)."""
    c = self.cfg
    L, K, H = c.num_layers, c.num_kv_heads, c.head_dim
    return {'k': jnp.zeros((L, batch, K, H, length), jnp.dtype(c.dtype)),
            'v': jnp.zeros((L, batch, K, length, H), jnp.dtype(c.dtype))}  # distinct buffers

  def hidden(self, tokens_BxT: jax.Array, *,
             positions_BxT: jax.Array | None = None,
             mask_BxT: jax.Array | None = None,
             cache: Cache | None = None,
             cache_index: jax.Array | int = 0,
             cache_mask_BxS: jax.Array | None = None,
             segment_ids_BxT: jax.Array | None = None,
             lora_dropout: tuple[float, jax.Array] | None = None,
             ) -> tuple[jax.Array, Cache | None]:
    """Final (normed) hidden states [B, T, D] and the updated cache.

    Without a cache: a full causal forward; `mask_BxT` marks real tokens
    (False for padding), positions default to the running count of real tokens.
    With `segment_ids_BxT` (packed rows, r1jax/packing.py) a token attends only
    to earlier tokens of its own segment; pass each token's position too.
    With a cache: the T tokens are written at slots [cache_index,
    cache_index + T) and attend to every earlier slot where `cache_mask_BxS` is
    True (the caller keeps that mask; it must include the new slots). For a
    decode step (T = 1) `cache_index` may be [B], a slot per row; the mask
    must then exclude every slot past the row's own.
    `lora_dropout` (rate, key): dropout on the adapters' inputs (training
    forwards of SFT and of on-policy RL updates; a static rate, a key per
    call).
    """
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    B, T = tokens_BxT.shape
    if mask_BxT is None:
      mask_BxT = jnp.ones((B, T), bool)
    if positions_BxT is None:
      positions_BxT = jnp.maximum(jnp.cumsum(mask_BxT, axis=1) - 1, 0)
    x = self.embed.get_value()[tokens_BxT].astype(dt)
    x = constrain(x, ('batch', 'length', 'act_embed'))

    if cache is None:
      mask = attn_lib.Mask(mask_BxT.astype(bool), 0, segment_ids_BxT, segment_ids_BxT)
    else:
      if cache_mask_BxS is None:
        raise ValueError('hidden(): cache_mask_BxS is required with a cache')
      # A cache index per row (decode slots at different lengths) reads up to
      # the furthest slot; each row's own limit is in its cache mask.
      offset = jnp.max(cache_index) if jnp.ndim(cache_index) else cache_index
      mask = attn_lib.Mask(cache_mask_BxS.astype(bool), offset)

    block = lambda w, x, c: _block(  # noqa: E731
        cfg, w, x, positions_BxT, mask, c, cache_index)[:2]
    if cfg.remat:
      block = jax.checkpoint(block)
    weights = self.layers.weights()
    weights.update(_dropout_weights(cfg, lora_dropout))

    if cache is None:
      def body(x, w):
        return block(w, x, None)[0], None
      x, _ = jax.lax.scan(body, x, weights)
      new_cache = None
    else:
      def body(carry, w):
        x, k_all, v_all, i = carry
        x, (k_all, v_all, _) = block(w, x, (k_all, v_all, i))
        return (x, k_all, v_all, i + 1), None
      (x, k_all, v_all, _), _ = jax.lax.scan(
          body, (x, cache["k"], cache["v"], jnp.int32(0)), weights)
      new_cache = {'k': k_all, 'v': v_all}
    return rms_norm(x, self.final_norm.get_value(), cfg.rms_norm_eps), new_cache

  def layer_weights(self) -> list[dict[str, jax.Array]]:
    """Each layer's weights, sliced out of the stacked ones: what a decode
    loop over `decode_blocks` takes, sliced once outside the loop (on XLA's
    CPU backend a slice is a copy, per layer and step inside a scan)."""
    w = self.layers.weights()
    return [jax.tree.map(lambda a, l=l: a[l], w) for l in range(self.cfg.num_layers)]

  def decode_blocks(self, tokens_Bx1: jax.Array, positions_Bx1: jax.Array,
                    layer_weights: list[dict[str, jax.Array]],
                    k_blocks: list[list[jax.Array]], v_blocks: list[list[jax.Array]],
                    slot: jax.Array, key_valid_BxS: jax.Array,
                    ) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """One decode step (T = 1) over a KV cache held as separate block
    buffers, the layers unrolled: k_blocks[l][j] [B, K, H, Sb] and
    v_blocks[l][j] [B, K, Sb, H] hold slots [j·Sb, (j+1)·Sb) of layer l, for
    the blocks filled so far; the token's keys and values are written at
    `slot` (the same for every row), which lies in the last block given.
    `key_valid_BxS` covers the blocks given. The same values as `hidden`
    with a stacked cache whose length is a multiple of Sb (that reads the
    same blocks, attn_lib.decode), without copying blocks or weights out of
    stacked arrays. Returns the final hidden states [B, 1, D] and each
    layer's updated last block (k, v)."""
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    x = constrain(self.embed.get_value()[tokens_Bx1].astype(dt), ('batch', 'length', 'act_embed'))
    start = (len(k_blocks[0]) - 1) * k_blocks[0][0].shape[3]
    last = []

    for w, ks, vs in zip(layer_weights, k_blocks, v_blocks):
      def attend(q, k_new, v_new, ks=ks, vs=vs):
        k_last = jax.lax.dynamic_update_slice(ks[-1], jnp.swapaxes(k_new, 2, 3),
                                              (0, 0, 0, slot - start))
        v_last = jax.lax.dynamic_update_slice(vs[-1], v_new, (0, 0, slot - start, 0))
        last.append((k_last, v_last))
        return attn_lib.decode_blocks(q, ks[:-1] + [k_last], vs[:-1] + [v_last],
                                      key_valid_BxS, slot)
      x = _block(cfg, w, x, positions_Bx1, None, attend=attend)[0]
    return rms_norm(x, self.final_norm.get_value(), cfg.rms_norm_eps), last

  def hidden_with_prefix(self, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                         tokens_NxT: jax.Array,
                         lora_dropout: tuple[float, jax.Array] | None = None,
                         ) -> tuple[jax.Array, jax.Array]:
    """Final hidden states for N = B·G continuations of B prompts, each prompt
    computed once: returns (last prompt position [B, D], continuations
    [N, T, D]). Row n continues prompt n // G. Equivalent to `hidden` on the
    concatenated sequences, without repeating the prompt work G times.
    `lora_dropout` as in `hidden` (the prompt's mask is then shared by the
    G continuations, as its computation is)."""
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    B, P = prompt_BxP.shape
    N, T = tokens_NxT.shape
    G = N // B
    prompt_mask_BxP = prompt_mask_BxP.astype(bool)
    pos_BxP = jnp.maximum(jnp.cumsum(prompt_mask_BxP, axis=1) - 1, 0)
    pos_NxT = jnp.repeat(prompt_mask_BxP.sum(axis=1), G)[:, None] + jnp.arange(T)[None]
    mask_p = attn_lib.Mask(prompt_mask_BxP, 0)
    # Continuation t sits at key slot P + t after the prompt's P slots.
    mask_c = attn_lib.Mask(jnp.concatenate(
        [jnp.repeat(prompt_mask_BxP, G, axis=0), jnp.ones((N, T), bool)], axis=1), P)
    embed = self.embed.get_value()
    xp = constrain(embed[prompt_BxP].astype(dt), ('batch', 'length', 'act_embed'))
    xc = constrain(embed[tokens_NxT].astype(dt), ('batch', 'length', 'act_embed'))

    def body(carry, w):
      xp, xc = carry
      drop_c = w.pop('_lora_dropout_c', None)
      xp, _, kv = _block(cfg, w, xp, pos_BxP, mask_p)
      if drop_c is not None:
        w = dict(w, _lora_dropout=drop_c)
      xc, _, _ = _block(cfg, w, xc, pos_NxT, mask_c, prefix=kv)
      return (xp, xc), None

    if cfg.remat:
      body = jax.checkpoint(body)
    weights = self.layers.weights()
    if lora_dropout is not None:  # independent masks for prompts and continuations
      rate, key = lora_dropout
      weights.update(_dropout_weights(cfg, (rate, jax.random.fold_in(key, 0))))
      cont = _dropout_weights(cfg, (rate, jax.random.fold_in(key, 1)))
      if cont:
        weights['_lora_dropout_c'] = cont['_lora_dropout']
    (xp, xc), _ = jax.lax.scan(body, (xp, xc), weights)
    norm = lambda x: rms_norm(x, self.final_norm.get_value(), cfg.rms_norm_eps)  # noqa: E731
    return norm(xp[:, -1]), norm(xc)

  def __call__(self, tokens_BxT: jax.Array, **kw) -> jax.Array:
    hidden, _ = self.hidden(tokens_BxT, **kw)
    return self.logits_from_hidden(hidden)

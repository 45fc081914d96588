"""Batched group sampling: prefill each prompt once, decode G samples of it.

  prompts [B, P] (left-padded) ──prefill──▶ KV cache [L, B, K, P+T, H]
        ──repeat G──▶ [L, B·G, K, P+T, H] ──lax.while_loop decode──▶ completions [B·G, T]

The loop stops when every sequence has emitted an EOS id or T = max_new_tokens
tokens exist. Row n = b·G + g is sample g of prompt b.

Log-probs returned with the tokens are log softmax(logits / temperature) of the
sampled token — the distribution before top-p/top-k truncation, which is what
the GRPO ratio is taken against (as in TRL and veRL). Greedy (temperature 0)
returns log softmax(logits).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from r1jax.models import Decoder


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
  truncated_N: jax.Array  # bool: no EOS within max_new_tokens
  num_steps: jax.Array  # int32: decode steps actually run (≤ T)


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


def sample_logits(logits_NxV: jax.Array, key: jax.Array, cfg: SamplingConfig
                  ) -> tuple[jax.Array, jax.Array]:
  """Next tokens [N] and their log-probs [N] (see module doc)."""
  logits_NxV = logits_NxV.astype(jnp.float32)
  if cfg.temperature == 0:
    tokens = jnp.argmax(logits_NxV, axis=-1)
    logp_all = jax.nn.log_softmax(logits_NxV, axis=-1)
  else:
    scaled = logits_NxV / cfg.temperature
    logp_all = jax.nn.log_softmax(scaled, axis=-1)
    tokens = jax.random.categorical(key, filter_logits(scaled, cfg.top_p, cfg.top_k))
  logp = jnp.take_along_axis(logp_all, tokens[:, None], axis=-1)[:, 0]
  return tokens.astype(jnp.int32), logp


def generate(model: Decoder, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
             key: jax.Array, cfg: SamplingConfig, group_size: int = 1) -> Rollout:
  """Samples `group_size` completions for each prompt; see the module doc."""
  B, P = prompt_BxP.shape
  G, T = group_size, cfg.max_new_tokens
  N, S = B * G, P + T
  slots = jnp.arange(S)

  prompt_mask_BxP = prompt_mask_BxP.astype(bool)
  prompt_len_B = prompt_mask_BxP.sum(axis=1)
  positions_BxP = jnp.maximum(jnp.cumsum(prompt_mask_BxP, axis=1) - 1, 0)
  prefix_mask_BxS = jnp.pad(prompt_mask_BxP, ((0, 0), (0, T)))
  cache = model.init_cache(B, S)
  hidden, cache = model.hidden(prompt_BxP, positions_BxT=positions_BxP, cache=cache,
                               cache_index=0, cache_mask_BxS=prefix_mask_BxS)
  logits_BxV = model.logits_from_hidden(hidden[:, -1:])[:, 0]

  rep = lambda x, axis=0: jnp.repeat(x, G, axis=axis)  # noqa: E731
  cache = {k: rep(v, axis=1) for k, v in cache.items()}
  prefix_mask_NxS, prompt_len_N = rep(prefix_mask_BxS), rep(prompt_len_B)
  eos = jnp.asarray(cfg.eos_ids or (-1,), jnp.int32)

  def emit(t, token_N, logp_N, state):
    tokens, mask, logp, done = state
    token_N = jnp.where(done, cfg.pad_id, token_N)
    tokens = tokens.at[:, t].set(token_N)
    mask = mask.at[:, t].set(~done)
    logp = logp.at[:, t].set(jnp.where(done, 0.0, logp_N))
    done = done | jnp.isin(token_N, eos)
    return tokens, mask, logp, done

  token_N, logp_N = sample_logits(rep(logits_BxV), jax.random.fold_in(key, 0), cfg)
  out = emit(0, token_N, logp_N, (jnp.full((N, T), cfg.pad_id, jnp.int32),
                                  jnp.zeros((N, T), bool), jnp.zeros((N, T), jnp.float32),
                                  jnp.zeros((N,), bool)))

  def cond(carry):
    t, _, _, out = carry
    return (t < T) & ~jnp.all(out[3])

  def body(carry):
    t, cache, last_N, out = carry
    # Feed token t-1 (slot P+t-1) and sample token t.
    cache_mask = prefix_mask_NxS | ((slots >= P) & (slots < P + t))[None]
    hidden, cache = model.hidden(last_N[:, None], positions_BxT=(prompt_len_N + t - 1)[:, None],
                                 cache=cache, cache_index=P + t - 1, cache_mask_BxS=cache_mask)
    logits = model.logits_from_hidden(hidden)[:, 0]
    token, logp = sample_logits(logits, jax.random.fold_in(key, t), cfg)
    out = emit(t, token, logp, out)
    return t + 1, cache, out[0][:, t], out

  t, _, _, (tokens, mask, logp, done) = jax.lax.while_loop(
      cond, body, (jnp.int32(1), cache, out[0][:, 0], out))
  truncated = ~done
  return Rollout(tokens, mask, logp, truncated, t)


def generate_in_chunks(model: Decoder, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                       key: jax.Array, cfg: SamplingConfig, group_size: int = 1,
                       chunks: int = 1) -> Rollout:
  """`generate` on the prompts in `chunks` sequential parts, each with its own
  KV cache, so the cache's peak is 1/chunks of the whole batch's (R1's
  rollout of 512 prompts x 16 samples x 33k tokens). Chunk r takes prompts
  r, r+R, r+2R, …: with the batch split over devices in contiguous runs, each
  chunk is spread over every device and nothing moves between them. Chunk r
  samples with fold_in(key, r); the rows come back in prompt order."""
  if chunks == 1:
    return generate(model, prompt_BxP, prompt_mask_BxP, key, cfg, group_size)
  B, R, G = prompt_BxP.shape[0], chunks, group_size
  part = lambda x: jnp.swapaxes(x.reshape(B // R, R, *x.shape[1:]), 0, 1)  # noqa: E731
  ro = jax.lax.map(
      lambda a: generate(model, a[0], a[1], jax.random.fold_in(key, a[2]), cfg, G),
      (part(prompt_BxP), part(prompt_mask_BxP), jnp.arange(R)))
  # [R, B/R·G, …] -> [B·G, …]: row n continues prompt n // G, as in generate.
  whole = lambda x: jnp.swapaxes(x.reshape(R, B // R, G, *x.shape[2:]), 0, 1).reshape(  # noqa: E731
      B * G, *x.shape[2:])
  return Rollout(*(whole(x) for x in ro[:4]), ro.num_steps.max())

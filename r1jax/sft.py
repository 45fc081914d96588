"""Supervised next-token training: the base-model pretraining stage, R1's
cold-start SFT and distillation all minimise

  L = - Σ_t m_t log π_θ(x_{t+1} | x_≤t) / Σ_t m_t

over token sequences x with a loss mask m (e.g. 1 on completions only).
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from r1jax import kernels


def next_token_loss(model, tokens_BxT: jax.Array, mask_BxT: jax.Array,
                    loss_mask_BxT: jax.Array, impl: str = 'naive') -> jax.Array:
  """Mean NLL of tokens 1..T-1 where loss_mask is set (mask: real tokens)."""
  B, T = tokens_BxT.shape
  hidden, _ = model.hidden(tokens_BxT[:, :-1], mask_BxT=mask_BxT[:, :-1])
  logp = kernels.token_logprobs(hidden.reshape(B * (T - 1), -1), model.head_weight(),
                                tokens_BxT[:, 1:].reshape(-1), impl=impl).reshape(B, T - 1)
  m = (loss_mask_BxT[:, 1:] & mask_BxT[:, 1:]).astype(jnp.float32)
  return -(logp * m).sum() / jnp.maximum(m.sum(), 1.0)


def make_sft_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation
                  ) -> Callable:
  """Jitted (params, opt_state, tokens, mask, loss_mask) -> (params, opt_state, loss);
  params and opt_state are donated."""
  def step(params, opt_state, tokens, mask, loss_mask):
    loss, grads = jax.value_and_grad(lambda p: next_token_loss(
        nnx.merge(graphdef, p), tokens, mask, loss_mask))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return jax.jit(step, donate_argnums=(0, 1))


def pack_examples(tokenizer, prompts: list[str], completions: list[str], length: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Right-padded [B, length] tokens, mask and loss mask (completion + EOS).

  Each row is BOS? + prompt + completion + EOS; the loss covers the
  completion and its EOS. Rows longer than `length` are an error."""
  B = len(prompts)
  tokens = np.full((B, length), tokenizer.pad_id, np.int32)
  mask = np.zeros((B, length), bool)
  loss_mask = np.zeros((B, length), bool)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    pi, ci = tokenizer.encode(p), tokenizer.encode(c) + [tokenizer.eos_id]
    n = len(pi) + len(ci)
    if n > length:
      raise ValueError(f'example {i} has {n} tokens > {length}')
    tokens[i, :n] = pi + ci
    mask[i, :n] = True
    loss_mask[i, len(pi):n] = True
  return tokens, mask, loss_mask

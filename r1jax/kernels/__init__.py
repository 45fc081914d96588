"""Per-token log-probs from final hidden states and the LM head.

`token_logprobs(hidden, weight, targets)` = log softmax(hidden · weightᵀ)[target]
for hidden [N, D], weight [V, D], targets [N]. The `naive` implementation
materialises the [N, V] logits; it is the reference for the fused kernels.
"""
import jax
import jax.numpy as jnp

IMPLS = ('naive',)


def token_logprobs(hidden_NxD: jax.Array, weight_VxD: jax.Array, targets_N: jax.Array,
                   *, impl: str = 'naive', with_entropy: bool = False
                   ) -> jax.Array | tuple[jax.Array, jax.Array]:
  """log p(target) [N] in f32; with_entropy also returns the entropy [N]."""
  if impl != 'naive':
    raise ValueError(f'logprob impl {impl!r} is not available; known: {IMPLS}')
  logits = jnp.einsum('nd,vd->nv', hidden_NxD, weight_VxD,
                      preferred_element_type=jnp.float32)
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(logp_all, targets_N[:, None], axis=-1)[:, 0]
  if not with_entropy:
    return logp
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  return logp, entropy

"""Per-token log-probs with the LM head sharded over the vocabulary.

With the head weight split over the `tensor` mesh axis into S slices of V/S
rows, each device runs a single-device path (`naive`, `chunked`, `pallas`)
on its slice and the slices are combined per token:

  lse_s   = log Σ_{v in slice s} exp(l_v)        (local log-sum-exp)
  lse     = log Σ_s exp(lse_s)                   (pmax and psum of [N] vectors)
  logp    = l_target - lse                       (l_target: psum over the owning slice)
  entropy = lse - Σ_s exp(lse_s - lse) · (lse_s - H_s)

where H_s is the slice's own entropy. The local log-sum-exp comes out of the
single-device path as l_target_s - log p_s(target_s) for a target clipped into
the slice, so any implementation (with its custom VJP) serves; gradients flow
through the collectives (`jax.shard_map` differentiates them). Only [N]
statistics cross devices, never [N, V] logits.
"""
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def token_logprobs(hidden_NxD: jax.Array, weight_VxD: jax.Array, targets_N: jax.Array,
                   mesh: jax.sharding.Mesh, *, local, axis: str = 'tensor',
                   token_axes: tuple[str, ...] = ('data', 'fsdp'), with_entropy: bool = False):
  """`local(h, w, t, with_entropy=True) -> (logp, entropy)` is the
  single-device path; tokens are split over `token_axes` when they divide N."""
  S = mesh.shape[axis]
  V, N = weight_VxD.shape[0], hidden_NxD.shape[0]
  if V % S:
    raise ValueError(f'vocab-parallel log-probs: vocab size {V} is not divisible by the '
                     f'{axis!r} mesh axis ({S})')
  token_axes = tuple(a for a in token_axes if a in mesh.shape)
  if N % math.prod(mesh.shape[a] for a in token_axes):
    token_axes = ()
  tok = P(token_axes or None)

  def shard(h_NxD, w_VsxD, t_N):
    Vs = w_VsxD.shape[0]
    v0 = jax.lax.axis_index(axis) * Vs
    inside_N = (t_N >= v0) & (t_N < v0 + Vs)
    t_local_N = jnp.where(inside_N, t_N - v0, 0)
    logp_s, ent_s = local(h_NxD, w_VsxD, t_local_N, with_entropy=True)
    target_logit_N = jnp.einsum('nd,nd->n', h_NxD, w_VsxD[t_local_N],
                                preferred_element_type=jnp.float32)
    lse_s = target_logit_N - logp_s
    m = jax.lax.pmax(jax.lax.stop_gradient(lse_s), axis)  # any shift works; it cancels
    lse = m + jnp.log(jax.lax.psum(jnp.exp(lse_s - m), axis))
    logp = jax.lax.psum(jnp.where(inside_N, target_logit_N, 0.0), axis) - lse
    lse_sg, ent_s = jax.lax.stop_gradient(lse_s), jax.lax.stop_gradient(ent_s)
    entropy = jax.lax.stop_gradient(lse) - jax.lax.psum(
        jnp.exp(lse_sg - jax.lax.stop_gradient(lse)) * (lse_sg - ent_s), axis)
    return logp, entropy

  logp, entropy = jax.shard_map(
      shard, mesh=mesh, in_specs=(P(*tok, None), P(axis, None), tok),
      out_specs=(tok, tok))(hidden_NxD, weight_VxD, targets_N.astype(jnp.int32))
  return (logp, entropy) if with_entropy else logp


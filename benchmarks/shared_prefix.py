"""A decode step's attention: G private copies of the prompt's KV (the cache
r1jax uses) vs one shared prompt KV per group plus the samples' own KV.

  python benchmarks/shared_prefix.py [--prompts 4 --group 8 --new-tokens 512]

Per layer, a decode step of B·G rows at cache length P + t attends over the
prompt's P slots and the t completion slots. `copies`: the cache is
[B·G, K, P+T, H] (each sample holds its prompt's KV: what the rollout builds
by repeating the prefill G times, and what continuous batching copies into a
slot). `shared`: the prompt KV is [B, K, P, H], read once per group, and the
completions' [B·G, K, T, H]; the two parts are merged with their
log-sum-exps (an online softmax over two blocks). Both read their whole
arrays (masked past the filled slots), at the midpoint t = T/2 of a rollout. Same GQA shapes as benchmarks/grpo_step.py (2 kv heads
of 64, 2 queries each), f32. Printed: the cache's bytes and the step's time,
for prompts of 32, 512 and 4,096 tokens, the ratios, and the largest difference
between the two layouts' outputs.
"""
import argparse
import math
import time

import jax
import jax.numpy as jnp

K, G_Q, H = 2, 2, 64  # kv heads, queries per kv head, head dim


def _part(q, k, v, valid):
  s = jnp.einsum('bkgh,bksh->bkgs', q, k) / math.sqrt(H)
  s = jnp.where(valid, s, -1e30)
  m = s.max(-1, keepdims=True)
  p = jnp.exp(s - m)
  return jnp.einsum('bkgs,bksh->bkgh', p, v), m[..., 0], p.sum(-1)


def copies(q, k, v, filled):
  out, _, l = _part(q, k, v, jnp.arange(k.shape[2]) < filled)
  return out / l[..., None]


def shared(q, kp, vp, kc, vc, t):
  B, N = kp.shape[0], q.shape[0]
  G = N // B
  qg = q.reshape(B, G, *q.shape[1:]).transpose(0, 2, 1, 3, 4).reshape(B, K, G * G_Q, H)
  op, mp, lp = _part(qg, kp, vp, jnp.ones((kp.shape[2],), bool))
  unq = lambda x: x.reshape(B, K, G, G_Q, *x.shape[3:]).transpose(0, 2, 1, 3, *range(4, x.ndim + 1)).reshape(N, K, G_Q, *x.shape[3:])  # noqa: E501,E731
  op, mp, lp = unq(op), unq(mp), unq(lp)
  oc, mc, lc = _part(q, kc, vc, jnp.arange(kc.shape[2]) < t)
  m = jnp.maximum(mp, mc)
  a, b = jnp.exp(mp - m), jnp.exp(mc - m)
  return (op * a[..., None] + oc * b[..., None]) / (lp * a + lc * b)[..., None]


def _time(f, *a, n=50):
  jax.block_until_ready(f(*a))
  t0 = time.perf_counter()
  for _ in range(n):
    r = f(*a)
  jax.block_until_ready(r)
  return (time.perf_counter() - t0) / n


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--prompts', type=int, default=4)
  parser.add_argument('--group', type=int, default=8)
  parser.add_argument('--new-tokens', type=int, default=512)
  args = parser.parse_args()
  B, G, T = args.prompts, args.group, args.new_tokens
  N, t = B * G, args.new_tokens // 2
  print(f'{B} prompts x G {G}, T {T}, one layer, a decode step at t = {t}, f32')
  print(f'{"prompt":>7} {"copies MiB":>11} {"shared MiB":>11} {"x":>5} {"copies ms":>10} '
        f'{"shared ms":>10} {"speed-up":>9} {"max diff":>9}')
  for P in (32, 512, 4096):
    r = jax.random.split(jax.random.key(P), 4)
    q = jax.random.normal(r[0], (N, K, G_Q, H))
    kp, vp = jax.random.normal(r[1], (B, K, P, H)), jax.random.normal(r[2], (B, K, P, H))
    kc, vc = jax.random.normal(r[3], (N, K, T, H)), jax.random.normal(r[0], (N, K, T, H))
    k = jnp.concatenate([jnp.repeat(kp, G, 0), kc], 2)
    v = jnp.concatenate([jnp.repeat(vp, G, 0), vc], 2)
    a = jax.jit(lambda q, k, v: copies(q, k, v, P + t))
    b = jax.jit(lambda q, kp, vp, kc, vc: shared(q, kp, vp, kc, vc, t))
    diff = float(jnp.abs(a(q, k, v) - b(q, kp, vp, kc, vc)).max())
    ta, tb = _time(a, q, k, v), _time(b, q, kp, vp, kc, vc)
    mib = lambda *xs: sum(x.nbytes for x in xs) / 2**20  # noqa: E731
    ca, cb = mib(k, v), mib(kp, vp, kc, vc)
    print(f'{P:7d} {ca:11.1f} {cb:11.1f} {ca / cb:5.2f} {ta * 1e3:10.2f} {tb * 1e3:10.2f} '
          f'{ta / tb:9.2f} {diff:9.1e}')


if __name__ == '__main__':
  main()

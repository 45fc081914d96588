"""Memory and CPU speed of the log-prob paths (forward + backward).

  python benchmarks/logprob_memory.py

Memory: XLA's compiled `temp_size_in_bytes` for value-and-grad of
Σ token_logprobs(hidden, weight, targets) w.r.t. hidden and weight, at the LM
heads of Qwen2.5-1.5B (N 8192, D 1536, V 151,936) and Llama 3 8B (N 32768,
D 4096, V 128,256), f32 inputs, compiled for this CPU (nothing is executed,
so the sizes are deterministic). f32 because XLA:CPU has no bf16 dot: it
upcasts the operands and hoists an f32 copy of the whole [V, D] weight out of
the chunk loops, which would measure the CPU's missing bf16 support rather
than the algorithm. Speed: wall time of `chunked` vs `naive`,
f32, at a size where `naive` fits, measured in the same run.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import kernels

SIZES = {'qwen2.5-1.5b head': (8192, 1536, 151_936), 'llama3-8b head': (32768, 4096, 128_256)}


def loss_and_grads(impl):
  def f(h, w, t):
    return jax.value_and_grad(
        lambda h, w: kernels.token_logprobs(h, w, t, impl=impl).sum(), argnums=(0, 1))(h, w)
  return f


def temp_bytes(impl, n, d, v, dtype=jnp.float32):
  args = (jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((v, d), dtype),
          jax.ShapeDtypeStruct((n,), jnp.int32))
  return jax.jit(loss_and_grads(impl)).lower(*args).compile().memory_analysis().temp_size_in_bytes


def seconds(fn, *args, reps=5):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  print(f'chunks: {kernels.TOKEN_CHUNK} tokens x {kernels.VOCAB_CHUNK} vocabulary')
  for name, (n, d, v) in SIZES.items():
    naive, chunked = temp_bytes('naive', n, d, v), temp_bytes('chunked', n, d, v)
    print(f'{name} (N {n}, D {d}, V {v}): temp naive {naive / 2**30:.2f} GiB, '
          f'chunked {chunked / 2**30:.3f} GiB = {chunked / naive:.2%} of naive')
  n, d, v = 2048, 512, 32_000
  k = jax.random.split(jax.random.key(0), 3)
  args = (jax.random.normal(k[0], (n, d)), jax.random.normal(k[1], (v, d)) * 0.05,
          jax.random.randint(k[2], (n,), 0, v))
  t = {impl: seconds(jax.jit(loss_and_grads(impl)), *args) for impl in kernels.IMPLS}
  print(f'CPU fwd+bwd at N {n}, D {d}, V {v}, f32: naive {t["naive"] * 1e3:.0f} ms, '
        f'chunked {t["chunked"] * 1e3:.0f} ms = {t["chunked"] / t["naive"]:.2f}x naive')


if __name__ == '__main__':
  main()

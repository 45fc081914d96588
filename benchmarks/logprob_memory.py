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

The `pallas` path is lowered for TPU at the same two sizes (bf16, default
blocks). Where a TPU compiler is installed (`pip install 'jax[tpu]'`; libtpu
compiles for a TPU topology on a host without TPUs), all three paths are also
compiled for one TPU v5p chip in bf16 — Mosaic compiles the kernels — and
their temp memory is printed; nothing runs on a TPU.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import kernels
from r1jax.kernels import pallas_tpu

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


def tpu_kernel_count(n, d, v):
  """Mosaic kernels in value-and-grad lowered for TPU (bf16, default blocks)."""
  args = (jax.ShapeDtypeStruct((n, d), jnp.bfloat16), jax.ShapeDtypeStruct((v, d), jnp.bfloat16),
          jax.ShapeDtypeStruct((n,), jnp.int32))
  f = jax.value_and_grad(
      lambda h, w, t: kernels.token_logprobs(h, w, t, impl='pallas', interpret=False).sum(),
      argnums=(0, 1))
  return jax.jit(f).trace(*args).lower(lowering_platforms=('tpu',)).as_text().count(
      'tpu_custom_call')


def tpu_device():
  """One device of a TPU topology when libtpu can compile for it, else None."""
  try:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    return topologies.get_topology_desc(platform='tpu', topology_name='v5p:2x2x1').devices[0]
  except Exception:  # pylint: disable=broad-except  # no libtpu: lowering only
    return None


def tpu_temp_bytes(device, impl, n, d, v):
  """temp_size_in_bytes of value-and-grad compiled for `device`, bf16 inputs."""
  mesh = jax.sharding.Mesh(np.asarray([device]), ('x',))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  args = (jax.ShapeDtypeStruct((n, d), jnp.bfloat16, sharding=rep),
          jax.ShapeDtypeStruct((v, d), jnp.bfloat16, sharding=rep),
          jax.ShapeDtypeStruct((n,), jnp.int32, sharding=rep))
  def f(h, w, t):
    return jax.value_and_grad(lambda h, w: kernels.token_logprobs(
        h, w, t, impl=impl, **({'interpret': False} if impl == 'pallas' else {})).sum(),
                              argnums=(0, 1))(h, w)
  compiled = jax.jit(f).trace(*args).lower(lowering_platforms=('tpu',)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


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
    plan = ', '.join(f'{k} {bn}x{bv} (~{mib:.0f} MiB VMEM)'
                     for k, (bn, bv, mib) in pallas_tpu.vmem_plan_mib(n, v, d, 2).items())
    print(f'  pallas: value-and-grad lowers for TPU as {tpu_kernel_count(n, d, v)} Mosaic kernels '
          f'(bf16; {plan})')
    device = tpu_device()
    if device is None:
      print('  TPU memory: not measured (no TPU compiler here; pip install "jax[tpu]")')
      continue
    tpu = {impl: tpu_temp_bytes(device, impl, n, d, v) for impl in ('naive', 'chunked', 'pallas')}
    print(f'  compiled for {device.device_kind} (bf16): temp naive {tpu["naive"] / 2**30:.2f} GiB, '
          f'chunked {tpu["chunked"] / 2**30:.3f} GiB = {tpu["chunked"] / tpu["naive"]:.2%}, '
          f'pallas {tpu["pallas"] / 2**30:.3f} GiB = {tpu["pallas"] / tpu["naive"]:.2%} of naive')
  n, d, v = 2048, 512, 32_000
  k = jax.random.split(jax.random.key(0), 3)
  args = (jax.random.normal(k[0], (n, d)), jax.random.normal(k[1], (v, d)) * 0.05,
          jax.random.randint(k[2], (n,), 0, v))
  t = {impl: seconds(jax.jit(loss_and_grads(impl)), *args) for impl in ('naive', 'chunked')}
  print(f'CPU fwd+bwd at N {n}, D {d}, V {v}, f32: naive {t["naive"] * 1e3:.0f} ms, '
        f'chunked {t["chunked"] * 1e3:.0f} ms = {t["chunked"] / t["naive"]:.2f}x naive')


if __name__ == '__main__':
  main()

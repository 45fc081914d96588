"""Full fine-tuning vs LoRA in the GRPO step (issue 17), measured in one run
on this machine: per-device bytes of the train state (params, optimizer
state, reference) and the step's time, on a small Qwen3-shaped model.

  python benchmarks/lora.py [--rank 16] [--steps 3]

The memory of the real sizes comes from the AOT tool (README: qwen3-8b on
v5p-8, full vs LoRA rank 64).
"""
import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from r1jax import grpo, models, sharding as shd, train_step as ts
from r1jax.models import lora
from r1jax.rollout import SamplingConfig

B, G, P, T = 8, 4, 16, 32


def _bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, 'dtype'))


def run(rank: int, steps: int) -> tuple[float, int, int]:
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  cfg = models.get_preset('qwen3-0.6b', vocab_size=2048, hidden_size=256, intermediate_size=768,
                          num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64)
  model = models.create(cfg, seed=0, mesh=mesh)
  if rank:
    model = lora.add(model, rank, 2.0 * rank, ('q', 'k', 'v', 'o', 'gate', 'up', 'down'),
                     mesh=mesh)
  step_cfg = ts.StepConfig(group_size=G, sampling=SamplingConfig(max_new_tokens=T,
                                                                 temperature=1.0),
                           loss=grpo.LossConfig(beta=0.04), reward_names=('r',),
                           reward_weights=(1.0,), lora=bool(rank))
  optimizer = optax.adam(1e-4)
  state = ts.init_state(model, optimizer, step_cfg)
  reward = lambda tokens, mask, ids: (tokens % 2 == 0).mean(1, keepdims=True).astype(np.float32)  # noqa: E731
  step = ts.make_train_step(nnx.graphdef(model), step_cfg, optimizer,
                            ts.make_reward_fn(reward, mesh, 1), mesh, ts.shardings_of(state))
  if rank:
    step = functools.partial(lambda f, base, s, b: f(s, b, base), step,
                             nnx.state(model, nnx.Not(nnx.LoRAParam)))
  rng = np.random.default_rng(0)
  batch = ts.Batch(jnp.asarray(rng.integers(3, cfg.vocab_size, (B, P)), jnp.int32),
                   jnp.ones((B, P), bool), jnp.arange(B, dtype=jnp.int32))
  state_bytes = _bytes((state.params, state.opt_state, state.ref_params))
  base_bytes = _bytes(nnx.state(model, nnx.Not(nnx.LoRAParam))) if rank else 0
  state, m = step(state, batch)  # compiles
  jax.block_until_ready(m['loss'])
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch)
  jax.block_until_ready(m['loss'])
  return (time.perf_counter() - t0) / steps, state_bytes, base_bytes


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rank', type=int, default=16)
  parser.add_argument('--steps', type=int, default=3)
  args = parser.parse_args()
  full_s, full_b, _ = run(0, args.steps)
  lora_s, lora_b, base_b = run(args.rank, args.steps)
  print(f'model: Qwen3-shaped, 4 layers of width 256; step: {B} prompts x {G}, {T} new tokens')
  print(f'full fine-tuning  step {full_s * 1e3:7.1f} ms   train state {full_b / 2**20:8.2f} MiB')
  print(f'LoRA rank {args.rank:<3d}     step {lora_s * 1e3:7.1f} ms   train state '
        f'{lora_b / 2**20:8.2f} MiB (+ the frozen base, a step argument: {base_b / 2**20:.2f} MiB)')
  print(f'LoRA / full: step time {lora_s / full_s:.2f}x, train state {lora_b / full_b:.4f}x, '
        f'resident weights and state {(lora_b + base_b) / full_b:.3f}x')


if __name__ == '__main__':
  main()

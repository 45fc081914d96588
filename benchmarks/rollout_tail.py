"""Continuous batching on a long-tailed length distribution.

  python benchmarks/rollout_tail.py [--prompts 4 --group 16 --new-tokens 1024]
      [--short 64 --long-share 0.1] [--slots 16,8] [--repeats 2]

Real RL lengths are long-tailed: most samples stop within a few hundred
tokens, a few run to the limit. Here each sample's length is set by a
per-sample budget (`generate(..., budget_N=)`): 90 % stop uniformly within
`--short` tokens, 10 % run to `--new-tokens`. The static batch (the default,
rl.decode_slots = 0, as before issue 13.4 but with per-sample keys) decodes
all B·G rows until the longest ends; continuous batching decodes `--slots` rows and
refills each slot from the queue as its sample ends. Same model as
benchmarks/grpo_step.py (Qwen2-shaped, 4 layers, width 256, f32), temperature
1, one process, the variants interleaved; best of `--repeats` timed runs.

Printed per variant: wall seconds, tokens generated per second, decode steps
and row-steps (rows × steps decoded), as ratios to the static batch, and a
check that every variant produced the static batch's tokens.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import models
from r1jax.rollout import SamplingConfig, generate

from grpo_step import CFG  # pylint: disable=g-bad-import-order


def budgets(n, short, long, long_share, seed=0):
  rng = np.random.default_rng(seed)
  b = rng.integers(1, short + 1, n)
  b[rng.permutation(n)[:max(1, round(long_share * n))]] = long
  return jnp.asarray(b, jnp.int32)


def length_args() -> argparse.ArgumentParser:
  """The batch and the long-tailed length distribution (shared with
  benchmarks/packing.py)."""
  parser = argparse.ArgumentParser()
  parser.add_argument('--prompts', type=int, default=4)
  parser.add_argument('--group', type=int, default=16)
  parser.add_argument('--prompt-len', type=int, default=32)
  parser.add_argument('--new-tokens', type=int, default=1024)
  parser.add_argument('--short', type=int, default=64)
  parser.add_argument('--long-share', type=float, default=0.1)
  return parser


def main():
  parser = length_args()
  parser.add_argument('--slots', default='16,8')
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  B, G, P, T = args.prompts, args.group, args.prompt_len, args.new_tokens
  N = B * G
  model = models.create(CFG, seed=0)
  prompt = jnp.asarray(np.random.default_rng(1).integers(3, CFG.vocab_size, (B, P)), jnp.int32)
  mask = jnp.ones((B, P), bool)
  budget = budgets(N, args.short, T, args.long_share)
  cfg = SamplingConfig(max_new_tokens=T, temperature=1.0, eos_ids=(), pad_id=0)
  variants = [0] + [int(s) for s in args.slots.split(',')]
  fns = {z: jax.jit(lambda p, m, z=z: generate(model, p, m, jax.random.key(0), cfg, G,
                                                slots=z, budget_N=budget)) for z in variants}
  out, best = {}, {z: float('inf') for z in variants}
  for z in variants:  # compile
    out[z] = jax.block_until_ready(fns[z](prompt, mask))
  for _ in range(args.repeats):
    for z in variants:
      t0 = time.perf_counter()
      jax.block_until_ready(fns[z](prompt, mask))
      best[z] = min(best[z], time.perf_counter() - t0)
  tokens = int(out[0].mask_NxT.sum())
  lengths = np.asarray(out[0].mask_NxT.sum(1))
  print(f'{N} samples ({B} prompts x G {G}), prompt {P}, budget {T}: lengths median '
        f'{int(np.median(lengths))}, max {lengths.max()}, {tokens} tokens in all '
        f'({tokens / (N * T):.1%} of N x T)')
  print(f'{"variant":>14} {"wall s":>8} {"tok/s":>8} {"x static":>9} {"steps":>6} '
        f'{"row-steps":>10} {"same tokens":>12}')
  for z in variants:
    ro = out[z]
    same = bool(np.array_equal(ro.tokens_NxT, out[0].tokens_NxT)
                and np.array_equal(ro.mask_NxT, out[0].mask_NxT))
    rows = N if z == 0 else z
    name = 'static' if z == 0 else f'{z} slots'
    print(f'{name:>14} {best[z]:8.2f} {tokens / best[z]:8.0f} {best[0] / best[z]:9.2f} '
          f'{int(ro.num_steps):6d} {rows * int(ro.num_steps):10d} {str(same):>12}')


if __name__ == '__main__':
  main()

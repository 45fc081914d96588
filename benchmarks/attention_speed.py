"""Speed of the blockwise attention's two forms in the training passes: the
causal tiles against every tile (issue 13).

  python benchmarks/attention_speed.py [--lengths 512,2048,4064] [--reps 3]

Where the query offset is static (every teacher-forced pass), blockwise
attention cuts the queries into chunks aligned to the key blocks and reads,
for chunk c, key blocks 0..c only: n(n+1)/2 tiles of n². The form it
replaces reads every key block for every query (what a traced offset still
takes). Both are timed here in one process, interleaved, on the model of
benchmarks/grpo_step.py (f32, this machine's CPU): the reference pass (Σ of
the completion log-probs of G samples of one 32-token prompt) and the update
pass (its gradient with respect to the parameters), at each completion
length T, best of --reps runs each. Both forms give the same log-probs and
gradients up to float rounding (the largest difference, relative to the
largest value of each array, is printed; tests/attention_test.py checks both
against the dense path).
"""
import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_step  # noqa: E402  pylint: disable=wrong-import-position

from r1jax import models, train_step as ts  # noqa: E402  pylint: disable=wrong-import-position
from r1jax.kernels import attention as at  # noqa: E402  pylint: disable=wrong-import-position

P = 32


def compiled_passes(T: int, G: int, causal_tiles: bool):
  cfg = grpo_step.CFG.replace(max_position_embeddings=max(4096, P + T + 1), attention='blockwise')
  graphdef, params = nnx.split(models.Decoder(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(rng.integers(0, cfg.vocab_size, (1, P)), jnp.int32)
  mask = jnp.ones((1, P), bool)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (G, T)), jnp.int32)

  def score(params):
    return ts.completion_logprobs(nnx.merge(graphdef, params), prompt, mask, tokens, 1.0).sum()

  original = at.blockwise
  at.blockwise = functools.partial(original, causal_tiles=causal_tiles)
  try:  # traced (and so compiled) with this form
    passes = {'reference': jax.jit(score).lower(params).compile(),
              'update': jax.jit(jax.grad(score)).lower(params).compile()}
  finally:
    at.blockwise = original
  return passes, params


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--lengths', default='512,2048,4064')
  parser.add_argument('--group', type=int, default=2)
  parser.add_argument('--reps', type=int, default=3)
  args = parser.parse_args()
  print(f'model of grpo_step.py, f32, {args.group} completions of T tokens after a {P}-token '
        f'prompt, key blocks of {models.ModelConfig.attention_block}; best of {args.reps}')
  print(f'{"T":>6} {"pass":>10} {"every tile":>11} {"causal tiles":>13} {"speed-up":>9} '
        f'{"max rel diff":>13}')
  for T in (int(x) for x in args.lengths.split(',')):
    forms = {c: compiled_passes(T, args.group, c) for c in (False, True)}
    for name in ('reference', 'update'):
      outs = {c: jax.block_until_ready(forms[c][0][name](forms[c][1])) for c in forms}
      diff = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) for a, b in
                 zip(jax.tree.leaves(outs[False]), jax.tree.leaves(outs[True])))
      best = {c: float('inf') for c in forms}
      for _ in range(args.reps):
        for c in forms:
          t0 = time.perf_counter()
          jax.block_until_ready(forms[c][0][name](forms[c][1]))
          best[c] = min(best[c], time.perf_counter() - t0)
      print(f'{T:>6} {name:>10} {best[False]:>10.3f}s {best[True]:>12.3f}s '
            f'{best[False] / best[True]:>8.2f}x {diff:>13.1e}', flush=True)


if __name__ == '__main__':
  main()

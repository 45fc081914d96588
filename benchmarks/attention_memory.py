"""Memory of the scoring forward + backward as completions grow, dense vs
linear-memory attention (issue 13).

  python benchmarks/attention_memory.py [--lengths 4096,8192,16384]

XLA's compiled `temp_size_in_bytes` for value-and-grad (w.r.t. the
parameters) of Σ completion_logprobs — the update pass: a shared prompt of
64 tokens, one completion of T tokens, the tiny preset (f32), chunked
log-probs — compiled for this CPU (nothing runs, so the sizes are
deterministic). Printed per length, with the ratio to the previous length:
linear memory grows ≤ 2.2× per doubling, dense [T, S] scores ~4×. (That
the same pass lowers to the splash kernels on TPU is a test:
tests/attention_test.py.)
"""
import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax import models, train_step as ts

P = 64


def temp_bytes(attention: str, T: int) -> int:
  cfg = models.get_preset('tiny', max_position_embeddings=P + T + 1, attention=attention)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0))))

  def loss(params, prompt, prompt_mask, tokens):
    model = nnx.merge(graphdef, params)
    return ts.completion_logprobs(model, prompt, prompt_mask, tokens, 1.0, impl='chunked').sum()

  args = (params, jax.ShapeDtypeStruct((1, P), jnp.int32), jax.ShapeDtypeStruct((1, P), bool),
          jax.ShapeDtypeStruct((1, T), jnp.int32))
  compiled = jax.jit(jax.grad(loss)).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--lengths', default='4096,8192,16384')
  parser.add_argument('--dense-up-to', type=int, default=8192,
                      help='dense is compiled only up to this length (its [T, S] scores)')
  args = parser.parse_args()
  lengths = [int(x) for x in args.lengths.split(',')]
  print(f'tiny preset, f32, prompt {P} + completion T, grad of Σ log-probs; compiled temp memory')
  print(f'{"T":>7} {"blockwise MiB":>14} {"x prev":>7} {"dense MiB":>10} {"x prev":>7} '
        f'{"blockwise/dense":>16}')
  prev_b = prev_d = None
  for T in lengths:
    b = temp_bytes('blockwise', T)
    d = temp_bytes('dense', T) if T <= args.dense_up_to else None
    row = f'{T:>7} {b / 2**20:>14.1f} {b / prev_b if prev_b else float("nan"):>7.2f} '
    row += (f'{d / 2**20:>10.1f} {d / prev_d if prev_d else float("nan"):>7.2f} '
            f'{b / d:>16.3f}' if d else f'{"-":>10} {"-":>7} {"-":>16}')
    print(row, flush=True)
    prev_b, prev_d = b, d


if __name__ == '__main__':
  main()

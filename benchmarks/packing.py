"""The update pass with packed rows vs padded rows, on the same lengths.

  python benchmarks/packing.py [--prompts 4 --group 16 --new-tokens 1024]
      [--short 64 --long-share 0.1] [--rows 4] [--repeats 2] [--attention-block 512]

Completions with the long-tailed lengths of benchmarks/rollout_tail.py (90 %
within `--short` tokens, 10 % at `--new-tokens`), and, for contrast, all at
`--new-tokens`. Padded: the step's path without rl.pack — the G completions
of a prompt share one prompt prefill, every row is T long, micro-batches of
`--micro` prompts. Packed (rl.pack): each sample's prompt ++ completion in
best-fit rows of P + T - 1 slots, `--rows` rows a forward, as many forwards
as the rows need. Both compute the GRPO loss (seq_mean, β 0.04 against a
reference log-prob) and its gradient with the step's functions
(train_step.completion_logprobs / packed_logprobs, grpo.policy_loss); same
model as benchmarks/grpo_step.py, f32, one process, interleaved, best of
`--repeats`. Also checked: both give the same loss.
"""
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax import grpo, models, packing
from r1jax.train_step import completion_logprobs, packed_logprobs

from grpo_step import CFG  # pylint: disable=g-bad-import-order
from rollout_tail import budgets, length_args  # pylint: disable=g-bad-import-order

LOSS = grpo.LossConfig(beta=0.04)


def padded_update(graphdef, B, G, micro):
  def loss_fn(params, prompt, pmask, tokens, mask, adv, ref, norm):
    model = nnx.merge(graphdef, params)
    logp = completion_logprobs(model, prompt, pmask, tokens, 1.0, impl='chunked')
    return grpo.policy_loss(logp, jax.lax.stop_gradient(logp), ref, adv, mask, LOSS, norm)[0]

  def update(params, prompt, pmask, tokens, mask, adv, ref):
    n, T = mask.shape
    norm = grpo.Normalisers(n, jnp.maximum(mask.sum(), 1), T)
    parts = B // micro
    split = lambda x: x.reshape(parts, x.shape[0] // parts, *x.shape[1:])  # noqa: E731
    grad = jax.value_and_grad(loss_fn)
    zeros = jax.tree.map(jnp.zeros_like, (jnp.float32(0), params))

    def body(acc, xs):
      return jax.tree.map(jnp.add, acc, grad(params, *xs, norm)), None
    out, _ = jax.lax.scan(body, zeros, tuple(map(split, (prompt, pmask, tokens, mask, adv, ref))))
    return out
  return jax.jit(update)


def packed_update(graphdef, rows_per_forward):
  def loss_fn(params, fwd, per, n):
    model = nnx.merge(graphdef, params)
    logp = packed_logprobs(model, fwd, 1.0, impl='chunked')
    return grpo.policy_loss(logp, jax.lax.stop_gradient(logp), per['ref'], per['adv'],
                            per['mask'], LOSS, weights_NxT=per['w'],
                            segments=(fwd.segments_RxL, n + 1))[0]

  def update(params, prompt, pmask, tokens, mask, adv, ref):
    n, T = mask.shape
    rows = packing.pack(prompt, pmask, tokens, mask, n)
    to = lambda x, fill=0.0: packing.to_rows(x, rows, fill)  # noqa: E731
    per = dict(mask=to(mask, False), adv=to(jnp.broadcast_to(adv[:, None], (n, T))),
               ref=to(ref), w=to(grpo.token_weights(mask, LOSS.loss_agg)))
    m, L = rows_per_forward, rows.tokens_RxL.shape[1]
    split = lambda x: x.reshape(n // m, m, L)  # noqa: E731
    fields = [split(x) for x in rows[:4]]
    per = jax.tree.map(split, per)
    grad = jax.value_and_grad(loss_fn)

    def body(i, acc):
      fwd = packing.Rows(*(x[i] for x in fields), slot_NxT=None, rows=None)
      return jax.tree.map(jnp.add, acc, grad(params, fwd, jax.tree.map(lambda x: x[i], per), n))
    zeros = jax.tree.map(jnp.zeros_like, (jnp.float32(0), params))
    used = rows.rows[0]  # one shard
    return jax.lax.fori_loop(0, (used + m - 1) // m, body, zeros), used
  return jax.jit(update)


def main():
  parser = length_args()
  parser.add_argument('--micro', type=int, default=1, help='prompts per padded micro-batch')
  parser.add_argument('--rows', type=int, default=4, help='packed rows per forward')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--attention-block', type=int, default=CFG.attention_block)
  args = parser.parse_args()
  B, G, P, T = args.prompts, args.group, args.prompt_len, args.new_tokens
  N = B * G
  model = models.create(dataclasses.replace(CFG, attention_block=args.attention_block), seed=0)
  graphdef, params = nnx.split(model)
  r = np.random.default_rng(1)
  prompt = jnp.asarray(r.integers(3, CFG.vocab_size, (B, P)), jnp.int32)
  pmask = jnp.ones((B, P), bool)
  tokens = jnp.asarray(r.integers(3, CFG.vocab_size, (N, T)), jnp.int32)
  adv = jnp.asarray(r.normal(size=N), jnp.float32)
  ref = jnp.asarray(-5 + 0.1 * r.normal(size=(N, T)), jnp.float32)
  padded, packed = padded_update(graphdef, B, G, args.micro), packed_update(graphdef, args.rows)
  print(f'{N} samples ({B} prompts x G {G}), prompt {P}, T {T}; padded micro-batches of '
        f'{args.micro} prompts, packed forwards of {args.rows} rows of {P + T - 1}')
  print(f'{"lengths":>12} {"tokens":>7} {"rows":>5} {"padded s":>9} {"packed s":>9} '
        f'{"speed-up":>9} {"loss diff":>10}')
  for name, lengths in [('long-tailed', np.asarray(budgets(N, args.short, T, args.long_share))),
                        ('all T', np.full(N, T))]:
    mask = jnp.asarray(np.arange(T)[None] < lengths[:, None])
    a = (params, prompt, pmask, jnp.where(mask, tokens, 0), mask, adv, ref)
    (l1, _), ((l2, _), rows) = jax.block_until_ready((padded(*a), packed(*a)))
    best = [float('inf')] * 2
    for _ in range(args.repeats):
      for i, f in enumerate((padded, packed)):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*a))
        best[i] = min(best[i], time.perf_counter() - t0)
    print(f'{name:>12} {int(mask.sum()):7d} {int(rows):5d} {best[0]:9.2f} {best[1]:9.2f} '
          f'{best[0] / best[1]:9.2f} {abs(float(l1) - float(l2)):10.1e}')


if __name__ == '__main__':
  main()

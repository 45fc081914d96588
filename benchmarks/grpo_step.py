"""Speed of one GRPO step on this machine, as a fraction of its own matmul peak.

  python benchmarks/grpo_step.py [--steps 3] [--prompts 8 --group 8 --new-tokens 64]
      [--attention auto|dense|blockwise] [--grad-accum A] [--dtype float32|bfloat16]
      [--compare [--baseline 714ff0e|dense|trl|trl-no-ckpt [--trl-python PY]]]

Model: Qwen2-shaped, 4 layers, width 256, 4 heads, 2 KV heads, MLP 768, vocab
512, f32. Batch: 8 prompts (32 tokens) x G 8 x exactly 64 new tokens (no EOS),
β 0.04, μ 1, AdamW (the long-completion shape of issue 13: --prompts 4
--new-tokens 512). `--compare` runs the step of the code before issue 13 (`--baseline`,
default its commit 714ff0e: the main the issue measured, taken from this
checkout's git history with `git archive` into a temporary directory and run
with this shape) and of this checkout (`auto`), each in its own process,
interleaved (baseline, auto, baseline, auto), and prints the ratios and each
process's peak RSS; `--baseline dense` takes this checkout with
`attention=dense` instead (the attention paths alone); `--baseline trl`
runs TRL's GRPOTrainer on the same work instead (benchmarks/trl_step.py,
with `--trl-python`, an interpreter that has torch and trl). `--grad-accum A`
gives the `auto` runs A micro-batches per update (the whole step's
rl.grad_accum, and the timed update phase split alike); the baseline runs
stay at 1. FLOPs are counted analytically (matmuls and attention over
the causal context actually needed; nothing for masked cache slots), and the
roofline is an f32 GEMM measured in the same run, so the ratios do not depend
on how busy the machine is (with `--dtype bfloat16`, bf16 matmuls on f32
weights, the fractions are still of that f32 roofline; `--baseline dense`
runs in that dtype too, the other baselines in f32).

Printed: seconds per step and the split rollout / reference / update, each as
a fraction of the roofline. The phases are timed as separately compiled
functions with the step's own code; the whole step is timed as compiled.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from r1jax import grpo, models, sharding as shd, train_step as ts
from r1jax.rollout import SamplingConfig, generate

B, G, P, T = 8, 8, 32, 64  # set from the flags in main()
CFG = models.ModelConfig(arch='qwen2', vocab_size=512, hidden_size=256, intermediate_size=768,
                         num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64, qkv_bias=True,
                         tie_embeddings=True)


def forward_flops(cfg, tokens, context_sum, logit_rows):
  """Matmul FLOPs of a forward pass: `tokens` positions whose attention spans
  `context_sum` key positions in total, and `logit_rows` LM-head rows."""
  D, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
  N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  dense = 2 * L * (D * (N + 2 * K) * H + N * H * D + 3 * D * F)
  return tokens * dense + 4 * L * N * H * context_sum + 2 * D * V * logit_rows


def phase_flops(cfg):
  n = B * G
  prefill = forward_flops(cfg, B * P, B * P * (P + 1) // 2, B)
  decode_ctx = n * sum(P + t + 1 for t in range(T - 1))
  rollout = prefill + forward_flops(cfg, n * (T - 1), decode_ctx, n * (T - 1))
  # Scoring: prompts once per group, completions attend to prompt + prefix.
  score = (forward_flops(cfg, B * P, B * P * (P + 1) // 2, 0)
           + forward_flops(cfg, n * (T - 1), decode_ctx, n * T))
  return {'rollout': rollout, 'reference': score, 'update': 3 * score}


def matmul_peak(n=2048, reps=5):
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  best = min(_time(lambda: f(a, b).block_until_ready()) for _ in range(reps))
  return 2 * n**3 / best


def _time(fn):
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def even_share(tokens, mask, ids):
  return ((tokens % 2 == 0) & mask).sum(1, keepdims=True).astype(np.float32) / np.maximum(
      mask.sum(1, keepdims=True), 1)


BASELINE = '714ff0e'  # main when issue 13 was filed
_RUN_OLD = r"""
import importlib.util, json, re, resource, sys
root, B, G, T, steps = sys.argv[1], *map(int, sys.argv[2:6])
sys.path.insert(0, root)
spec = importlib.util.spec_from_file_location('old', root + '/benchmarks/grpo_step.py')
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
assert m.__file__.startswith(root) and sys.modules['r1jax'].__file__.startswith(root)
m.B, m.G, m.T = B, G, T
lines = []
m.print = lambda *a, **k: lines.append(' '.join(map(str, a)))
sys.argv = ['grpo_step.py', f'--steps={steps}']
m.main()
out = {k: float(v) / 1e3 for line in lines
       for k, v in re.findall(r'^\s*(rollout|reference|update|step):\s+([\d.]+) ms', line)}
print(json.dumps({**out, 'rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _baseline_tree(commit: str, tmp: str) -> str:
  """The repository at `commit`, unpacked into `tmp` (git archive)."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    archive = subprocess.run(['git', '-C', repo, 'archive', commit], capture_output=True,
                             check=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    raise SystemExit(f'--baseline {commit}: not in this checkout\'s git history ({e}); '
                     'use a clone with history, or --baseline dense') from e
  subprocess.run(['tar', '-x', '-C', tmp], input=archive, check=True)
  return tmp


def compare(args):
  """The baseline and this checkout, each in a fresh process (its own peak
  RSS), twice, interleaved; the better of each pair's two runs."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  shape = [f'--steps={args.steps}', f'--prompts={args.prompts}', f'--group={args.group}',
           f'--new-tokens={args.new_tokens}']
  new = [sys.executable, __file__, '--json', *shape, f'--grad-accum={args.grad_accum}',
         f'--dtype={args.dtype}']
  with tempfile.TemporaryDirectory() as tmp:
    if args.baseline == 'dense':
      old = [sys.executable, __file__, '--json', *shape, '--attention=dense',
             f'--dtype={args.dtype}']
      name = 'dense (this checkout, attention=dense)'
    elif args.baseline in ('trl', 'trl-no-ckpt'):
      ckpt = 'off' if args.baseline == 'trl-no-ckpt' else 'on'
      old = [args.trl_python or sys.executable, os.path.join(os.path.dirname(__file__), 'trl_step.py'),
             '--json', f'--gradient-checkpointing={ckpt}', *shape]
      name = f"TRL's GRPOTrainer (gradient checkpointing {ckpt})"
    else:
      old = [sys.executable, '-c', _RUN_OLD, _baseline_tree(args.baseline, tmp),
             str(args.prompts), str(args.group), str(args.new_tokens), str(args.steps)]
      name = f'main at {args.baseline}' + (' (before issue 13)' if args.baseline == BASELINE else '')
    runs = {'old': [], 'new': []}
    for _ in range(2):
      for which, cmd in (('old', old), ('new', new)):
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if done.returncode:
          raise SystemExit(f'{" ".join(cmd[:2])} failed:\n{done.stderr[-3000:]}')
        out = done.stdout
        runs[which].append(json.loads(out.strip().splitlines()[-1]))
  best = {a: {k: min(r[k] for r in rs) for k in rs[0]} for a, rs in runs.items()}
  old, new = best['old'], best['new']
  print(f'{args.prompts} prompts x G {args.group} x {args.new_tokens} new tokens; {name} vs '
        f'this checkout (grad_accum {args.grad_accum}, {args.dtype} matmuls), best of 2 '
        'interleaved runs each')
  for k in ('rollout', 'reference', 'update', 'step'):
    print(f'{k:>9}: {old[k] * 1e3:8.1f} ms -> {new[k] * 1e3:8.1f} ms  {old[k] / new[k]:5.2f}x faster')
  print(f'{"peak RSS":>9}: {old["rss_mib"]:8.0f} MiB -> {new["rss_mib"]:8.0f} MiB  '
        f'{new["rss_mib"] / old["rss_mib"]:5.2f}x')


def main():
  global B, G, T, CFG  # pylint: disable=global-statement
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--prompts', type=int, default=8)
  parser.add_argument('--group', type=int, default=8)
  parser.add_argument('--new-tokens', type=int, default=64)
  parser.add_argument('--attention', default='auto')
  parser.add_argument('--grad-accum', type=int, default=1,
                      help='micro-batches per update (rl.grad_accum): activations of B/A prompts')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help="the matmuls' dtype (model.dtype; weights stay f32); with --compare, "
                           "this checkout's runs only")
  parser.add_argument('--compare', action='store_true')
  parser.add_argument('--baseline', default=BASELINE,
                      help="--compare's baseline: a commit of this repository, 'dense', or "
                           "'trl' / 'trl-no-ckpt' (TRL's GRPOTrainer, benchmarks/trl_step.py, "
                           'with gradient checkpointing on, its default, or off)')
  parser.add_argument('--trl-python', default='',
                      help="the interpreter with torch and trl for --baseline trl (default: this one)")
  parser.add_argument('--json', action='store_true', help='one JSON line of seconds (for --compare)')
  args = parser.parse_args()
  if args.compare:
    return compare(args)
  B, G, T = args.prompts, args.group, args.new_tokens
  CFG = CFG.replace(attention=args.attention, dtype=args.dtype,
                    max_position_embeddings=max(4096, P + T))

  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  sampling = SamplingConfig(max_new_tokens=T, temperature=1.0, eos_ids=())
  A = args.grad_accum
  if B % A:
    raise SystemExit(f'--grad-accum {A} must divide --prompts {B}')
  cfg = ts.StepConfig(group_size=G, sampling=sampling, loss=grpo.LossConfig(beta=0.04),
                      reward_names=('even',), reward_weights=(1.0,), grad_accum=A)
  model = models.create(CFG, seed=0, mesh=mesh)
  optimizer = optax.adamw(1e-5)
  state = ts.init_state(model, optimizer, cfg)
  graphdef = nnx.graphdef(model)
  step = ts.make_train_step(graphdef, cfg, optimizer,
                            ts.make_reward_fn(even_share, mesh, 1), mesh, ts.shardings_of(state))
  rng = np.random.default_rng(0)
  batch = ts.Batch(jnp.asarray(rng.integers(0, 512, (B, P)), jnp.int32),
                   jnp.ones((B, P), bool), jnp.arange(B, dtype=jnp.int32))

  # Phases, compiled on their own.
  rollout = jax.jit(lambda p, key: generate(nnx.merge(graphdef, p), batch.prompt_BxP,
                                            batch.prompt_mask_BxP, key, sampling, G))
  ro = rollout(state.params, jax.random.key(0))
  tokens = ro.tokens_NxT
  score = jax.jit(lambda p: ts.completion_logprobs(
      nnx.merge(graphdef, p), batch.prompt_BxP, batch.prompt_mask_BxP, tokens, 1.0))
  adv = jnp.asarray(rng.normal(size=B * G), jnp.float32)
  ref_logp = score(state.params)

  def update(params, opt_state):
    def loss(params, part):
      prompt, pmask, toks, mask, ref, a, w = part
      logp = ts.completion_logprobs(nnx.merge(graphdef, params), prompt, pmask, toks, 1.0)
      return grpo.policy_loss(logp, jax.lax.stop_gradient(logp), ref, a, mask, cfg.loss,
                              weights_NxT=w)[0]
    # A micro-batches of B/A prompts and their G completions, gradients
    # summed; the tokens' loss weights are the whole batch's.
    weights = grpo.token_weights(ro.mask_NxT, cfg.loss.loss_agg, None)
    parts = tuple(x.reshape(A, -1, *x.shape[1:]) for x in (
        batch.prompt_BxP, batch.prompt_mask_BxP, tokens, ro.mask_NxT, ref_logp, adv, weights))
    def accumulate(total, part):  # one gradient tree held, as the train step's
      return jax.tree.map(jnp.add, total, jax.grad(loss)(params, part)), None
    grads = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params), parts)[0]
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  update = jax.jit(update)

  def timed(fn, *a):
    jax.block_until_ready(fn(*a))  # compile
    return float(np.median([_time(lambda: jax.block_until_ready(fn(*a)))
                            for _ in range(args.steps)]))

  peak = matmul_peak()
  flops = phase_flops(CFG)
  seconds = {'rollout': timed(rollout, state.params, jax.random.key(1)),
             'reference': timed(score, state.params),
             'update': timed(update, state.params, state.opt_state)}
  state, m = step(state, batch)  # compile + one step
  assert int(m['tokens']) == B * G * T, 'EOS must be suppressed'
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  whole = float(np.median(times))
  peak_after = matmul_peak()
  peak = max(peak, peak_after)
  if args.json:
    import json  # pylint: disable=g-import-not-at-top
    import resource  # pylint: disable=g-import-not-at-top
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({**seconds, 'step': whole, 'rss_mib': rss}))
    return

  print(f'{args.dtype} matmuls; matmul roofline (f32 2048^3 GEMM, best of both ends of the run): '
        f'{peak / 1e9:.0f} GFLOP/s')
  total = sum(flops.values())
  for name in ('rollout', 'reference', 'update'):
    s = seconds[name]
    print(f'{name:>9}: {s * 1e3:8.1f} ms  {flops[name] / 1e9:6.2f} GFLOP  '
          f'{flops[name] / s / peak:6.1%} of roofline')
  print(f'{"sum":>9}: {sum(seconds.values()) * 1e3:8.1f} ms')
  print(f'{"step":>9}: {whole * 1e3:8.1f} ms  {total / 1e9:6.2f} GFLOP  '
        f'{total / whole / peak:6.1%} of roofline  '
        f'({B * G * T / whole:.0f} generated tokens/s)')


if __name__ == '__main__':
  main()

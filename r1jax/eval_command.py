"""`python -m r1jax.evaluate --config=configs/eval.py:ckpt=DIR`: the
checkpoint, its steps, the benchmarks and the output files (the sampling,
scoring and metrics are evaluate.py's, shared with the training loop)."""
import json
import os
import sys
import time
from typing import Callable

import jax
from etils import epath
from flax import nnx

from r1jax import base, config as rc, estimators, evaluate as ev, export, metrics, models
from r1jax import sharding as shd
from r1jax import tokenizer as tk, workdir as wd
from r1jax.data import benchmarks as bm, load_split
from r1jax.rewards import RewardScorer, programs
from r1jax.rollout import SamplingConfig


def validate(c) -> None:
  """Names the first bad key, before anything loads or compiles."""
  def need(ok, key, message):
    if not ok:
      raise rc.ConfigError(key, message)
  need('benchmarks' in c, 'benchmarks', 'none: a training config (run it with python -m '
       'r1jax.launch); this command takes configs/eval.py or configs/rejection.py')
  need(isinstance(c.k, int) and c.k >= 1, 'k', f'{c.k!r}: samples per question, an integer >= 1')
  need(all(isinstance(j, int) and 1 <= j <= c.k for j in c.pass_k), 'pass_k',
       f'{c.pass_k!r}: integers from 1 to k = {c.k}')
  need(0 <= c.temperature <= 100, 'temperature', f'{c.temperature!r}: in [0, 100]')
  need(0 < c.top_p <= 1, 'top_p', f'{c.top_p!r}: in (0, 1]')
  need(isinstance(c.max_new_tokens, int) and c.max_new_tokens >= 1, 'max_new_tokens',
       f'{c.max_new_tokens!r}: an integer >= 1')
  need(isinstance(c.max_prompt_len, int) and c.max_prompt_len >= 0, 'max_prompt_len',
       f'{c.max_prompt_len!r}: an integer >= 0 (0: the longest prompt)')
  need(isinstance(c.batch_size, int) and c.batch_size >= 1, 'batch_size',
       f'{c.batch_size!r}: an integer >= 1')
  need(c.prompt in ('r1_zero', 'chat'), 'prompt', f"{c.prompt!r}: 'r1_zero' or 'chat'")
  # The keys these commands share with training configs, checked alike.
  rc.check_keys(c, ('seed', 'distributed', 'model.name', 'model.ckpt', 'model.param_dtype',
                    'model.dtype', 'model.attention', 'tokenizer', 'mesh.data', 'mesh.fsdp',
                    'mesh.tensor', 'mesh.dcn_data', 'data_dir', 'reward_timeout_s',
                    'reward_workers'))
  rc.validate_attention(c.model)
  need(isinstance(c.decode_slots, int) and c.decode_slots >= 0, 'decode_slots',
       f'{c.decode_slots!r}: an integer >= 0 (0: a static batch)')
  need(c.decode_slots == 0 or c.decode_slots < c.batch_size * c.k, 'decode_slots',
       f'{c.decode_slots} slots for {c.batch_size * c.k} samples a batch (0: static)')
  steps = str(c.steps)
  need(steps in ('latest', 'all') or all(s.strip().isdigit() for s in steps.split(',')),
       'steps', f"{steps!r}: 'latest', 'all' or step numbers ('20,40')")
  need(len(c.benchmarks) > 0, 'benchmarks', 'no benchmark to evaluate (bench=name:format:path)')
  for name, b in c.benchmarks.items():
    key = f'benchmarks.{name}'
    need(b.get('format') in bm.FORMATS, f'{key}.format',
         f'{b.get("format")!r}: one of {sorted(bm.FORMATS)}')
    builtin = b['format'] in ('arithmetic', 'countdown', 'general') and not b.get('path')
    need(builtin or b.get('path'), f'{key}.path', 'a .jsonl or .parquet file (only the '
         'built-in tasks arithmetic, countdown and general have none)')
    if not builtin:
      need(str(b['path']).endswith(('.jsonl', '.parquet')), f'{key}.path',
           f'{b["path"]}: a .jsonl or .parquet file')
      need(epath.Path(b['path']).exists(), f'{key}.path', f'{b["path"]}: no such file')
    unknown = set(b.get('fields', {})) - set(bm.FORMATS[b['format']].fields)
    need(not unknown, f'{key}.fields', f'{sorted(unknown)}: format {b["format"]!r} maps only '
         f'{sorted(bm.FORMATS[b["format"]].fields)}')
    need(b.get('split', 'test') in ('train', 'test'), f'{key}.split',
         f"{b.get('split')!r}: 'train' or 'test' (a built-in task's split)")
    need(b.get('prompt', '') in ('', 'r1_zero', 'chat'), f'{key}.prompt',
         f"{b.get('prompt')!r}: '', 'r1_zero' or 'chat'")
    need(isinstance(b.get('limit', 0), int) and b.get('limit', 0) >= 0, f'{key}.limit',
         f'{b.get("limit")!r}: an integer >= 0 (0: all)')


def checkpoint(c) -> tuple[str, list[int | None], str]:
  """(model path, steps, tokenizer path): steps [None] for a HF directory."""
  path = c.ckpt or base.SHIPPED
  ref = wd.checkpoint_ref(path)
  tok = c.tokenizer or wd.model_dir(path)
  if ref is None:
    if not epath.Path(path, 'config.json').exists():
      raise rc.ConfigError('ckpt', f'{path}: neither a HF directory (config.json) nor an r1jax '
                           'workdir (model/config.json and checkpoints/)')
    if c.steps not in ('latest',):
      raise rc.ConfigError('steps', f'{path} is a HF directory: it has no steps')
    return path, [None], tok
  workdir, step = ref
  from r1jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  ckpt = Checkpointer(workdir, async_save=False, read_only=True)
  try:
    have = sorted(ckpt.manager.all_steps())
  finally:
    ckpt.close()
  if not have:
    raise rc.ConfigError('ckpt', f'{workdir}/{wd.CHECKPOINTS}: no checkpoint yet')
  if step is not None:
    if step not in have:
      raise rc.ConfigError('ckpt', f'{workdir}/{wd.CHECKPOINTS}: no checkpoint {step} (steps: '
                           f'{have})')
    if c.steps != 'latest':
      raise rc.ConfigError('steps', f'{path} is one checkpoint (step {step}); give the workdir '
                           f'{workdir} to choose steps')
    return os.fspath(workdir), [step], tok
  if c.steps == 'latest':
    return os.fspath(workdir), [have[-1]], tok
  if c.steps == 'all':
    return os.fspath(workdir), have, tok
  want = [int(s) for s in str(c.steps).split(',')]
  missing = [s for s in want if s not in have]
  if missing:
    raise rc.ConfigError('steps', f'no checkpoint {missing} in {workdir} (steps: {have})')
  return os.fspath(workdir), want, tok


def load_benchmarks(c, tok_path: str, data_dir: str) -> list[ev.Benchmark]:
  """The benchmarks' examples and prompts (data_dir: where the built-in
  tasks are prepared)."""
  chat = bm.chat_template(tok_path)
  out = []
  for name, b in c.benchmarks.items():
    key = f'benchmarks.{name}'
    fmt = b['format']
    try:
      if b.get('path'):
        examples = bm.read_benchmark(b['path'], fmt, dict(b.get('fields', {})), b.get('limit', 0),
                                     c.seed)
      else:
        split = load_split(fmt, b.get('split', 'test'), data_dir)
        examples = [dict(split[i], id=str(i)) for i in range(min(b.get('limit', 0) or len(split),
                                                                  len(split)))]
    except (ValueError, FileNotFoundError) as e:
      raise rc.ConfigError(key, str(e)) from None
    style = b.get('prompt') or c.prompt
    try:
      made = [bm.prompt_for(x, fmt, style, chat) for x in examples]
    except (ValueError, bm.TemplateError) as e:
      raise rc.ConfigError(f'{key}.prompt' if b.get('prompt') else 'prompt', str(e)) from None
    forced = {f for _, f in made}
    out.append(ev.Benchmark(name, fmt, examples, [p for p, _ in made], forced.pop(), style))
  return out


def _prompt_len(c, tokenizer, benches) -> int:
  longest = max(len(tokenizer.encode(p + b.forced)) for b in benches for p in b.prompts)
  if c.max_prompt_len:
    if longest > c.max_prompt_len:
      raise rc.ConfigError('max_prompt_len', f'the longest prompt has {longest} tokens; raise '
                           'it (0: fit the longest)')
    return c.max_prompt_len
  return -(-longest // 64) * 64


def run(c) -> list[dict]:
  """Evaluates every step on every benchmark; returns the result rows."""
  validate(c)
  log = metrics.LibraryLog()
  try:
    if c.distributed or os.environ.get('R1JAX_DISTRIBUTED') == '1':
      from r1jax import launch  # pylint: disable=g-import-not-at-top
      launch.init_distributed(c)
    mesh, path, steps, tokenizer, benches, out = prepare(c, log, lambda path, from_run: (
        os.path.join(path, 'eval') if from_run else os.path.join('eval', epath.Path(path).name)))
    return _run(c, mesh, path, steps, tokenizer, benches, out)
  finally:
    log.close()


def prepare(c, log, default_out: Callable[[str, bool], str]):
  """(mesh, checkpoint path, steps, tokenizer, benchmarks, out directory) of
  a sampling command's config; `default_out(path, from_run)` when c.out is
  empty. The library log goes to out/log.txt."""
  mesh = rc.make_mesh(c)
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if c.batch_size % shards:
    raise rc.ConfigError('batch_size', f'{c.batch_size} prompts do not split over data x fsdp '
                         f'= {shards} devices')
  path, steps, tok_path = checkpoint(c)
  from_run = steps != [None]
  out = wd.absolute(c.out or default_out(path, from_run))
  try:
    if jax.process_index() == 0:
      out.mkdir(parents=True, exist_ok=True)
    log.to(out)
  except OSError as e:
    raise rc.ConfigError('out', f'{out}: {e.strerror or e}') from None
  try:
    tokenizer = tk.load_tokenizer(tok_path)
  except FileNotFoundError as e:
    raise rc.ConfigError('tokenizer', str(e)) from None
  data_dir = c.data_dir or os.fspath((epath.Path(path) if from_run else out) / 'tfds')
  benches = load_benchmarks(c, tok_path, data_dir)
  c.max_prompt_len = _prompt_len(c, tokenizer, benches)
  rc.check_context(path, c.max_prompt_len, c.max_new_tokens)
  return mesh, path, steps, tokenizer, benches, out


def _load(path: str, step, c, mesh):
  kw = dict(compute_dtype=c.model.dtype, mesh=mesh, attention=c.model.attention,
            rules=shd.SAMPLE_RULES)
  try:
    if step is None:
      return models.load_hf(path, c.model.param_dtype, **kw)
    return export.load(path, c.model.param_dtype, step=step, **kw)
  except models.CheckpointError as e:
    raise rc.ConfigError('ckpt', str(e)) from None


class Sampled:
  """One checkpoint step's samples of one benchmark (evaluate_step)."""

  def __init__(self, bench: ev.Benchmark, metrics: dict, questions: list[list[dict]],
               seconds: float):
    self.bench, self.metrics, self.questions, self.seconds = bench, metrics, questions, seconds


def evaluate_step(c, mesh, path: str, step, tokenizer, benches, out: epath.Path, scorer,
                  cache: dict) -> list[Sampled]:
  """Samples every benchmark at one step of the checkpoint (resumable:
  evaluate.evaluate_with_files into out/<step>/<benchmark>/). `cache` keeps
  the compiled sampler between steps."""
  model = _load(path, step, c, mesh)
  eos_ids = tokenizer.set_stop_ids(model.cfg.eos_ids)
  if 'sampler' not in cache:
    cache['sampler'] = ev.make_sampler(nnx.graphdef(model), SamplingConfig(
        max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
        eos_ids=eos_ids, pad_id=tokenizer.pad_id), c.k, mesh, slots=c.decode_slots)
  params = nnx.state(model)
  del model
  label_step = 'model' if step is None else str(step)
  at = 'model' if step is None else f'step {step}'
  model_id = os.fspath(wd.absolute(path))
  done = []
  for b in benches:
    t0 = time.time()
    m, questions = ev.evaluate_with_files(
        cache['sampler'], params, b, tokenizer, scorer, c, ev.benchmark_key(c.seed, b.name),
        ev.Outputs(out, label_step, b.name), f'{b.name} @ {at}', model=model_id)
    done.append(Sampled(b, m, questions, round(time.time() - t0, 1)))
  return done


def make_scorer(c, benches, extra: dict | None = None) -> RewardScorer:
  """The benchmarks' verifiers and the format reward (and `extra` rewards)."""
  weights = {**{b.verifier: 1.0 for b in benches}, 'format': 1.0, **(extra or {})}
  return RewardScorer(weights, timeout_s=c.reward_timeout_s, workers=c.reward_workers or None,
                      extra=programs.configured(c, weights))


def _run(c, mesh, path, steps, tokenizer, benches, out: epath.Path) -> list[dict]:
  scorer = make_scorer(c, benches)
  rows, cache = [], {}
  names = ', '.join(f'{b.name} ({len(b.examples)} questions)' for b in benches)
  where = (f'{path} (HF directory)' if steps == [None] else
           f'{path} at step{"s" if len(steps) > 1 else ""} {", ".join(map(str, steps))}')
  print(f'[r1jax] evaluating {where} on {names}: '
        f'k {c.k}, temperature {c.temperature}, top-p {c.top_p}, up to {c.max_new_tokens} new '
        f'tokens; writing to {out}', flush=True)
  try:
    for step in steps:
      label = step if step is not None else 'model'
      at = 'model' if step is None else f'step {step}'
      every = []
      for done in evaluate_step(c, mesh, path, step, tokenizer, benches, out, scorer, cache):
        b, m = done.bench, done.metrics
        every += done.questions
        row = {'step': label, 'benchmark': b.name, **m, 'seconds': done.seconds}
        rows.append(row)
        print(f'[r1jax] {b.name} @ {at}: pass@1 {m["pass@1"]:.3f} '
              f'± {m["pass@1_stderr"]:.3f}  cons@{c.k} {m.get(f"cons@{c.k}", float("nan")):.3f}  '
              f'format {m["format_rate"]:.2f}  length {m["length/mean"]:.1f}  '
              f'({m["questions"]} questions x {c.k}, {row["seconds"]:.0f}s)', flush=True)
      if len(benches) > 1:
        # Every question of every benchmark counted once (question-weighted).
        rows.append({'step': label, 'benchmark': 'overall',
                     **estimators.summarize(every, tuple(c.pass_k) + (c.k,))})
      _write_results(rows, c, out)
  finally:
    scorer.close()
  rows = _merged(rows, out)
  table = ev.results_table(rows, c.pass_k, c.k)
  print('\n' + table, flush=True)
  if len({r['step'] for r in rows}) > 1 and jax.process_index() == 0:
    ev.plot([r for r in rows if r['benchmark'] != 'overall'], out / 'plot.png')
    print(f'[r1jax] plot: {out / "plot.png"}', flush=True)
  return rows


def _merged(rows: list[dict], out: epath.Path) -> list[dict]:
  """These rows and the earlier ones of `out`'s results.json that they do
  not replace (an earlier evaluation of other steps), sorted by step."""
  path = out / 'results.json'
  old = json.loads(path.read_text()).get('rows', []) if path.exists() else []
  new = {(r['step'], r['benchmark']) for r in rows}
  kept = [r for r in old if (r['step'], r['benchmark']) not in new]
  order = lambda r: (isinstance(r['step'], str), r['step'] if isinstance(r['step'], int) else 0,  # noqa: E731
                     r['benchmark'] == 'overall')
  return sorted(kept + rows, key=order)


def _json_safe(x):
  """NaN (no correct sample, one question) as null: strict JSON has no NaN."""
  if isinstance(x, float) and x != x:
    return None
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_json_safe(v) for v in x]
  return x


def _write_results(rows, c, out: epath.Path) -> None:
  """results.json and results.md (with the rows of earlier evaluations of
  other steps), replaced atomically: a killed run keeps the previous ones."""
  if jax.process_index() != 0:
    return
  rows = _merged(rows, out)
  ev.write_atomic(out / 'results.json', json.dumps(_json_safe(
      {'settings': {'k': c.k, 'temperature': c.temperature, 'top_p': c.top_p,
                    'max_new_tokens': c.max_new_tokens, 'seed': c.seed},
       'rows': rows}), indent=2))
  ev.write_atomic(out / 'results.md', ev.results_table(rows, c.pass_k, c.k))


def run_or_exit(c) -> list[dict]:
  try:
    return run(c)
  except (rc.ConfigError, models.CheckpointError) as e:
    print(f'FATAL: {e}', file=sys.stderr, flush=True)
    sys.exit(1)

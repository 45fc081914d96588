"""R1-style evaluation of any checkpoint on local benchmark files.

  python -m r1jax.evaluate --config=configs/eval.py:ckpt=DIR

For each question of each benchmark, k completions are sampled (R1:
temperature 0.6, top-p 0.95, up to 32,768 tokens) and scored with the
benchmark's verifier; estimators.py turns the samples into pass@1 (with its
standard error), the unbiased pass@k, cons@k (majority vote over equivalent
answers), response lengths split by correct and incorrect, truncation and
format rates. The training loop's periodic evaluation is this module's
`evaluate` on the task's test split: one implementation.

The reward is the evaluator (as in nanochat): training and evaluation score
answers with the same functions, through the same time-limited worker
processes (`rewards.RewardScorer`), so a hostile answer can neither hang nor
escape.

Randomness is per question: sample j of question i is drawn with the key
fold_in(fold_in(key, i·k + j), t) at token t (rollout.py), whatever batch,
host or resume it falls in, so a resumed or re-sharded evaluation gives the
same samples (as long as the backend's batched matmuls give each row the
same result whatever the batch; true on this CPU).

Sampling is data-parallel like the training rollout: each batch's prompts,
KV cache and completions are sharded over the batch axes ('data', 'fsdp'),
weights are laid out for sampling (tensor-parallel, not FSDP), and each host
samples and scores only its own share of the questions.

The command writes, under `out` (default <workdir>/eval for an r1jax
workdir, eval/<name> for a HF directory):

  <step>/<benchmark>/parts/*.jsonl   each finished batch's samples (atomic files;
                                     a killed evaluation resumes after them)
  <step>/<benchmark>/samples.jsonl   every sample: question id, sample index,
                                     completion, extracted answer, its candidate,
                                     correct, length, truncated, format
  <step>/<benchmark>/settings.json   what the samples were drawn with (a resume
                                     with other settings is refused)
  results.json, results.md           one row per (step, benchmark)
  plot.png                           pass@1 and mean length against step (several steps)
"""
import dataclasses
import json
import os
import time
import zlib
from typing import Callable, Sequence

import jax
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax import estimators, sharding as shd
from r1jax.data import benchmarks as bm
from r1jax.rewards import choice_letter, extract_answer, language_consistency, parse_number
from r1jax.rewards.answers import final_part
from r1jax.rollout import Rollout, SamplingConfig, generate

BATCH_AXES = ('data', 'fsdp')
# The fields of a sample record that every metric is computed from.
NUMERIC = ('correct', 'cluster', 'length', 'truncated', 'format', 'language')


def make_sampler(graphdef: nnx.GraphDef, cfg: SamplingConfig, k: int,
                 mesh: jax.sharding.Mesh, slots: int = 0) -> Callable:
  """(params, prompts [b, P], mask [b, P], key[, sample_ids [b·k]]) ->
  Rollout of b·k rows as host numpy arrays, where b is this host's share of
  a batch; jitted once per prompt shape. Prompts and rows are sharded over
  the batch axes. `sample_ids` are the samples' global indices (their
  random streams; default 0..b·k-1 of the global batch). `slots`: decode
  slots for continuous batching (0: one static batch)."""
  rows = NamedSharding(mesh, P(BATCH_AXES))
  rep = NamedSharding(mesh, P())
  shards = mesh.shape['data'] * mesh.shape['fsdp']

  def fn(params, ids, mask, key_data, sample_ids):
    params = jax.lax.with_sharding_constraint(
        params, shd.state_shardings(params, mesh, shd.SAMPLE_RULES))
    with shd.activation_rules(mesh, shd.SAMPLE_RULES):
      queues = shards if slots % shards == 0 and ids.shape[0] % shards == 0 else 1
      return generate(nnx.merge(graphdef, params), ids, mask,
                      jax.random.wrap_key_data(key_data), cfg, group_size=k,
                      slots=slots, shards=queues, sample_ids_N=sample_ids)

  out_shardings = Rollout(rows, rows, rows, rows, rep)
  sample = jax.jit(fn, in_shardings=(None, rows, rows, rep, rows), out_shardings=out_shardings)

  def run(params, ids, mask, key, sample_ids=None):
    put = lambda x: jax.make_array_from_process_local_data(rows, np.asarray(x))  # noqa: E731
    if sample_ids is None:
      local = ids.shape[0] * k
      sample_ids = jax.process_index() * local + np.arange(local, dtype=np.int32)
    key_data = jax.make_array_from_process_local_data(rep, np.asarray(jax.random.key_data(key)))
    ro = sample(params, put(ids), put(mask), key_data, put(np.asarray(sample_ids, np.int32)))
    local = multihost_utils.global_array_to_host_local_array(
        tuple(ro[:4]), mesh, (P(BATCH_AXES),) * 4)
    return Rollout(*(np.asarray(x) for x in local), int(ro.num_steps))

  run.jitted = sample  # for the AOT tool
  return run


def host_share(n: int, batch_size: int) -> tuple[list[int], int]:
  """This host's question indices (contiguous, padded to whole batches of
  `batch_size` prompts over all hosts) and the local prompts per batch."""
  hosts, me = jax.process_count(), jax.process_index()
  if batch_size % hosts:
    raise ValueError(f'eval.batch_size {batch_size} does not split over {hosts} hosts')
  per_host = -(-n // hosts)
  return list(range(me * per_host, min(n, (me + 1) * per_host))), batch_size // hosts


@dataclasses.dataclass
class Benchmark:
  """One benchmark's questions and prompts, ready to sample."""
  name: str
  format: str  # a key of data/benchmarks.FORMATS
  examples: list[dict]
  prompts: list[str]
  forced: str = ''  # what every response is made to start with
  style: str = 'r1_zero'  # the prompt: 'r1_zero' or 'chat'
  verifier: str = ''  # '': the format's

  def __post_init__(self):
    self.verifier = self.verifier or bm.FORMATS[self.format].verifier


def benchmark_key(seed: int, name: str) -> jax.Array:
  """The key of one benchmark's samples (the training loop's evaluation of
  its task uses the same: same seed and name, same samples)."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _equal_many(scorer, bench: Benchmark) -> Callable[[list[tuple[str, str]]], list[bool]]:
  """Whether two answers are one candidate, by the verifier: math-verify
  accepting one with the other as the gold (`accuracy`, in the workers),
  numeric equality (`exact_match`), else whitespace-blind string equality
  (letters, countdown expressions, a user's verifier)."""
  if bench.verifier == 'exact_match':
    return lambda pairs: [parse_number(a) is not None and parse_number(a) == parse_number(b)
                          for a, b in pairs]
  if bench.verifier != 'accuracy':
    return lambda pairs: [''.join(a.split()) == ''.join(b.split()) for a, b in pairs]

  def equal(pairs):
    scores = scorer.score((bench.verifier,), [''] * len(pairs),
                          [f'</think> <answer>{a}</answer>' for a, _ in pairs],
                          [{'answer': b} for _, b in pairs])
    return (scores[:, 0] >= 0.5).tolist()
  return equal


def _formatted(bench: Benchmark, texts: Sequence[str], scores: np.ndarray) -> list[bool]:
  if bench.style == 'r1_zero':
    return (scores[:, 1] >= 1.0).tolist()
  # Chat: the think block is closed (and not opened again).
  return [t.count('</think>') == 1 and final_part(t) is not None for t in texts]


def sample_questions(sample: Callable, params, bench: Benchmark, tokenizer, scorer, k: int,
                     batch_size: int, max_prompt_len: int, key: jax.Array,
                     indices: Sequence[int] | None = None,
                     on_batch: Callable[[list[list[dict]]], None] | None = None
                     ) -> list[list[dict]]:
  """Samples and scores this host's share of the questions `indices`
  (default all), in batches of `batch_size` prompts over all hosts (padded
  with repeats, which are dropped: one compiled shape). Returns one list of
  k sample records per question; `on_batch` sees each batch's as it ends."""
  indices = list(range(len(bench.examples))) if indices is None else list(indices)
  mine, local_batch = host_share(len(indices), batch_size)
  mine = [indices[i] for i in mine]
  per_host = -(-len(indices) // jax.process_count())
  rounds = -(-per_host // local_batch)  # the same on every host: the sampler is collective
  extract = choice_letter if bm.FORMATS[bench.format].extract == 'choice' else extract_answer
  equal = _equal_many(scorer, bench)
  names = (bench.verifier,) + (('format',) if bench.style == 'r1_zero' else ())
  out = []
  for r in range(rounds):
    idx = mine[r * local_batch:(r + 1) * local_batch]
    padded = (idx or [0]) + [(idx or [0])[-1]] * (local_batch - max(len(idx), 1))
    try:
      ids, mask = tokenizer.encode_batch([bench.prompts[i] + bench.forced for i in padded],
                                         max_len=max_prompt_len)
    except ValueError as e:  # a prompt over the length (before anything is sampled)
      from r1jax.config import ConfigError  # pylint: disable=g-import-not-at-top
      raise ConfigError('eval.max_prompt_len', f'{bench.name}: {e}; raise it') from None
    sample_ids = np.array([i * k + j for i in padded for j in range(k)], np.int32)
    ro = sample(params, ids, mask, key, sample_ids)
    n = len(idx) * k
    texts = [bench.forced + t for t in tokenizer.decode_batch(ro.tokens_NxT, ro.mask_NxT)][:n]
    if not idx:
      continue
    qs = [i for i in idx for _ in range(k)]
    scores = scorer.score(names, [bench.prompts[i] for i in qs], texts,
                          [bench.examples[i] for i in qs])
    formatted = _formatted(bench, texts, scores)
    answers = [extract(t) for t in texts]
    cands = estimators.clusters([answers[j * k:(j + 1) * k] for j in range(len(idx))], equal)
    lengths, truncated = ro.mask_NxT.sum(axis=1)[:n], ro.truncated_N[:n]
    batch = []
    for j, i in enumerate(idx):
      batch.append([{
          'id': str(bench.examples[i].get('id', i)), 'index': i, 'sample': s,
          'digest': question_digest(bench, i),
          'completion': texts[j * k + s], 'answer': answers[j * k + s],
          'cluster': cands[j][s], 'correct': bool(scores[j * k + s, 0] >= 0.5),
          'length': int(lengths[j * k + s]), 'truncated': bool(truncated[j * k + s]),
          'format': bool(formatted[j * k + s]),
          'language': language_consistency(bench.prompts[i], texts[j * k + s],
                                           bench.examples[i])} for s in range(k)])
    if on_batch is not None:
      on_batch(batch)
    out.extend(batch)
  return out


def question_digest(bench: Benchmark, i: int) -> int:
  """What question i's samples were drawn and judged for: its prompt and
  gold answer (a resume checks it, so an edited file is not mixed in)."""
  text = f'{bench.prompts[i]}{bench.forced}\x00{bench.examples[i].get("answer")}'
  return zlib.crc32(text.encode())


def gather_numeric(questions: list[list[dict]]) -> list[list[dict]]:
  """Every host's questions (their NUMERIC fields, in host order): what
  the metrics need, without the texts."""
  if jax.process_count() == 1:
    return questions
  k = len(questions[0]) if questions else 0
  local = np.asarray([[[float(s[f]) for f in NUMERIC] for s in q] for q in questions],
                     np.float64).reshape(-1, max(k, 1), len(NUMERIC))
  counts = multihost_utils.process_allgather(np.int32(local.shape[0]))
  k = int(np.max(multihost_utils.process_allgather(np.int32(k))))
  width = int(np.max(counts))
  padded = np.full((width, k, len(NUMERIC)), np.nan)
  padded[:local.shape[0], :local.shape[1]] = local
  every = np.asarray(multihost_utils.process_allgather(padded))  # [hosts, width, k, F]
  kind = {'correct': bool, 'language': float}
  return [[dict(zip(NUMERIC, (kind.get(f, int)(v) for f, v in zip(NUMERIC, s)))) for s in q]
          for h, c in enumerate(counts) for q in every[h, :int(c)]]


def evaluate(sample: Callable, params, bench: Benchmark, tokenizer, scorer, k: int,
             batch_size: int, max_prompt_len: int, key: jax.Array,
             pass_k: Sequence[int] = ()) -> tuple[dict[str, float], list[list[dict]]]:
  """(metrics over all hosts as 'eval/…', this host's per-question samples):
  what the training loop logs. `pass_k`: the k of pass@k and cons@k (k
  itself is always in)."""
  questions = sample_questions(sample, params, bench, tokenizer, scorer, k, batch_size,
                               max_prompt_len, key)
  m = estimators.summarize(gather_numeric(questions), tuple(pass_k) + (k,))
  return {f'eval/{name}': v for name, v in m.items()}, questions


# ------------------------------------------------------------------ the command


class Outputs:
  """One (step, benchmark)'s files (see the module doc)."""

  def __init__(self, root: epath.Path, step: str, bench: str):
    self.dir = root / step / bench
    self.parts = self.dir / 'parts'

  def prepare(self, settings: dict) -> None:
    """Checks a resumed evaluation was drawn with these settings."""
    path = self.dir / 'settings.json'
    if path.exists():
      saved = json.loads(path.read_text())
      changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
      if changed:
        from r1jax import config as rc  # pylint: disable=g-import-not-at-top
        raise rc.ConfigError(changed[0], f'{self.dir} holds samples drawn with other settings '
                             f'({", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed)}); '
                             'evaluate into another out directory, or delete it')
    if jax.process_index() == 0:
      self.parts.mkdir(parents=True, exist_ok=True)
      if not path.exists():
        write_atomic(path, json.dumps(settings, indent=2))
    multihost_utils.sync_global_devices('r1jax-eval-prepare')
    if not path.exists():
      raise RuntimeError(f'{path}: written by host 0 but not seen by host '
                         f'{jax.process_index()}; `out` must be on a filesystem every host '
                         'shares (e.g. gs://)')

  def done(self, k: int) -> dict[int, list[dict]]:
    """The questions whose k samples are in finished part files."""
    got: dict[int, list[dict]] = {}
    if not self.parts.exists():
      return got
    for f in sorted(self.parts.glob('part-*.jsonl')):
      for line in f.read_text().splitlines():
        if line.strip():
          s = json.loads(line)
          got.setdefault(s['index'], []).append(s)
    return {i: sorted(q, key=lambda s: s['sample']) for i, q in got.items() if len(q) == k}

  def write_part(self, batch: list[list[dict]]) -> None:
    name = f'part-{batch[0][0]["index"]:08d}.jsonl'
    write_atomic(self.parts / name, ''.join(json.dumps(s) + '\n' for q in batch for s in q))

  def write_samples(self, questions: list[list[dict]]) -> None:
    write_atomic(self.dir / 'samples.jsonl',
                  ''.join(json.dumps(s) + '\n' for q in questions for s in q))


def write_atomic(path: epath.Path, text: str) -> None:
  tmp = path.parent / f'.{path.name}.tmp-{os.getpid()}'
  tmp.write_text(text)
  tmp.replace(path)


def _eta(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else (
      f'{seconds // 60}m{seconds % 60:02d}s')


def evaluate_with_files(sample, params, bench: Benchmark, tokenizer, scorer, config,
                        key: jax.Array, out: Outputs, label: str, model: str = ''
                        ) -> tuple[dict[str, float], list[list[dict]]]:
  """One (step, benchmark): resumes after the finished batches in `out`,
  prints progress with an ETA, and returns the benchmark's metrics and its
  questions' samples (every host reads them from the part files: `out`
  must be on a filesystem all hosts share, e.g. gs://)."""
  k = config.k
  out.prepare(settings_of(config, bench, model))
  done = {i: q for i, q in out.done(k).items() if i < len(bench.examples)}
  for i, q in done.items():
    if q[0].get('digest') != question_digest(bench, i):
      from r1jax import config as rc  # pylint: disable=g-import-not-at-top
      raise rc.ConfigError(f'benchmarks.{bench.name}', f'{out.dir} holds samples of question '
                           f'{q[0]["id"]!r} (row {i}) for another prompt or answer than the '
                           'file now has: the file or the prompt changed; evaluate into another '
                           'out directory')
  todo = [i for i in range(len(bench.examples)) if i not in done]
  total, t0, finished = len(bench.examples), time.time(), [len(done)]
  if done:
    print(f'[r1jax] {label}: resuming, {len(done)} of {total} questions already done', flush=True)

  def on_batch(batch):
    out.write_part(batch)
    finished[0] += len(batch) * jax.process_count()  # every host ends a batch together
    now = min(finished[0], total)
    rate = (now - len(done)) / max(time.time() - t0, 1e-9)
    left = (total - now) / rate if rate > 0 else float('nan')
    if jax.process_index() == 0:
      print(f'[r1jax] {label}: {now}/{total} questions  {time.time() - t0:.0f}s'
            + (f'  ETA {_eta(left)}' if now < total else ''), flush=True)

  if todo:
    sample_questions(sample, params, bench, tokenizer, scorer, k, config.batch_size,
                     config.max_prompt_len, key, indices=todo, on_batch=on_batch)
  multihost_utils.sync_global_devices('r1jax-eval-done')
  questions = [q for i, q in sorted(out.done(k).items()) if i < len(bench.examples)]
  if len(questions) != total:
    raise RuntimeError(f'{out.dir}: {len(questions)} of {total} questions have samples')
  if jax.process_index() == 0:
    out.write_samples(questions)
  return estimators.summarize(questions, tuple(config.pass_k) + (k,)), questions


def settings_of(config, bench: Benchmark, model: str = '') -> dict:
  """What a benchmark's samples depend on, keyed by config name (the
  questions themselves are checked one by one: `question_digest`)."""
  return {'ckpt': model, 'k': config.k, 'temperature': config.temperature,
          'top_p': config.top_p, 'max_new_tokens': config.max_new_tokens, 'seed': config.seed,
          'model.param_dtype': config.model.param_dtype, 'model.dtype': config.model.dtype,
          f'benchmarks.{bench.name}.verifier': bench.verifier}


def results_table(rows: list[dict], pass_k: Sequence[int], k: int) -> str:
  """The markdown table of one row per (step, benchmark)."""
  ks = sorted(j for j in set(pass_k) | {k} if 2 <= j <= k)
  cols = (['step', 'benchmark', 'questions', 'pass@1', '±'] + [f'pass@{j}' for j in ks]
          + [f'cons@{j}' for j in ks] + ['length', 'length ✓', 'length ✗', 'truncated', 'format'])
  keys = (['step', 'benchmark', 'questions', 'pass@1', 'pass@1_stderr']
          + [f'pass@{j}' for j in ks] + [f'cons@{j}' for j in ks]
          + ['length/mean', 'length_correct/mean', 'length_incorrect/mean', 'truncated',
             'format_rate'])

  def cell(v):
    if isinstance(v, float):
      return f'{v:.1f}' if abs(v) >= 10 else f'{v:.3f}'
    return str(v)
  lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  lines += ['| ' + ' | '.join(cell(r.get(c, '')) for c in keys) + ' |' for r in rows]
  return '\n'.join(lines) + '\n'


def plot(rows: list[dict], path: epath.Path) -> None:
  """pass@1 and mean response length against step, a line per benchmark."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
  for name in dict.fromkeys(r['benchmark'] for r in rows):
    mine = [r for r in rows if r['benchmark'] == name]
    steps = [r['step'] for r in mine]
    a.errorbar(steps, [r['pass@1'] for r in mine], [r['pass@1_stderr'] for r in mine],
               marker='o', capsize=3, label=name)
    b.plot(steps, [r['length/mean'] for r in mine], marker='o', label=name)
  a.set(xlabel='step', ylabel='pass@1', title='pass@1 (± s.e.)')
  b.set(xlabel='step', ylabel='tokens', title='mean response length')
  a.legend()
  fig.tight_layout()
  tmp = path.parent / f'.{path.name}.tmp.png'
  fig.savefig(os.fspath(tmp), dpi=100)
  plt.close(fig)
  tmp.replace(path)


def main(argv):
  del argv
  from r1jax import eval_command  # pylint: disable=g-import-not-at-top
  eval_command.run_or_exit(_flags.FLAGS.config)


if __name__ == '__main__':
  from absl import app, flags as _flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'configs/eval.py[:ckpt=DIR,…]',
                                  lock_config=True)
  from r1jax import config as _rc  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=lambda argv: _rc.parse_flags(
      argv, 'python -m r1jax.evaluate --config=configs/eval.py:ckpt=DIR'))

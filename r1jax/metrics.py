"""Where measurements go: `<workdir>/metrics.jsonl` (one JSON object per line,
each with `step`), TensorBoard event files in `<workdir>/tb/`, sampled
completions in `<workdir>/samples/`, and one console line per step. Paths
are `etils.epath`: a `gs://` workdir is written there, never under a local
`gs:` directory.

Only process 0 writes.
"""
import io
import json
import math
import os
import re
import time
from typing import Any

import jax
import numpy as np
from etils import epath

from r1jax.workdir import is_local

# Console columns: (metric key, label, format).
_CONSOLE = (('reward/total', 'reward', '.3f'), ('accuracy', 'acc', '.3f'),
            ('format_rate', 'format', '.2f'), ('length/mean', 'len', '.1f'),
            ('kl', 'kl', '.4f'), ('sft/loss', 'loss', '.4f'), ('rm/loss', 'loss', '.4f'),
            ('rm/accuracy', 'pair acc', '.3f'), ('tokens_per_s', 'tok/s', '.0f'),
            ('eval/pass@1', 'pass@1', '.3f'))


def scalars(metrics: dict[str, Any]) -> dict[str, float | list[float]]:
  """Host floats (vectors become lists) from device arrays."""
  out = {}
  for k, v in jax.device_get(metrics).items():
    v = np.asarray(v)
    out[k] = float(v) if v.ndim == 0 else v.astype(float).tolist()
  return out


class Writer:
  """`resume_step`: the checkpoint a run resumes from (None: a fresh run).
  Lines after it, written by a run stopped before its next checkpoint, are
  dropped, so a resumed run's metrics.jsonl reads as if it never stopped. A
  fresh run over an old run's metrics moves them aside, never truncates."""

  def __init__(self, workdir: epath.PathLike, resume_step: int | None = None):
    self.active = jax.process_index() == 0
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / 'metrics.jsonl'
    self.local = is_local(self.workdir)
    self.lines: list[str] = []  # an object store's file is rewritten whole
    self.tb = None
    if self.active:
      (self.workdir / 'samples').mkdir(parents=True, exist_ok=True)
      path = self.path
      if path.exists() and resume_step is None:
        # A fresh start over an old run's metrics (its checkpoints are gone):
        # never destroy them.
        aside = path.parent / f'{path.name}.{time.strftime("%Y%m%d-%H%M%S")}.old'
        path.rename(aside)
        print(f'[r1jax] WARNING: {path} belonged to an earlier run with no checkpoint to '
              f'resume; moved to {aside}', flush=True)
      elif path.exists():
        rows = read_jsonl(path)
        self.lines = [json.dumps(r) + '\n' for r in rows if r['step'] <= resume_step]
        later = [json.dumps(r) + '\n' for r in rows if r['step'] > resume_step]
        if later:  # steps to be trained again; their first lines are kept aside
          aside = path.parent / f'{path.name}.after-{resume_step}.{time.strftime("%Y%m%d-%H%M%S")}'
          aside.write_text(''.join(later))
          print(f'[r1jax] {len(later)} metrics lines after step {resume_step} (the run '
                f'stopped before its next checkpoint) moved to {aside}', flush=True)
        tmp = path.parent / (path.name + '.tmp')
        tmp.write_text(''.join(self.lines))
        tmp.replace(path)
      if not self.local:
        _register_object_store_writer()
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(str(self.workdir / 'tb'), flush_secs=10)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.active:
      return
    row = {'step': step, **scalars(metrics)}
    line = json.dumps(row) + '\n'
    if self.local:
      with self.path.open('a') as f:
        f.write(line)
    else:  # objects cannot be appended to
      self.lines.append(line)
      self.path.write_text(''.join(self.lines))
    for k, v in row.items():
      if k != 'step' and isinstance(v, float) and math.isfinite(v):  # NaN: no estimate yet
        self.tb.add_scalar(tb_tag(k), v, step)

  def samples(self, step: int, name: str, records: list[dict]) -> None:
    if self.active:
      (self.workdir / 'samples' / f'{name}_{step:06d}.json').write_text(
          json.dumps(records, indent=1))

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
      self.tb = None


_NOISE = ('has no dataset_info.json',)


class LibraryLog:
  """Library chatter (orbax, jax, TFDS INFO) goes to `<workdir>/log.txt`
  (`log.<i>.txt` on process i > 0; a local temporary file for an object-
  store workdir); the console keeps r1jax's lines, warnings and errors.
  Records before the workdir is known are held and written there. `close()`
  restores the logging setup it found."""

  def __init__(self):
    import logging as pylog  # pylint: disable=g-import-not-at-top
    import logging.handlers  # pylint: disable=g-import-not-at-top,unused-import
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    self.pylog, self.absl = pylog, absl_logging
    self.root = pylog.getLogger()
    # The console: absl's handler, and whatever handlers the root logger
    # already has (a notebook kernel's, logging.basicConfig's). Each keeps
    # WARNING and above, less the noise. absl's handler hands records to its
    # python handler without applying its own filters, so the filter goes on
    # both.
    absl_handler = absl_logging.get_absl_handler()
    self.consoles = {absl_handler: absl_handler.level}
    self.consoles.update((h, h.level) for h in self.root.handlers)
    self.filtered = set(self.consoles) | {getattr(absl_handler, 'python_handler', absl_handler)}
    self.saved = (self.root.level, absl_logging.get_verbosity())
    self.held = pylog.handlers.MemoryHandler(capacity=100_000, flushLevel=pylog.CRITICAL + 1)
    self.held.setLevel(pylog.INFO)
    self.file = None
    self.root.addHandler(self.held)
    self.root.setLevel(pylog.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    for handler, level in self.consoles.items():
      handler.setLevel(max(level, pylog.WARNING))
    # This log's own filter object: a nested log (a pipeline's stage) removes
    # only its own when it closes (logging.Filterer holds each object once).
    self.noise_filter = lambda record: self._not_noise(record)  # noqa: E731
    for handler in self.filtered:
      handler.addFilter(self.noise_filter)

  @staticmethod
  def _not_noise(record) -> bool:
    """Warnings that are not (TFDS on every data set not yet prepared)."""
    return not any(n in record.getMessage() for n in _NOISE)

  def to(self, workdir: epath.PathLike) -> str:
    import tempfile  # pylint: disable=g-import-not-at-top
    i = jax.process_index()
    name = 'log.txt' if i == 0 else f'log.{i}.txt'
    path = (str(epath.Path(workdir) / name) if is_local(workdir) else
            f'{tempfile.gettempdir()}/r1jax-{time.strftime("%Y%m%d-%H%M%S")}-{name}')
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)  # hosts without the shared disk
    self.file = self.pylog.FileHandler(path, mode='a', encoding='utf-8')
    self.file.setFormatter(self.pylog.Formatter(
        '%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s'))
    self.file.setLevel(self.pylog.INFO)
    self.held.setTarget(self.file)
    self.held.flush()
    self.root.removeHandler(self.held)
    self.root.addHandler(self.file)
    return path

  def close(self) -> None:
    for handler in (self.held, self.file):
      if handler is not None:
        self.root.removeHandler(handler)
        handler.close()
    self.root.setLevel(self.saved[0])
    for handler in self.filtered:
      handler.removeFilter(self.noise_filter)
    for handler, level in self.consoles.items():
      handler.setLevel(level)
    self.absl.set_verbosity(self.saved[1])


def tb_tag(key: str) -> str:
  """The TensorBoard tag of a metrics.jsonl key: `@` reads `_at_` and any
  other character TensorBoard refuses becomes `_` (eval/pass@1 ->
  eval/pass_at_1, eval/cons@16 -> eval/cons_at_16); other keys are kept."""
  return re.sub(r'[^\w./-]', '_', key.replace('@', '_at_'))


class Counters:
  """Exact failure counts across resumes. The scorer's counters are totals
  of this process; each step logs what happened in it (`reward/errors`) and
  the run's running total (`reward/errors_total`), which the checkpoint
  keeps (`state()`, restored through `totals`)."""

  def __init__(self, totals: dict[str, float] | None = None):
    self.base = dict(totals or {})  # the run's totals before this process
    self.last: dict[str, float] = {}

  def step(self, process_totals: dict[str, float]) -> dict[str, float]:
    out = {}
    for k, v in process_totals.items():
      out[k] = v - self.last.get(k, 0)
      out[k + '_total'] = self.base.get(k, 0) + v
    self.last = dict(process_totals)
    return out

  def state(self) -> dict[str, float]:
    keys = self.base.keys() | self.last.keys()
    return {k: self.base.get(k, 0) + self.last.get(k, 0) for k in keys}


class _ObjectFile:
  """A TensorBoard event file on an object store: objects cannot be appended
  to, so each flush rewrites the whole file (as tensorboardX's own GCS
  writer does), through epath rather than a cloud SDK."""

  def __init__(self, path: str):
    self.path = epath.Path(path)
    self.buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    self.path.write_bytes(self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _ObjectFiles:

  def open(self, path: str) -> _ObjectFile:
    return _ObjectFile(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _register_object_store_writer() -> None:
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  for scheme in ('gs', 's3', 'az'):
    record_writer.register_writer_factory(scheme, _ObjectFiles())


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  return f'{h}:{rest // 60:02d}:{rest % 60:02d}' if h else f'{rest // 60}:{rest % 60:02d}'


def console_line(step: int, total: int, metrics: dict[str, Any],
                 elapsed_s: float | None = None, eta_s: float | None = None) -> str:
  """One step's line, ending in this process's elapsed training time and
  the time left (`eta_s`; None while unknown, e.g. on the compiling first step)."""
  parts = [f'step {step:>{len(str(total))}}/{total}']
  for key, label, fmt in _CONSOLE:
    if key in metrics:
      parts.append(f'{label} {float(metrics[key]):{fmt}}')
  if elapsed_s is not None:
    parts.append(f'{_clock(elapsed_s)} elapsed' + (f', ETA {_clock(eta_s)}'
                                                   if eta_s is not None else ''))
  return '  '.join(parts)


def read_jsonl(path: epath.PathLike) -> list[dict]:
  """The rows of a metrics file. A torn last line (the process died while
  writing it) is dropped with a warning; a bad line elsewhere is an error
  naming the file and line."""
  lines = epath.Path(path).read_text().splitlines(keepends=True)
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1 and not line.endswith('\n'):
        print(f'[r1jax] WARNING: {path}:{i + 1}: dropping a torn last line '
              f'({len(line)} characters; the writer stopped mid-line)', flush=True)
        break
      raise ValueError(f'{path}:{i + 1}: not a JSON line ({e.msg}): {line[:80]!r}') from None
  return rows

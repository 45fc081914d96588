"""Where measurements go: `<workdir>/metrics.jsonl` (one JSON object per line,
each with `step`), TensorBoard event files in `<workdir>/tb/`, sampled
completions in `<workdir>/samples/`, and one console line per step.

Only process 0 writes.
"""
import json
import os
import time
from typing import Any

import jax
import numpy as np

# Console columns: (metric key, label, format).
_CONSOLE = (('reward/total', 'reward', '.3f'), ('accuracy', 'acc', '.3f'),
            ('format_rate', 'format', '.2f'), ('length/mean', 'len', '.1f'),
            ('kl', 'kl', '.4f'), ('tokens_per_s', 'tok/s', '.0f'),
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
  dropped, so a resumed run's metrics.jsonl reads as if it never stopped."""

  def __init__(self, workdir: str, resume_step: int | None = None):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.tb = None
    if self.active:
      os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
      path = os.path.join(workdir, 'metrics.jsonl')
      if os.path.exists(path) and resume_step is None:
        # A fresh start over an old run's metrics (its checkpoints are gone):
        # never destroy them.
        aside = f'{path}.{time.strftime("%Y%m%d-%H%M%S")}.old'
        os.replace(path, aside)
        print(f'[r1jax] WARNING: {path} belonged to an earlier run with no checkpoint to '
              f'resume; moved to {aside}', flush=True)
      elif os.path.exists(path):
        keep = [json.dumps(row) + '\n' for row in read_jsonl(path)
                if row['step'] <= resume_step]
        with open(path + '.tmp', 'w') as f:
          f.writelines(keep)
        os.replace(path + '.tmp', path)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.tb = SummaryWriter(os.path.join(workdir, 'tb'), flush_secs=10)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.active:
      return
    row = {'step': step, **scalars(metrics)}
    with open(os.path.join(self.workdir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps(row) + '\n')
    for k, v in row.items():
      if k != 'step' and isinstance(v, float):
        self.tb.add_scalar(k, v, step)

  def samples(self, step: int, name: str, records: list[dict]) -> None:
    if self.active:
      with open(os.path.join(self.workdir, 'samples', f'{name}_{step:06d}.json'), 'w') as f:
        json.dump(records, f, indent=1)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def console_line(step: int, total: int, metrics: dict[str, Any]) -> str:
  parts = [f'step {step:>{len(str(total))}}/{total}']
  for key, label, fmt in _CONSOLE:
    if key in metrics:
      parts.append(f'{label} {float(metrics[key]):{fmt}}')
  return '  '.join(parts)


def read_jsonl(path: str) -> list[dict]:
  """The rows of a metrics file. A torn last line (the process died while
  writing it) is dropped with a warning; a bad line elsewhere is an error
  naming the file and line."""
  with open(path) as f:
    lines = f.readlines()
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

"""metrics.jsonl survives what happens to a run (issue 11, items 2 and 6)."""
import json
import os

import pytest

from r1jax import metrics


def _lines(path, rows, torn=''):
  with open(path, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
    f.write(torn)


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, capsys):
  path = str(tmp_path / 'metrics.jsonl')
  _lines(path, [{'step': 1}, {'step': 2}], torn='{"step": 3, "lo')
  assert metrics.read_jsonl(path) == [{'step': 1}, {'step': 2}]
  assert 'torn last line' in capsys.readouterr().out
  # A resumed writer keeps the whole lines up to its checkpoint.
  metrics.Writer(str(tmp_path), resume_step=2).close()
  assert metrics.read_jsonl(path) == [{'step': 1}, {'step': 2}]


def test_a_bad_line_elsewhere_names_file_and_line(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  with open(path, 'w') as f:
    f.write('{"step": 1}\n{"step": \x00\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r'metrics\.jsonl:2: not a JSON line'):
    metrics.read_jsonl(path)


def test_a_fresh_start_moves_old_metrics_aside(tmp_path, capsys):
  """A fresh start (no checkpoint) truncated an existing metrics.jsonl."""
  path = str(tmp_path / 'metrics.jsonl')
  _lines(path, [{'step': 1}, {'step': 2}])
  w = metrics.Writer(str(tmp_path), resume_step=None)
  w.write(1, {'loss': 0.5})
  w.close()
  assert metrics.read_jsonl(path) == [{'step': 1, 'loss': 0.5}]
  old = [f for f in os.listdir(tmp_path) if f.startswith('metrics.jsonl.') and f.endswith('.old')]
  assert len(old) == 1
  assert metrics.read_jsonl(str(tmp_path / old[0])) == [{'step': 1}, {'step': 2}]
  assert 'moved to' in capsys.readouterr().out


def test_counters_are_per_step_with_running_totals_across_a_resume():
  """Issue 11.11: the scorer's counters are this process's totals; the log
  gets what happened in each step and the run's total, kept in checkpoints."""
  c = metrics.Counters()
  assert c.step({'reward/errors': 2}) == {'reward/errors': 2, 'reward/errors_total': 2}
  assert c.step({'reward/errors': 5}) == {'reward/errors': 3, 'reward/errors_total': 5}
  saved = c.state()
  assert saved == {'reward/errors': 5}
  resumed = metrics.Counters(saved)  # a new process: its own totals restart at 0
  assert resumed.step({'reward/errors': 1}) == {'reward/errors': 1, 'reward/errors_total': 6}
  assert resumed.state() == {'reward/errors': 6}

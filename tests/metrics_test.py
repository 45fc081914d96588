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

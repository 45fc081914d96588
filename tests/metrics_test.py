"""metrics.jsonl survives what happens to a run (issue 11, items 2 and 6)."""
import json
import os

import pytest

from r1jax import launch, metrics


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


def test_the_step_line_ends_in_elapsed_time_and_eta():
  """Issue 12.9: the step line has the elapsed time and, once the compiling
  first step is behind, the time left at the pace of the steps after it."""
  line = metrics.console_line(13, 20, {'reward/total': 0.5, 'kl': 0.01}, 90.0, 210.0)
  assert line == 'step 13/20  reward 0.500  kl 0.0100  1:30 elapsed, ETA 3:30'
  assert metrics.console_line(1, 2, {}, 7300.0).endswith('2:01:40 elapsed')
  assert launch.eta(start=0, step=1, total=10, first_done=5.0, now=25.0) is None
  # 3 steps after the first in 6 s: 2 s a step, 6 steps to go.
  assert launch.eta(start=0, step=4, total=10, first_done=19.0, now=25.0) == 12.0


def test_tensorboard_tags_are_sanitised_one_to_one():
  """Issue 12.3: tensorboardX logged 'Summary name eval/pass@1 is illegal'."""
  assert metrics.tb_tag('eval/pass@1') == 'eval/pass_at_1'
  assert metrics.tb_tag('eval/cons@16_no_thinking') == 'eval/cons_at_16_no_thinking'
  assert metrics.tb_tag('reward/exact_match') == 'reward/exact_match'
  assert metrics.tb_tag('length/p90') == 'length/p90'


def test_library_info_goes_to_the_log_file_not_the_console(tmp_path, capfd):
  """Issue 12.3: under absl's app.run every orbax/jax INFO line reached the
  console. Here absl's console handler is set up as app.run leaves it."""
  import logging as pylog
  from absl import logging as absl_logging
  import sys
  console = absl_logging.get_absl_handler()
  saved = (console.level, absl_logging.get_verbosity(), console.python_handler.stream)
  console.setLevel(pylog.NOTSET)
  console.python_handler.stream = sys.stderr
  absl_logging.set_verbosity(absl_logging.INFO)
  pylog.getLogger().addHandler(console)  # pytest took absl's handler off the root logger
  try:
    log = metrics.LibraryLog()
    absl_logging.info('CheckpointManager Save Finalize is done')  # before the workdir is known
    path = log.to(tmp_path)
    pylog.getLogger('jax._src.xla_bridge').info("Unable to initialize backend 'tpu'")
    absl_logging.warning('a real warning')
    absl_logging.warning('Variant folder %s has no %s', '/x', 'dataset_info.json')  # as TFDS logs it
    log.close()
    err = capfd.readouterr().err
    assert 'Save Finalize' not in err and 'backend' not in err and 'dataset_info' not in err
    assert 'a real warning' in err
    text = open(path).read()
    assert 'Save Finalize is done' in text and "initialize backend 'tpu'" in text
    assert path == str(tmp_path / 'log.txt')
    assert (console.level, absl_logging.get_verbosity()) == (pylog.NOTSET, absl_logging.INFO)
  finally:
    pylog.getLogger().removeHandler(console)
    console.setLevel(saved[0])
    absl_logging.set_verbosity(saved[1])
    console.python_handler.stream = saved[2]


def test_a_nested_library_log_leaves_the_outer_ones_filter(tmp_path):
  """A pipeline keeps a LibraryLog while each stage opens and closes its own:
  closing a stage's took the pipeline's noise filter off the console too, and
  TFDS's 'has no dataset_info.json' reached the console when the pipeline
  prepared the next stage's data (configs/r1.py, 2026-12-07)."""
  import io
  import logging as pylog
  stream = io.StringIO()
  kernel = pylog.StreamHandler(stream)
  pylog.getLogger().addHandler(kernel)
  try:
    outer = metrics.LibraryLog()
    outer.to(tmp_path)
    inner = metrics.LibraryLog()
    inner.to(tmp_path / 'stage')
    inner.close()
    pylog.getLogger('absl').warning('Variant folder %s has no %s', '/x', 'dataset_info.json')
    pylog.getLogger('absl').warning('a real warning')
    outer.close()
    assert stream.getvalue() == 'a real warning\n'
    assert not kernel.filters
  finally:
    pylog.getLogger().removeHandler(kernel)


def test_library_info_stays_off_a_notebooks_console(tmp_path):
  """A Jupyter kernel (or logging.basicConfig) puts its own handler on the
  root logger: the notebook printed 139 'INFO:absl:…' lines of orbax."""
  import io
  import logging as pylog
  stream = io.StringIO()
  kernel = pylog.StreamHandler(stream)  # level NOTSET, as basicConfig leaves it
  pylog.getLogger().addHandler(kernel)
  try:
    log = metrics.LibraryLog()
    log.to(tmp_path)
    pylog.getLogger('absl').info('CheckpointManager Save Finalize is done')
    pylog.getLogger('absl').warning('Variant folder %s has no %s', '/x', 'dataset_info.json')
    pylog.getLogger('absl').warning('a real warning')
    log.close()
    assert stream.getvalue() == 'a real warning\n'
    assert 'Save Finalize is done' in (tmp_path / 'log.txt').read_text()
    assert kernel.level == pylog.NOTSET and not kernel.filters
  finally:
    pylog.getLogger().removeHandler(kernel)

"""`python -m r1jax.evaluate`: the command on the shipped base and on a
training run's checkpoints, its files, resume after a kill, and equality
with the training loop's own evaluation."""
import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest

from conftest import ROOT, config_file
from r1jax import base, config as rc, eval_command, evaluate as ev, metrics
from r1jax.data import tasks


def eval_config(arg=''):
  spec = importlib.util.spec_from_file_location('eval_cfg', os.path.join(ROOT, 'configs', 'eval.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _math_file(tmp_path, n=12):
  """Fresh arithmetic-task questions as a MATH-style file with its own
  field names."""
  rng = random.Random(7)
  rows = []
  for i in range(n):
    p = tasks.arithmetic_problem(rng)
    rows.append({'uid': f'q{i}', 'Problem': p['question'], 'Solution': p['answer']})
  path = tmp_path / 'sums.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return str(path)


def _config(tmp_path, tfds_dir, out='eval', **kw):
  c = eval_config(f'bench=arithmetic::;sums:math:{_math_file(tmp_path)}')
  c.benchmarks.arithmetic.limit = 16
  c.benchmarks.sums.fields.update(question='Problem', answer='Solution', id='uid')
  c.update(out=str(tmp_path / out), data_dir=tfds_dir, k=2, pass_k=(1, 2), batch_size=8)
  c.update(**kw)
  data = min(c.batch_size, 8)
  c.mesh.update(data=data, tensor=8 // data)  # the 8 emulated devices
  return c


def _samples(path):
  return [json.loads(line) for line in open(path)]


def test_evaluates_the_shipped_base_on_a_local_file_and_the_built_in_task(tmp_path, tfds_dir,
                                                                          capsys):
  rows = eval_command.run(_config(tmp_path, tfds_dir))
  out = capsys.readouterr().out
  assert [r['benchmark'] for r in rows] == ['arithmetic', 'sums', 'overall']
  # Overall: every question of both benchmarks counted once.
  assert rows[2]['questions'] == 28 and rows[2]['pass@1'] == pytest.approx(
      (16 * rows[0]['pass@1'] + 12 * rows[1]['pass@1']) / 28)
  for r in rows:
    for key in ('pass@1', 'pass@1_stderr', 'pass@2', 'cons@2', 'length_correct/median',
                'length_incorrect/p90', 'truncated', 'format_rate'):
      assert key in r, key
  assert rows[0]['questions'] == 16 and rows[1]['questions'] == 12
  assert rows[1]['pass@1'] > 0.3  # the base adds one-digit numbers
  samples = _samples(tmp_path / 'eval' / 'model' / 'sums' / 'samples.jsonl')
  assert len(samples) == 24 and samples[0]['id'] == 'q0'
  assert set(samples[0]) == {'id', 'index', 'sample', 'digest', 'completion', 'answer', 'cluster',
                             'correct', 'length', 'truncated', 'format', 'language'}
  # Every metric can be recomputed from samples.jsonl.
  questions = [samples[i:i + 2] for i in range(0, 24, 2)]
  assert ev.estimators.summarize(questions, (1, 2)) == {
      k: v for k, v in rows[1].items() if k not in ('step', 'benchmark', 'seconds')}
  saved = json.loads((tmp_path / 'eval' / 'results.json').read_text())
  assert saved['rows'] == json.loads(json.dumps(rows)) and saved['settings']['k'] == 2
  table = (tmp_path / 'eval' / 'results.md').read_text()
  assert table.startswith('| step | benchmark | questions | pass@1 | ± | pass@2 | cons@2 |')
  assert '| model | sums | 12 |' in table and table in out
  assert 'INFO' not in out  # library chatter goes to the log file


def test_a_killed_evaluation_resumes_without_redoing_finished_questions(tmp_path, tfds_dir,
                                                                        monkeypatch):
  whole = eval_command.run(_config(tmp_path, tfds_dir, out='whole', batch_size=4))
  # Killed after the arithmetic benchmark's second batch was written.
  real = ev.Outputs.write_part
  written = []

  def dies(self, batch):
    real(self, batch)
    written.append(batch[0][0]['index'])
    if len(written) == 2:
      raise KeyboardInterrupt
  monkeypatch.setattr(ev.Outputs, 'write_part', dies)
  with pytest.raises(KeyboardInterrupt):
    eval_command.run(_config(tmp_path, tfds_dir, out='killed', batch_size=4))
  monkeypatch.setattr(ev.Outputs, 'write_part', real)
  asked = []
  sample_questions = ev.sample_questions
  monkeypatch.setattr(ev, 'sample_questions', lambda *a, indices=None, **kw: (
      asked.append(list(indices)), sample_questions(*a, indices=indices, **kw))[1])
  resumed = eval_command.run(_config(tmp_path, tfds_dir, out='killed', batch_size=4))
  assert asked[0] == list(range(8, 16))  # the two finished batches are not redone
  strip = lambda rows: [{k: v for k, v in r.items() if k != 'seconds'} for r in rows]  # noqa: E731
  assert strip(resumed) == strip(whole)
  for b in ('arithmetic', 'sums'):
    assert _samples(tmp_path / 'killed' / 'model' / b / 'samples.jsonl') == _samples(
        tmp_path / 'whole' / 'model' / b / 'samples.jsonl')
  # Other sampling settings on the same out directory are refused, naming the key.
  with pytest.raises(rc.ConfigError, match='config.temperature: .*other settings'):
    eval_command.run(_config(tmp_path, tfds_dir, out='killed', temperature=1.0))
  # So is an edited benchmark file (the questions' prompts and answers are checked).
  c = _config(tmp_path, tfds_dir, out='killed')
  path = c.benchmarks.sums.path
  rows = [json.loads(line) for line in open(path)]
  rows[0]['Solution'] = '-1'
  with open(path, 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows))
  with pytest.raises(rc.ConfigError, match="config.benchmarks.sums: .*question 'q0'"):
    eval_command.run(c)


def test_the_training_loops_evaluation_equals_the_commands_on_its_checkpoints(done, tmp_path):
  """The smoke run (`done`) evaluated its task at steps 2 and 3; the command
  on those checkpoints, with the run's seed, sampling settings and mesh,
  gives the same metrics, one row per step, and a plot."""
  e = done.eval
  c = eval_config(f'ckpt={done.workdir},steps=2;3')
  c.benchmarks.arithmetic.limit = e.num_questions
  c.update(out=str(tmp_path / 'eval'), data_dir=done.data_dir, seed=done.seed, k=e.k,
           pass_k=(1, e.k), temperature=e.temperature, top_p=e.top_p, batch_size=e.batch_size,
           max_new_tokens=done.rl.max_new_tokens, max_prompt_len=done.rl.max_prompt_len)
  c.mesh.update(done.mesh)
  rows = eval_command.run(c)
  logged = {r['step']: r for r in metrics.read_jsonl(os.path.join(done.workdir, 'metrics.jsonl'))
            if 'eval/pass@1' in r}
  assert [r['step'] for r in rows] == [2, 3]
  # A later evaluation of another step adds its row to results.json.
  c.steps = '1'
  assert [r['step'] for r in eval_command.run(c)] == [1, 2, 3]
  for r in rows:
    for key in ('pass@1', f'cons@{e.k}', 'format_rate', 'length/mean', 'truncated'):
      assert r[key] == pytest.approx(logged[r['step']][f'eval/{key}'], abs=1e-9), key
  assert (tmp_path / 'eval' / 'plot.png').stat().st_size > 1000


def test_bad_configs_fail_naming_the_key(tmp_path, tfds_dir):
  c = _config(tmp_path, tfds_dir)
  c.benchmarks.sums.path = str(tmp_path / 'missing.jsonl')
  with pytest.raises(rc.ConfigError, match='config.benchmarks.sums.path: .*no such file'):
    eval_command.run(c)
  c = _config(tmp_path, tfds_dir)
  c.benchmarks.sums.fields.question = 'nope'
  with pytest.raises(rc.ConfigError, match="config.benchmarks.sums: .*no field 'nope'"):
    eval_command.run(c)
  with pytest.raises(rc.ConfigError, match='config.steps: .*HF directory'):
    eval_command.run(_config(tmp_path, tfds_dir, steps='all'))
  with pytest.raises(rc.ConfigError, match='config.prompt: .*no chat template'):
    eval_command.run(_config(tmp_path, tfds_dir, prompt='chat'))
  # Keys shared with the training configs are checked as there (a negative
  # reward timeout scored every sample 0 and exited 0).
  for key, value, match in [('reward_timeout_s', -1.0, 'a finite number > 0'),
                            ('reward_workers', -3, 'an integer >= 0'),
                            ('decode_slots', -4, 'an integer >= 0')]:
    with pytest.raises(rc.ConfigError, match=f'config.{key}: .*{match}'):
      eval_command.run(_config(tmp_path, tfds_dir, **{key: value}))
  c = _config(tmp_path, tfds_dir)
  c.model.param_dtype = 'fp8'
  with pytest.raises(rc.ConfigError, match='config.model.param_dtype: must be one of'):
    eval_command.run(c)
  # Past the model's positions (the shipped base has 512), and an output
  # path that is a file.
  with pytest.raises(rc.ConfigError, match=r'config.max_new_tokens: .* = \d+ exceeds the model'):
    eval_command.run(_config(tmp_path, tfds_dir, max_new_tokens=1000))
  with pytest.raises(rc.ConfigError, match='config.benchmarks: none: a training config'):
    eval_command.run(config_file('zero', None))  # another command's config
  from r1jax import rejection  # pylint: disable=g-import-not-at-top
  with pytest.raises(rc.ConfigError, match='config.filters: none: an evaluation config'):
    rejection.run(_config(tmp_path, tfds_dir))  # an AttributeError traceback before
  (tmp_path / 'afile').write_text('')
  with pytest.raises(rc.ConfigError, match='config.out: .*afile: File exists'):
    eval_command.run(_config(tmp_path, tfds_dir, out='afile'))


def test_the_command_line(tmp_path, tfds_dir):
  """`python -m r1jax.evaluate` as the README runs it."""
  r = subprocess.run([sys.executable, '-m', 'r1jax.evaluate',
                      f'--config={ROOT}/configs/eval.py:bench=arithmetic::',
                      '--config.benchmarks.arithmetic.limit=8', '--config.k=2',
                      '--config.pass_k=(1,2)', '--config.batch_size=8',
                      f'--config.out={tmp_path / "cli"}', f'--config.data_dir={tfds_dir}'],
                     capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  assert '| model | arithmetic | 8 |' in r.stdout
  bad = subprocess.run([sys.executable, '-m', 'r1jax.evaluate',
                        f'--config={ROOT}/configs/eval.py', '--config.k=0'],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert bad.returncode == 1 and 'FATAL: config.k: 0' in bad.stderr
  # A key the config does not have: named, without a traceback.
  typo = subprocess.run([sys.executable, '-m', 'r1jax.evaluate',
                         f'--config={ROOT}/configs/eval.py', '--config.batch_sizes=8'],
                        capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert typo.returncode == 1 and 'Traceback' not in typo.stderr, typo.stderr[-2000:]
  assert 'FATAL: config.batch_sizes: no such key' in typo.stderr, typo.stderr[-2000:]
  # A workdir with no checkpoint yet: the FATAL line alone (orbax's sweep of
  # temporary directories, left running, logged a traceback at exit).
  empty = tmp_path / 'empty-run'
  (empty / 'model').mkdir(parents=True)
  (empty / 'checkpoints').mkdir()
  (empty / 'model' / 'config.json').write_bytes(
      open(os.path.join(base.SHIPPED, 'config.json'), 'rb').read())
  none = subprocess.run([sys.executable, '-m', 'r1jax.evaluate',
                         f'--config={ROOT}/configs/eval.py:ckpt={empty}',
                         f'--config.out={tmp_path / "none"}'],
                        capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert none.returncode == 1 and none.stderr.strip().splitlines() == [
      f'FATAL: config.ckpt: {empty}/checkpoints: no checkpoint yet'], none.stderr[-2000:]


def test_the_aot_tool_checks_the_evaluation_sampler():
  """`python -m r1jax.tools.aot --config=configs/eval.py:…` compiles the
  command's sampler (decode slots included) and reports its memory."""
  import jax
  from r1jax.tools import aot
  c = eval_config()
  c.model.name = 'tiny'
  c.update(k=4, pass_k=(1, 4), batch_size=8, max_new_tokens=16, max_prompt_len=8, decode_slots=16)
  report = aot.check_eval(c, jax.devices())
  assert report['eval_compiled'] and report['eval_temp_gib'] > 0

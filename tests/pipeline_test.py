"""The multi-stage recipes: configs/r1.py:smoke end to end through the
pipeline notebook (every stage's output, summary.json, the plots), a rerun
that skips finished stages (and refuses one whose settings changed), a stage resumed from its checkpoint after losing
its end, a subset of stages, bad stage settings named before anything runs,
and configs/distill.py:smoke."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from r1jax import base, config as rc, launch, metrics, models, pipeline
from conftest import ROOT, config_file


def _r1(workdir, tfds_dir=None, **kw):
  c = config_file('r1', 'smoke')
  c.workdir = str(workdir)
  for stage in c.pipeline.order:
    if tfds_dir:
      c[stage].data_dir = tfds_dir
  c.update(kw)
  return c


@pytest.fixture(scope='module')
def notebook_run(tmp_path_factory):
  """notebooks/r1_pipeline.ipynb executed at smoke size: it runs
  configs/r1.py:smoke (its workdir, returned) and plots every stage."""
  import nbformat  # pylint: disable=g-import-not-at-top
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('notebook') / 'r1'
  env = {'R1JAX_NOTEBOOK_SMALL': '1', 'R1JAX_NOTEBOOK_PIPELINE': str(workdir),
         'JAX_PLATFORMS': 'cpu'}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    path = os.path.join(ROOT, 'notebooks', 'r1_pipeline.ipynb')
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name='python3',
                   resources={'metadata': {'path': os.path.dirname(path)}}).execute()
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
  return workdir, outputs


def test_the_pipeline_notebook_runs_every_stage_and_plots_them(notebook_run):
  _, outputs = notebook_run
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'stages plotted: cold_start, reasoning_rl, rs, sft, rm, rl' in text
  assert any('image/png' in o.get('data', {}) for o in outputs), 'no figure was displayed'


def _weights(path):
  return jax.tree.leaves(nnx.state(models.load_hf(str(path))))


def test_bad_settings_are_named_with_their_stage_before_anything_runs(tmp_path, tfds_dir):
  c = _r1(tmp_path / 'r1', tfds_dir)
  c.rm.rm.batch_size = 0
  with pytest.raises(rc.ConfigError, match=r'config\.rm\.rm\.batch_size'):
    launch.run(c)
  c = _r1(tmp_path / 'r1', tfds_dir)
  c.reasoning_rl.rl.group_size = 1
  with pytest.raises(rc.ConfigError, match=r'config\.reasoning_rl\.rl\.group_size'):
    launch.run(c)
  c = _r1(tmp_path / 'r1', tfds_dir, stages='rs,nope')
  with pytest.raises(rc.ConfigError, match="config.stages: unknown stage 'nope'"):
    launch.run(c)
  assert not (tmp_path / 'r1' / 'cold_start').exists()  # nothing ran
  d = config_file('distill', 'smoke,teacher=' + str(tmp_path / 'no-teacher'))
  with pytest.raises(rc.ConfigError, match='pipeline.sources.teacher'):
    launch.run(d)
  # A teacher that is a directory but no model; stages whose inputs come from
  # stages that have not run (both were found only once a stage had started).
  (tmp_path / 'not-a-model').mkdir()
  d = config_file('distill', 'smoke,teacher=' + str(tmp_path / 'not-a-model'))
  with pytest.raises(rc.ConfigError, match='pipeline.sources.teacher: .*neither a HF directory'):
    launch.run(d)
  with pytest.raises(rc.ConfigError, match='config.stages: stage rs reads its ckpt from stage '
                     'reasoning_rl, which has not finished'):
    launch.run(_r1(tmp_path / 'r1', tfds_dir, stages='rs,sft'))
  with pytest.raises(rc.ConfigError, match='config.stages: stage rl reads its model.ckpt from '
                     'stage sft, which has not finished'):
    launch.run(_r1(tmp_path / 'r1', tfds_dir, stages='rm,rl'))
  assert not (tmp_path / 'r1').exists()  # nothing ran, nothing was written
  # Once the stage it reads has finished, the subset is accepted.
  done = _r1(tmp_path / 'r1', tfds_dir, stages='rs,sft')
  (tmp_path / 'r1' / 'reasoning_rl').mkdir(parents=True)
  (tmp_path / 'r1' / 'reasoning_rl' / pipeline.DONE).write_text('{}')
  assert pipeline.validate(done) == ['rs', 'sft']


def test_r1_smoke_runs_every_stage_skips_them_when_done_and_resumes_inside_one(
    notebook_run, capsys):
  root, _ = notebook_run
  c = _r1(root)
  summary = json.loads((root / 'summary.json').read_text())
  stages = summary['stages']
  assert list(stages) == list(c.pipeline.order)
  for name, rec in stages.items():
    assert rec['name'] == name and rec['kind'] == c.pipeline.kinds[name]
    assert json.loads((root / name / pipeline.DONE).read_text()) == rec
  assert json.loads((root / 'summary.json').read_text()) == summary
  for name in ('cold_start', 'reasoning_rl', 'sft', 'rl'):  # model stages: a HF directory each
    assert (root / name / 'hf' / 'model.safetensors').exists(), name
    assert 'eval/pass@1' in stages[name]['metrics'] and 'eval/language' in stages[name]['metrics']
  assert stages['rs']['output'] == str(root / 'rs' / 'traces.jsonl')
  assert 0 <= stages['rs']['metrics']['keep_rate'] <= 1
  assert 'eval/rm_accuracy' in stages['rm']['metrics']
  assert 'eval/rm_score_general' in stages['rl']['metrics']
  # Stage 3's data: the traces and the non-reasoning records.
  general = (root / 'sft' / 'non_reasoning.jsonl').read_text().splitlines()
  assert len(general) == c.pipeline.non_reasoning_examples
  assert all(json.loads(x)['completion'].startswith(' <think> </think>') for x in general)
  capsys.readouterr()

  # Done: a rerun skips every stage.
  capsys.readouterr()
  again = launch.run(c)
  out = capsys.readouterr().out
  assert out.count('done already') == len(c.pipeline.order)
  assert again == summary
  # A stage whose settings changed is refused, not answered with its old
  # result; nothing is written.
  changed = _r1(root)
  changed.rl.steps += 1
  with pytest.raises(ValueError, match=r'stage rl finished with other settings .*steps: '
                     rf'{c.rl.steps} -> {c.rl.steps + 1}.*remove .*/rl to run it again'):
    launch.run(changed)
  assert json.loads((root / 'summary.json').read_text()) == summary
  assert (root / 'rl' / pipeline.DONE).exists()

  # The cold start lost its last checkpoint, its export and its marker (as
  # if killed after its first checkpoint): run alone, it resumes there and
  # ends with the same weights.
  before = _weights(root / 'cold_start' / 'hf')
  last = max(int(p.name) for p in (root / 'cold_start' / 'checkpoints').iterdir()
             if p.name.isdigit())
  shutil.rmtree(root / 'cold_start' / 'checkpoints' / str(last))
  shutil.rmtree(root / 'cold_start' / 'hf')
  (root / 'cold_start' / pipeline.DONE).unlink()
  assert last == 2
  resumed = launch.run(_r1(root, stages='cold_start'))
  out = capsys.readouterr().out
  assert 'resumed from' in out and 'stage cold_start done' in out
  assert list(resumed['stages']) == list(c.pipeline.order)  # the others' records are kept
  # The notebook's kernel has 1 CPU device, this process 8 (the batch sharded
  # 8 ways): the same update up to float rounding (sft_test checks the resume
  # bit for bit in one process).
  for a, b in zip(before, _weights(root / 'cold_start' / 'hf')):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  # The stages that read the cold start are stale now: a whole rerun refuses
  # to skip them.
  with pytest.raises(ValueError, match=r'stage reasoning_rl finished with other settings or '
                     r'inputs .*<input stages>\.cold_start'):
    launch.run(_r1(root))


def test_finished_stages_are_checked_before_anything_runs(tmp_path):
  """A finished stage whose input runs again is refused up front; settings
  that only say how a stage ran, and settings r1jax added since, are not
  changes; a moved workdir is the same run."""
  c = _r1(tmp_path / 'a')
  root = pipeline.wd.absolute(c.workdir)
  names = list(c.pipeline.order)
  (root / 'reasoning_rl').mkdir(parents=True)
  (root / 'reasoning_rl' / pipeline.DONE).write_text('{}')
  with pytest.raises(ValueError, match='stage reasoning_rl finished, but cold_start, which it '
                     'reads, runs again now'):
    pipeline.check_finished(c, names, root)
  # cold_start finished too, with its settings kept.
  (root / 'cold_start').mkdir()
  (root / 'cold_start' / pipeline.DONE).write_text('{"minutes": 1}')
  saved = pipeline._settings(c, 'cold_start', root)  # pylint: disable=protected-access
  saved['a_setting_r1jax_added_since'] = 1
  (root / 'cold_start' / pipeline.STAGE_CONFIG).write_text(json.dumps(saved))
  c.cold_start.mesh.data, c.cold_start.eval_every = 2, 7
  pipeline.check_finished(c, ['cold_start'], root)
  moved = tmp_path / 'b'
  shutil.copytree(root, moved)
  c.workdir = str(moved)
  pipeline.check_finished(c, ['cold_start'], pipeline.wd.absolute(c.workdir))
  c.cold_start.optim.lr *= 2
  with pytest.raises(ValueError, match=r'stage cold_start finished with other settings .*optim\.lr'):
    pipeline.check_finished(c, ['cold_start'], pipeline.wd.absolute(c.workdir))


def test_distill_smoke_trains_a_student_on_a_teachers_traces(tmp_path, tfds_dir):
  """The teacher (a short SFT run of the tiny R1 base) samples; the student
  (the shipped tiny base: another tokenizer) learns from the re-tokenised
  text; the RL-only comparison runs."""
  teacher = config_file('sft', 'smoke')
  teacher.model.ckpt = base.SHIPPED_R1
  del teacher.base
  teacher.sft.builtin_words = True
  teacher.workdir = str(tmp_path / 'teacher')
  teacher.data_dir = tfds_dir
  launch.run(teacher)
  d = config_file('distill', f'smoke,teacher={tmp_path / "teacher"}')
  d.workdir = str(tmp_path / 'distill')
  for stage in d.pipeline.order:
    d[stage].data_dir = tfds_dir
  summary = launch.run(d)
  assert list(summary['stages']) == ['rs', 'student', 'rl_only']
  # The teacher's kept samples are the traces, and the student trained on
  # them: its SFT loss lines, and weights moved from its shipped base.
  kept = summary['stages']['rs']['metrics']['kept']
  traces = (tmp_path / 'distill' / 'rs' / 'traces.jsonl').read_text().splitlines()
  assert kept > 0 and len(traces) == kept
  rows = metrics.read_jsonl(str(tmp_path / 'distill' / 'student' / 'metrics.jsonl'))
  assert [r['step'] for r in rows if 'sft/loss' in r] == [1, 2]
  student = load_file(str(tmp_path / 'distill' / 'student' / 'hf' / 'model.safetensors'))
  shipped = load_file(os.path.join(base.SHIPPED_STUDENT, 'model.safetensors'))
  assert student.keys() == shipped.keys()
  assert any(np.abs(student[k] - shipped[k]).max() > 0 for k in shipped)
  assert 'eval/pass@1' in summary['stages']['student']['metrics']
  assert 'eval/pass@1' in summary['stages']['rl_only']['metrics']


def test_r1_paper_runs_its_rl_stages_at_the_papers_settings():
  """configs/r1.py:paper: both RL stages start from R1-Zero's paper preset
  (32,768 new tokens, G 16, 512 x 16 samples in 16 minibatches) with
  stage 2's clip ε 10 and stage 4's temperature 0.7 and schedule."""
  c = config_file('r1', 'model=qwen2.5-1.5b,paper')
  for stage in ('reasoning_rl', 'rl'):
    r = c[stage].rl
    assert (r.max_new_tokens, r.group_size, r.prompts_per_step, r.minibatches, r.beta) == (
        32768, 16, 512, 16, 0.001), stage
    assert c[stage].optim.lr == 3e-6 and c[stage].eval.k == 16
  assert c.reasoning_rl.rl.epsilon_low == 10.0 and c.reasoning_rl.rl.temperature == 1.0
  assert c.rl.rl.temperature == 0.7 and (c.rl.steps, c.rl.general.from_step) == (106, 81)
  assert c.rs.max_new_tokens == 32768 and c.sft.sft.max_len == 32768

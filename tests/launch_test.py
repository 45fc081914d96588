"""End to end through launch.run on the smoke preset: metrics, checkpoint,
resume."""
import os

import pytest

from conftest import zero_config
from r1jax import launch, metrics


def _config(tmp_path, tfds_dir, steps=3):
  c = zero_config('smoke')  # from the shipped tiny base
  c.data_dir = tfds_dir
  c.workdir = str(tmp_path / 'run')
  c.steps = steps
  c.mesh.update(data=4, fsdp=1, tensor=2)  # 8 emulated devices, tensor-parallel too
  return c


def test_launch_runs_writes_metrics_and_checkpoints_then_resumes(tmp_path, tfds_dir, capsys,
                                                                 monkeypatch):
  # A relative workdir, as the default config's (orbax needs absolute paths).
  monkeypatch.chdir(tmp_path)
  relative = lambda c: c.update(workdir='run') or c  # noqa: E731
  summary = launch.run(relative(_config(tmp_path, tfds_dir)))
  rows = metrics.read_jsonl(str(tmp_path / 'run' / 'metrics.jsonl'))
  train = [r for r in rows if 'reward/total' in r]
  evals = [r for r in rows if 'eval/pass@1' in r]
  assert [r['step'] for r in train] == [1, 2, 3]
  assert evals[0]['step'] == 0 and evals[-1]['step'] == 3
  for key in ('reward/exact_match', 'reward/format', 'loss', 'kl', 'tokens_per_s', 'accuracy'):
    assert key in train[0]
  assert 0.0 <= summary['eval/pass@1'] <= 1.0
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints')) == ['2', '3']
  assert os.listdir(tmp_path / 'run' / 'samples')
  assert any(f.startswith('events') for f in os.listdir(tmp_path / 'run' / 'tb'))

  # The same command with more steps resumes from step 3.
  capsys.readouterr()
  launch.run(relative(_config(tmp_path, tfds_dir, steps=4)))
  assert 'resumed from' in capsys.readouterr().out
  rows = metrics.read_jsonl(str(tmp_path / 'run' / 'metrics.jsonl'))
  assert [r['step'] for r in rows if 'reward/total' in r] == [1, 2, 3, 4]
  assert '4' in os.listdir(tmp_path / 'run' / 'checkpoints')


def test_invalid_config_fails_before_compiling(tmp_path, tfds_dir):
  from r1jax import config as rc
  c = _config(tmp_path, tfds_dir)
  c.rl.group_size = 1
  with pytest.raises(rc.ConfigError, match='config.rl.group_size'):
    launch.run(c)
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


@pytest.mark.parametrize('skip', [False, True])
def test_nonfinite_updates_never_reach_a_checkpoint(tmp_path, tfds_dir, skip):
  """Issue 10.3: with a huge learning rate the first update blows the model
  up; no checkpoint may hold non-finite parameters. skip_nonfinite=False
  stops with a FloatingPointError before saving; True skips and counts."""
  import numpy as np
  import jax
  from r1jax.checkpoint import Checkpointer
  c = _config(tmp_path, tfds_dir, steps=4)
  c.optim.lr = 1e30
  c.checkpoint_every = 1
  c.skip_nonfinite = skip
  if skip:
    launch.run(c)
  else:
    with pytest.raises(FloatingPointError, match='not applied and nothing was saved'):
      launch.run(c)
  rows = [r for r in metrics.read_jsonl(str(tmp_path / 'run' / 'metrics.jsonl'))
          if 'reward/total' in r]
  assert any(r['nonfinite_skipped'] > 0 for r in rows)
  ckpt = Checkpointer(str(tmp_path / 'run'))
  steps = ckpt.manager.all_steps()
  assert steps
  for s in steps:
    restored = ckpt.manager.restore(s)
    leaves = jax.tree.leaves(restored['state']['params'])
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves), f'checkpoint {s} is not finite'
  ckpt.close()


def test_a_checkpoint_without_a_tokenizer_says_to_set_config_tokenizer(tmp_path, tfds_dir):
  """Issue 12.7: an HF directory with weights but no tokenizer files."""
  from conftest import FIXTURES
  from r1jax import config as rc
  c = _config(tmp_path, tfds_dir)
  c.model.ckpt = os.path.join(FIXTURES, 'hf_qwen2_tiny')  # config.json + weights only
  with pytest.raises(rc.ConfigError, match=r'config.tokenizer: .*hf_qwen2_tiny: no '
                     r'tokenizer.json or tokenizer.model .*set --config.tokenizer'):
    launch.run(c)


def test_bad_paths_meshes_data_and_checkpoints_are_named_not_tracebacks(tmp_path, tfds_dir):
  """Each fails with a ConfigError naming its key before anything compiles
  (they were FileExistsError, ValueError, FileNotFoundError and
  CheckpointError tracebacks)."""
  from conftest import FIXTURES, config_file
  from r1jax import config as rc
  (tmp_path / 'afile').write_text('')
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'train.jsonl').write_text('{"question": "1+1", "answer": "2"}\nnot json\n')
  (bad / 'test.jsonl').write_text('{"question": "1+1", "answer": "2"}\n')
  broken = tmp_path / 'broken'  # a HF directory whose config.json does not parse
  broken.mkdir()
  for f in os.listdir(os.path.join(FIXTURES, 'hf_qwen2_tiny')):
    (broken / f).write_bytes(open(os.path.join(FIXTURES, 'hf_qwen2_tiny', f), 'rb').read())
  (broken / 'config.json').write_text('{"model_type": ')

  def fails(key, match, **changes):
    c = _config(tmp_path, tfds_dir)
    for k, v in changes.items():
      node = c
      *path, last = k.split('.')
      for p in path:
        node = node[p]
      node[last] = v
    with pytest.raises(rc.ConfigError, match=rf'^config\.{key}: {match}'):
      launch.run(c)

  fails('workdir', '.*afile: File exists', workdir=str(tmp_path / 'afile'))
  fails('workdir', '.*afile/run: Not a directory', workdir=str(tmp_path / 'afile' / 'run'))
  fails('mesh', r"sizes .* need 24 devices, 8 available", **{'mesh.fsdp': 3})
  fails('data_dir', r"split 'train': need exactly one of", task='local',
        data_dir=str(tmp_path / 'nothing'))
  fails('data_dir', r'.*train.jsonl:2: not valid JSON', task='local', data_dir=str(bad))
  from r1jax import base
  fails('model.ckpt', r'.*config.json: not valid JSON', **{'model.ckpt': str(broken),
                                                          'tokenizer': base.SHIPPED})
  # A step the run does not have (read as "no config.json" before).
  run = tmp_path / 'old-run'
  (run / 'model').mkdir(parents=True)
  (run / 'model' / 'config.json').write_bytes(
      open(os.path.join(base.SHIPPED, 'config.json'), 'rb').read())
  (run / 'checkpoints' / '20').mkdir(parents=True)
  fails('model.ckpt', r".*no checkpoint 99 in .*old-run \(steps: \[20\]\)",
        **{'model.ckpt': str(run / 'checkpoints' / '99')})
  # A reward model that is not there (found once the policy had loaded).
  fails('reward_model.ckpt', "'/nonexistent/rm' does not exist",
        **{'rewards.reward_model': 1.0, 'reward_model.ckpt': '/nonexistent/rm'})
  # A config of another command.
  with pytest.raises(rc.ConfigError, match='config of python -m r1jax.evaluate'):
    launch.run(config_file('eval', None))


def test_a_resumed_runs_warning_shows_the_differences_that_matter_first():
  """Resuming another recipe's checkpoint listed only the tiny base's build
  settings (the first 10 differences), hiding the task and rewards."""
  changed = [f'base.setting{i}: 1 -> 2' for i in range(12)] + [
      "task: 'arithmetic' -> 'countdown'", 'rewards.countdown: None -> 1.0', 'eval_every: 5 -> 10']
  shown = launch.shown_changes(changed)
  assert shown.startswith("task: 'arithmetic' -> 'countdown'; rewards.countdown: None -> 1.0; "
                          'eval_every: 5 -> 10; base.setting0')
  assert shown.endswith('; and 5 more')
  assert launch.shown_changes(changed[:3]) == '; '.join(changed[:3])

"""End to end through launch.run on the smoke preset: metrics, checkpoint,
resume."""
import os

import pytest

from conftest import zero_config
from r1jax import launch, metrics


def _config(tmp_path, smoke_base, steps=3):
  c = zero_config('smoke')
  c.base = smoke_base
  c.model.ckpt = smoke_base.dir
  c.data_dir = smoke_base.data_dir
  c.workdir = str(tmp_path / 'run')
  c.steps = steps
  c.mesh.update(data=4, fsdp=1, tensor=2)  # 8 emulated devices, tensor-parallel too
  return c


def test_launch_runs_writes_metrics_and_checkpoints_then_resumes(tmp_path, smoke_base, capsys):
  summary = launch.run(_config(tmp_path, smoke_base))
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
  launch.run(_config(tmp_path, smoke_base, steps=4))
  assert 'resumed from' in capsys.readouterr().out
  rows = metrics.read_jsonl(str(tmp_path / 'run' / 'metrics.jsonl'))
  assert [r['step'] for r in rows if 'reward/total' in r] == [1, 2, 3, 4]
  assert '4' in os.listdir(tmp_path / 'run' / 'checkpoints')


def test_invalid_config_fails_before_compiling(tmp_path, smoke_base):
  from r1jax import config as rc
  c = _config(tmp_path, smoke_base)
  c.rl.group_size = 1
  with pytest.raises(rc.ConfigError, match='config.rl.group_size'):
    launch.run(c)
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')

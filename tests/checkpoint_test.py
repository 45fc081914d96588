"""Checkpoints: restore onto another mesh, skip a damaged latest checkpoint."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax import sharding as shd
from r1jax.checkpoint import Checkpointer, Mismatch, SaveError


def _state(mesh, spec, scale=1.0):
  w = jnp.arange(64 * 16, dtype=jnp.float32).reshape(64, 16) * scale
  return {'w': jax.device_put(w, NamedSharding(mesh, spec)),
          'step': jax.device_put(jnp.int32(7), NamedSharding(mesh, P()))}


def test_restore_onto_a_different_mesh(tmp_path):
  saved = _state(shd.make_mesh(8, 1, 1), P('data', None))
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, saved, {'data': {'position': 3}})
  ckpt.wait()
  target = shd.make_mesh(1, 4, 2)
  like = _state(target, P('fsdp', 'tensor'), scale=0.0)
  step, state, meta = ckpt.restore_latest(like)
  ckpt.close()
  assert step == 1 and meta == {'data': {'position': 3}}
  np.testing.assert_array_equal(state['w'], saved['w'])
  assert state['w'].sharding == like['w'].sharding  # resharded on restore
  assert state['w'].addressable_shards[0].data.shape == (16, 8)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
  mesh = shd.make_mesh(8, 1, 1)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, _state(mesh, P(), 1.0), {'step': 1})
  ckpt.save(2, _state(mesh, P(), 2.0), {'step': 2})
  ckpt.wait()
  # Lose the array data of step 2 after it was committed.
  state_dir = os.path.join(ckpt.directory, '2', 'state')
  for root, _, files in os.walk(state_dir):
    for f in files:
      os.remove(os.path.join(root, f))
  step, state, meta = ckpt.restore_latest(_state(mesh, P(), 0.0))
  assert step == 1 and meta == {'step': 1}
  np.testing.assert_array_equal(state['w'], _state(mesh, P(), 1.0)['w'])
  assert 'checkpoint' in capsys.readouterr().out  # the warning names the skipped one
  # Issue 11.3: the damaged step 2 was never replaced (latest_step() stayed
  # 2, so the retrained step 2 was not saved). It is moved aside, kept.
  assert ckpt.latest_step() == 1
  assert [d for d in os.listdir(ckpt.directory) if d.startswith('2.unreadable-')]
  ckpt.save(2, _state(mesh, P(), 3.0), {'step': 2})
  ckpt.wait()
  step, state, _ = ckpt.restore_latest(_state(mesh, P(), 0.0))
  ckpt.close()
  assert step == 2
  np.testing.assert_array_equal(state['w'], _state(mesh, P(), 3.0)['w'])


def test_no_checkpoint_restores_nothing(tmp_path):
  assert Checkpointer(str(tmp_path)).restore_latest({'w': jnp.zeros(2)}) is None


def test_a_state_of_another_shape_is_refused_naming_leaves_and_config(tmp_path):
  """Issue 11.1: a checkpoint that does not fit is never skipped (the run
  would restart at step 0 and delete it): Mismatch names what differs."""
  mesh = shd.make_mesh(8, 1, 1)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, {**_state(mesh, P()), 'ref': _state(mesh, P())['w']},
            {'config': {'rl': {'beta': 0.04}, 'steps': 3}})
  ckpt.close()
  again = Checkpointer(str(tmp_path))  # a new process: nothing known but the files
  like = {'w': jnp.zeros((64, 8)), 'step': jnp.int32(0)}
  with pytest.raises(Mismatch) as e:
    again.restore_latest(like, {'rl': {'beta': 0.0}, 'steps': 3})
  message = str(e.value)
  assert "ref: in the checkpoint, not in this run's state" in message
  assert 'w: float32[64, 16] in the checkpoint, float32[64, 8] in this run' in message
  assert 'rl.beta: 0.04 -> 0.0' in message and 'steps' not in message
  assert again.latest_step() == 1  # nothing moved aside or deleted


def test_bit_rot_is_found_by_the_digest_and_falls_back(tmp_path, capsys):
  """Issue 11.7: flipped bytes in a data file restored silently; now the
  digest check treats the checkpoint as unreadable."""
  mesh = shd.make_mesh(8, 1, 1)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, _state(mesh, P(), 1.0), {'step': 1})
  ckpt.save(2, _state(mesh, P(), 2.0), {'step': 2})
  ckpt.close()
  root = tmp_path / 'checkpoints' / '2'
  assert sorted(p.name for p in root.glob('r1jax-digest.*')) == ['r1jax-digest.0.json']
  data = max((p for p in root.rglob('*') if p.is_file() and '/d/' in str(p)),
             key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:][:64])
  data.write_bytes(bytes(raw))
  again = Checkpointer(str(tmp_path))
  step, state, _ = again.restore_latest(_state(mesh, P(), 0.0))
  again.close()
  assert step == 1
  np.testing.assert_array_equal(state['w'], _state(mesh, P(), 1.0)['w'])
  out = capsys.readouterr().out
  assert 'does not match its digest' in out and '2.unreadable-' in out


def test_a_full_disk_names_the_step_and_the_intact_checkpoint(tmp_path):
  """Issue 11.9, with the error a full disk raises inside orbax's writer."""
  import errno
  from unittest import mock
  mesh = shd.make_mesh(8, 1, 1)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, _state(mesh, P(), 1.0), {'step': 1})
  ckpt.finish()
  full = OSError(errno.ENOSPC, 'No space left on device')
  with mock.patch.object(ckpt.manager, 'save', side_effect=full):
    with pytest.raises(SaveError) as e:
      ckpt.save(2, _state(mesh, P(), 2.0), {'step': 2})
  assert str(e.value).startswith(f'no space left on {ckpt.directory} while saving step 2; '
                                 'checkpoint 1 is intact')
  ckpt.close()


def test_a_full_disk_while_writing_metrics_names_the_step_and_the_intact_checkpoint(tmp_path):
  """The metrics' write (loop.safe_write): ENOSPC becomes the SaveError a
  run ends with in one line; other errors pass as they are. (The tmpfs test
  in faults_test.py fills a real disk where the runner may mount one.)"""
  import errno
  from r1jax import loop
  mesh = shd.make_mesh(8, 1, 1)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, _state(mesh, P(), 1.0), {'step': 1})
  ckpt.finish()

  class Writer:
    def __init__(self, error):
      self.error = error

    def write(self, step, m):
      raise self.error

  full = loop.safe_write(Writer(OSError(errno.ENOSPC, 'No space left on device')), tmp_path, ckpt)
  with pytest.raises(SaveError) as e:
    full(3, {'loss': 1.0})
  assert str(e.value) == (f'no space left on {tmp_path} while writing the metrics of step 3; '
                          'checkpoint 1 is intact')
  denied = loop.safe_write(Writer(PermissionError(errno.EACCES, 'denied')), tmp_path, ckpt)
  with pytest.raises(PermissionError):
    denied(3, {'loss': 1.0})
  ckpt.close()

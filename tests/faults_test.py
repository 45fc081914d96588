"""Fault injection against the smoke run (issue 11). The promise: whatever
happens, the last good checkpoint and every metrics line written stay, and a
rerun either continues exactly or refuses with a message that says why; the
process always exits.

Each test copies one finished 3-step run (a checkpoint per step) or starts
its own, applies a fault, and reruns."""
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest

from conftest import ROOT
from resume_test import _leaves, final_params, finish, start, training_lines
from r1jax import checkpoint, launch, metrics, workdir as wd


def copy_of(done, tmp_path, steps=4):
  c = done.copy_and_resolve_references()
  c.workdir = str(tmp_path / 'run')
  shutil.copytree(done.workdir, c.workdir)
  c.steps = steps
  return c


def snapshot(workdir) -> dict:
  """Every file's bytes, but the lock's and the library log's (each run
  appends to log.txt)."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      if f != 'lock' and not (f.startswith('log') and f.endswith('.txt')):
        path = os.path.join(root, f)
        with open(path, 'rb') as fh:
          out[os.path.relpath(path, workdir)] = fh.read()
  return out


def largest_data_file(step_dir) -> str:
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
           if os.sep + 'd' + os.sep in os.path.join(r, f)]
  return max(files, key=os.path.getsize)


def test_bit_flipped_and_truncated_files_fall_back_and_rerun_exactly(done, tmp_path, capsys):
  c = copy_of(done, tmp_path)
  ckpts = os.path.join(c.workdir, 'checkpoints')
  flipped = largest_data_file(os.path.join(ckpts, '3'))
  with open(flipped, 'r+b') as f:  # 64 flipped bytes mid-file
    f.seek(os.path.getsize(flipped) // 2)
    raw = f.read(64)
    f.seek(-len(raw), 1)
    f.write(bytes(b ^ 0xFF for b in raw))
  truncated = largest_data_file(os.path.join(ckpts, '2'))
  with open(truncated, 'r+b') as f:
    f.truncate(os.path.getsize(truncated) // 2)
  capsys.readouterr()
  launch.run(c)
  out = capsys.readouterr().out
  assert out.count('does not match its digest') == 2, out
  assert 'resumed from' in out and out.split('resumed from')[1].split()[0].endswith('/1')
  # Both damaged checkpoints are kept aside; steps 2 and 3 were retrained
  # exactly (the same lines as the first time) and saved again.
  names = os.listdir(ckpts)
  assert any(n.startswith('3.unreadable-') for n in names)
  assert any(n.startswith('2.unreadable-') for n in names)
  assert {'3', '4'} <= set(names)
  assert training_lines(c.workdir)[:3] == training_lines(done.workdir)
  assert [r['step'] for r in training_lines(c.workdir)] == [1, 2, 3, 4]
  # Failure counters: per step, and the run's totals carried by checkpoints.
  assert all('reward/timeouts_total' in r and 'reward/callback_failures_total' in r
             for r in training_lines(c.workdir))
  assert os.listdir(os.path.join(ckpts, '4'))
  meta = json.load(open(os.path.join(ckpts, '4', 'meta', 'metadata')))
  assert set(meta['counters']) >= {'reward/errors', 'reward/timeouts', 'reward/rejected',
                                   'reward/callback_failures'}


@pytest.mark.parametrize('key,value,leaf', [
    ('rl.beta', 0.0, "ref_params/ (14 leaves): in the checkpoint, not in this run's state"),
    ('optim.grad_clip', 0.0, 'opt_state/'),
])
def test_a_changed_config_is_refused_and_nothing_changes(done, tmp_path, key, value, leaf):
  c = copy_of(done, tmp_path)
  before = snapshot(c.workdir)
  section, name = key.split('.')
  saved = c[section][name]
  c[section][name] = value
  with pytest.raises(checkpoint.Mismatch) as e:
    launch.run(c)
  message = str(e.value)
  assert 'is of another run' in message and leaf in message
  assert f'{key}: {saved!r} -> {value!r}' in message
  assert snapshot(c.workdir) == before  # no checkpoint, metrics line or file touched
  with pytest.raises(SystemExit) as exit_:  # the command line's way: FATAL, exit 1
    launch.run_or_exit(c)
  assert exit_.value.code == 1


def test_a_second_process_is_refused_naming_the_holder(done, tmp_path):
  c = copy_of(done, tmp_path)
  held = wd.Lock(c.workdir)
  try:
    before = snapshot(c.workdir)
    with pytest.raises(wd.Busy, match=f'in use by pid {os.getpid()} on '):
      launch.run(c)
    other = subprocess.run(  # another process, the real case
        [sys.executable, '-c', 'import sys; from r1jax import workdir\n'
         'try: workdir.Lock(sys.argv[1])\nexcept workdir.Busy as e: sys.exit(str(e))',
         c.workdir], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and f'in use by pid {os.getpid()}' in other.stderr
    assert snapshot(c.workdir) == before
  finally:
    held.release()


def test_the_lock_of_a_killed_process_is_taken_over(done, tmp_path, capsys):
  c = copy_of(done, tmp_path, steps=3)
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from r1jax import workdir\n'
       'workdir.Lock(sys.argv[1]); print("held", flush=True); time.sleep(600)', c.workdir],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  with pytest.raises(wd.Busy, match=f'in use by pid {holder.pid} '):
    launch.run(c)
  holder.kill()  # SIGKILL: the lock file still names it
  holder.wait()
  capsys.readouterr()
  before = snapshot(c.workdir)
  summary = launch.run(c)  # the run is finished: nothing to do
  out = capsys.readouterr().out
  assert f'taking over the lock of pid {holder.pid}' in out
  assert 'holds a finished run (3 of 3 steps); nothing to do' in out
  assert summary['step'] == 3 and 'eval/pass@1' in summary
  assert snapshot(c.workdir) == before  # issue 12.9: no second evaluation row
  with open(os.path.join(c.workdir, 'lock')) as f:
    assert f.read() == ''  # released at the end


def test_sigkill_during_a_save_and_a_torn_line_then_rerun_exactly(done, tmp_path):
  c = done.copy_and_resolve_references()
  c.workdir = str(tmp_path / 'run')
  proc = start(c, str(tmp_path / 'c.json'), {'R1JAX_TEST_FAULT': 'kill_in_save:2'})
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == -signal.SIGKILL, out[-2000:]
  ckpts = os.path.join(c.workdir, 'checkpoints')
  assert '1' in os.listdir(ckpts)
  with open(os.path.join(c.workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 3, "reward/to')  # a write cut by the kill
  out = finish(start(c, str(tmp_path / 'c.json')))
  assert 'dropping a torn last line' in out and 'resumed from' in out
  # Exact: the lines and the final parameters, bit for bit, of the run that
  # was never interrupted.
  assert training_lines(c.workdir) == training_lines(done.workdir)
  a, b = (dict(_leaves(final_params(w, 3))) for w in (done.workdir, c.workdir))
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_an_exception_keeps_the_save_in_flight_and_the_process_exits(done, tmp_path):
  c = done.copy_and_resolve_references()
  c.workdir = str(tmp_path / 'run')
  # Step 2's save takes 5 s in the background, so step 3's exception meets it
  # in flight; before, only `2.orbax-checkpoint-tmp` remained.
  proc = start(c, str(tmp_path / 'c.json'), {'R1JAX_TEST_FAULT': 'slow_save:2,raise_at:3'})
  out, _ = proc.communicate(timeout=600)  # a hang fails here
  assert proc.returncode == 1 and 'injected fault at step 3' in out, out[-2000:]
  root = os.path.join(c.workdir, 'checkpoints')
  assert sorted(os.listdir(root)) == ['1', '2']  # step 2's save finished, none half-written
  assert os.path.exists(os.path.join(root, '2', 'r1jax-digest.0.json'))
  out = finish(start(c, str(tmp_path / 'c.json')))
  assert f'resumed from {root}/2' in out
  assert training_lines(c.workdir) == training_lines(done.workdir)


def test_a_save_that_never_finishes_cannot_hold_the_process(done, tmp_path):
  c = done.copy_and_resolve_references()
  c.workdir = str(tmp_path / 'run')
  c.checkpoint_wait_s = 5.0
  proc = start(c, str(tmp_path / 'c.json'), {'R1JAX_TEST_FAULT': 'hang_save:2,raise_at:3'})
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 1, out[-2000:]
  assert 'the save of step 2' in out and 'did not finish within 5 s' in out, out[-2000:]
  assert 'injected fault at step 3' in out  # the cause, still shown
  assert checkpoint.Checkpointer(c.workdir).latest_step() == 1


def test_a_full_disk_says_so_keeps_the_last_checkpoint_and_resumes(done, tmp_path):
  mount = tmp_path / 'disk'
  mount.mkdir()
  one = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in
            os.walk(os.path.join(done.workdir, 'checkpoints', '1')) for f in fs)
  size_kb = int(2.5 * one / 1024) + 512  # two checkpoints and the metrics
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size_kb}k', 'tmpfs',
                            str(mount)], capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f'cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root')
  try:
    c = done.copy_and_resolve_references()
    c.workdir = str(mount / 'run')
    c.steps, c.checkpoint_keep = 6, 10
    proc = start(c, str(tmp_path / 'c.json'))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-3000:]
    fatal = [line for line in out.splitlines() if line.startswith('FATAL: no space left on')]
    assert fatal, out[-3000:]
    intact = int(fatal[0].split('checkpoint ')[1].split()[0])
    assert f'while saving step {intact + 1}' in fatal[0] or 'writing the metrics' in fatal[0]
    assert 'Traceback' not in out, out[-3000:]
    subprocess.run(['mount', '-o', f'remount,size={20 * size_kb}k', str(mount)], check=True)
    out = finish(start(c, str(tmp_path / 'c.json')))
    assert f'resumed from {c.workdir}/checkpoints/{intact}' in out
    assert [r['step'] for r in training_lines(c.workdir)] == [1, 2, 3, 4, 5, 6]
    assert training_lines(c.workdir)[:3] == training_lines(done.workdir)
  finally:
    subprocess.run(['umount', '-l', str(mount)], check=False)


def test_a_gs_workdir_keeps_its_scheme_end_to_end(done, tmp_path, monkeypatch):
  import fsspec
  from fsspec.implementations.local import LocalFileSystem
  from etils import epath
  root = str(tmp_path / 'buckets')
  os.makedirs(root)

  class BucketFS(LocalFileSystem):
    """`gs://` for fsspec with no network: buckets are folders under `root`."""
    protocol = ('gs', 'gcs')

    def __init__(self, *args, finalize_on_close=False, **kwargs):
      del finalize_on_close
      super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
      path = os.fspath(path)
      for scheme in ('gs://', 'gcs://'):
        if path.startswith(scheme):
          return os.path.join(root, path[len(scheme):])
      return super()._strip_protocol(path)

  cached = epath.backend._FileSystemSpecBackend._get_filesystem  # an lru_cache
  cached.cache_clear()
  for scheme in BucketFS.protocol:
    fsspec.register_implementation(scheme, BucketFS, clobber=True)
  handed = []
  real_manager = checkpoint.ocp.CheckpointManager

  def manager(directory, *args, **kwargs):
    # Orbax's arrays go through tensorstore's own GCS driver (network), so
    # the manager gets the local twin; what r1jax handed it is recorded.
    handed.append(directory)
    return real_manager(os.path.join(root, str(directory)[len('gs://'):]), *args, **kwargs)

  monkeypatch.setattr(checkpoint.ocp, 'CheckpointManager', manager)
  bucket = f'gs://bucket-{uuid.uuid4().hex[:6]}/run'
  c = done.copy_and_resolve_references()
  c.workdir, c.steps = bucket, 2
  cwd = os.getcwd()
  try:
    launch.run(c)
  finally:
    cached.cache_clear()
    for scheme in BucketFS.protocol:
      sys.modules['fsspec.registry']._registry.pop(scheme, None)  # pylint: disable=protected-access
  assert [str(d) for d in handed] == [f'{bucket}/checkpoints']
  assert not os.path.exists(os.path.join(cwd, 'gs:'))  # nothing under a local `gs:` folder
  local = os.path.join(root, bucket[len('gs://'):])
  rows = metrics.read_jsonl(os.path.join(local, 'metrics.jsonl'))
  assert [r['step'] for r in rows if 'loss' in r] == [1, 2]
  assert any(f.startswith('events') for f in os.listdir(os.path.join(local, 'tb')))
  assert os.listdir(os.path.join(local, 'samples'))
  assert not os.path.exists(os.path.join(local, 'lock'))  # released
  assert os.path.exists(os.path.join(local, 'checkpoints', '2', 'r1jax-digest.0.json'))

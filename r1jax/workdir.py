"""What a workdir holds, and one run per workdir.

Layout: `checkpoints/<step>/` (orbax), `model/` (the policy's config.json,
tokenizer and generation config, written at the start of a run: with a
checkpoint's params they make a HF model, `r1jax.export`), `metrics.jsonl`,
`log.txt`, `tfds/` (the built-in tasks' data, unless `data_dir` is set),
`base/` (a rebuilt tiny base), `lock`.

The lock: an exclusive lock, held by process 0 for the whole
run, in `<workdir>/lock`, which says who holds it (host, pid, start time,
command).

- Local filesystems: `flock` on the file. The kernel drops the lock when its
  process dies, so the lock of a killed run is taken over (with a note
  naming it) and a live run's never is.
- Object stores (`gs://`, `s3://`), which have no locks, and filesystems
  whose `flock` fails (some NFS and FUSE mounts): the file carries a
  heartbeat that a thread of the run refreshes every `HEARTBEAT_S`; a lock
  whose heartbeat is older than `STALE_S` is a dead run's and is taken over.
  A run that finds its lock taken (two started at once; the later write
  wins) stops at its next step.
"""
import datetime
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

STALE_S = 600.0
HEARTBEAT_S = 60.0


class Busy(Exception):
  """Another run holds the workdir."""


def is_local(path: epath.PathLike) -> bool:
  return '://' not in os.fspath(path)


def absolute(path: epath.PathLike) -> epath.Path:
  """A local path made absolute (against the working directory); URLs as they are."""
  return epath.Path(os.path.abspath(path) if is_local(path) else path)


MODEL = 'model'
CHECKPOINTS = 'checkpoints'


def checkpoint_ref(path: epath.PathLike) -> tuple[epath.Path, int | None] | None:
  """(workdir, step) when `path` is an r1jax workdir (step None: its newest
  checkpoint) or `<workdir>/checkpoints/<step>`; None for anything else
  (a HF directory)."""
  p = epath.Path(path)
  if (p / MODEL / 'config.json').exists() and (p / CHECKPOINTS).exists():
    return p, None
  if p.name.isdigit() and p.parent.name == CHECKPOINTS and p.parent.exists() and (
      p.parent.parent / MODEL / 'config.json').exists():  # a missing step: the loader says so
    return p.parent.parent, int(p.name)
  return None


def model_dir(path: epath.PathLike) -> str:
  """The directory with the config.json of a checkpoint path (HF or r1jax)."""
  ref = checkpoint_ref(path)
  return os.fspath(ref[0] / MODEL) if ref else os.fspath(path)


def _describe(holder: dict) -> str:
  if not holder:
    return 'another process'
  return (f'pid {holder.get("pid")} on {holder.get("host")} (started {holder.get("started")}: '
          f'{holder.get("command", "")[:120]})')


class Lock:
  """Raises Busy, naming the holder, when another run holds `workdir`."""

  def __init__(self, workdir: epath.PathLike):
    self.path = epath.Path(workdir) / 'lock'
    self.fd = None
    self.held = False
    self.lost = ''  # set by the heartbeat thread when another run took the lock
    self.stop = threading.Event()
    self.me = {'host': socket.gethostname(), 'pid': os.getpid(),
               'started': datetime.datetime.now().isoformat(timespec='seconds'),
               'command': ' '.join(sys.argv), 'token': uuid.uuid4().hex}
    failure = None
    if jax.process_index() == 0:
      try:
        if not is_local(self.path) or not self._acquire_local():
          self._acquire_remote()
        self.held = True
      except Exception as e:  # pylint: disable=broad-except
        failure = e
    ok = failure is None
    if jax.process_count() > 1:  # every process learns process 0's outcome
      ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
    if failure is not None:
      raise failure
    if not ok:
      raise Busy(f'process 0 could not lock {self.path} (another run holds it; see process '
                 '0\'s log)')

  def _busy(self, holder: dict, extra: str = '') -> Busy:
    return Busy(f'{self.path.parent} is in use by {_describe(holder)}{extra}. Wait for that '
                'run to end or stop it, or use another workdir.')

  def _acquire_local(self) -> bool:
    """flock; False where the filesystem cannot lock (use the heartbeat)."""
    import fcntl  # pylint: disable=g-import-not-at-top
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read(os.pread(fd, 1 << 16, 0))
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise self._busy(holder) from None
      print(f'[r1jax] {self.path}: this filesystem cannot flock ({e.strerror}); using a '
            'heartbeat lock', flush=True)
      return False
    self.fd = fd
    old = _read(os.pread(fd, 1 << 16, 0))
    if old:  # a run that ended without releasing: it was killed
      print(f'[r1jax] taking over the lock of {_describe(old)}, which is no longer running',
            flush=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(self.me).encode(), 0)
    return True

  def _acquire_remote(self) -> None:
    if self.path.exists():
      old = _read(self.path.read_bytes())
      age = time.time() - float(old.get('heartbeat', 0))
      if age < STALE_S:
        raise self._busy(old, f', alive {age:.0f} s ago (a lock is stale after {STALE_S:.0f} '
                         f's without a heartbeat; delete {self.path} if that run is dead)')
      print(f'[r1jax] taking over the lock of {_describe(old)}, silent for {age:.0f} s',
            flush=True)
    self._beat()
    time.sleep(1.0)  # two runs starting together: the later write wins, the other sees it
    holder = self._holder()
    if holder.get('token') != self.me['token']:
      raise self._busy(holder)
    threading.Thread(target=self._beating, daemon=True, name='r1jax-lock-heartbeat').start()

  def _holder(self) -> dict:
    return _read(self.path.read_bytes()) if self.path.exists() else {}

  def _beat(self) -> None:
    self.path.write_text(json.dumps({**self.me, 'heartbeat': time.time()}))

  def _beating(self) -> None:
    while not self.stop.wait(HEARTBEAT_S):
      try:
        holder = self._holder()
        if holder.get('token') != self.me['token']:
          self.lost = f'{self.path} was taken over by {_describe(holder)}'
          return
        self._beat()
      except Exception as e:  # pylint: disable=broad-except
        print(f'[r1jax] WARNING: lock heartbeat failed ({e}); retrying', flush=True)

  def check(self) -> None:
    """Raises Busy if another run took the lock (call it every step)."""
    if self.lost:
      raise Busy(self.lost + '; stopping so that two runs never write one workdir')

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    self.stop.set()
    if self.fd is not None:
      os.ftruncate(self.fd, 0)  # empty: released, not killed
      os.close(self.fd)  # drops the flock
      self.fd = None
    elif self._holder().get('token') == self.me['token']:
      self.path.unlink()


def _read(data: bytes) -> dict:
  try:
    return json.loads(data or b'{}')
  except ValueError:
    return {'host': '?', 'pid': '?', 'started': '?', 'command': data[:80].decode(errors='replace')}

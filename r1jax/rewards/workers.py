"""Reward functions run in worker processes that are killed on timeout.

A time limit needs a process: sympy holds the GIL while it expands
`9^{9^{9}}`, so a thread that polls a deadline never runs and a timed-out
thread can never be stopped. `WorkerPool` keeps `workers` persistent processes
started through a `forkserver` (a fresh interpreter, never a fork of the JAX
process: its threads and device state do not survive a fork). Jobs go to idle
workers in small chunks over pipes; each result comes back as soon as it is
done, so the parent knows when each job started. A worker still on one job
after `timeout_s` is SIGKILLed and replaced by a fork of the server (a few
ms, the reward modules are preloaded there); its job scores as a timeout and
the rest of its chunk goes back to the queue.

Workers lower their own priority, cap their address space (`memory_mb`), and
die with their parent (PR_SET_PDEATHSIG), so a runaway cannot outlive the
trainer or take the host's memory.
"""
import atexit
import contextlib
import ctypes
import logging
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import resource
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

from r1jax.rewards.rules import Rejected

Job = tuple[Callable[[str, str, dict], float], str, str, dict]  # (fn, prompt, completion, example)
# Outcome of one job: ('ok', score or None) | ('error' | 'rejected', message) | ('timeout', None).
Outcome = tuple[str, Any]

_PRELOAD = ['r1jax.rewards.answers', 'r1jax.rewards.countdown', 'r1jax.rewards.rules',
            'math_verify']
_CONTEXT = None
_IMPORT_S = 120.0  # bound on unpickling a chunk (importing a reward's module)


def _context():
  global _CONTEXT
  if _CONTEXT is None:
    _CONTEXT = mp.get_context('forkserver')
    _CONTEXT.set_forkserver_preload(_PRELOAD)
  return _CONTEXT


@contextlib.contextmanager
def _main_module_hidden():
  """multiprocessing makes each child import the parent's `__main__` (as
  `__mp_main__`): under `python -m r1jax.launch` that is jax, flax and TFDS,
  seconds and hundreds of MB per worker. The workers need nothing from it."""
  main = sys.modules.get('__main__')
  saved = {k: getattr(main, k) for k in ('__spec__', '__file__') if hasattr(main, k)}
  try:
    for k in saved:
      if k == '__spec__':
        main.__spec__ = None
      else:
        delattr(main, k)
    yield
  finally:
    for k, v in saved.items():
      setattr(main, k, v)


def _die_with_parent() -> None:
  try:
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _worker_main(conn, memory_mb: int) -> None:
  _die_with_parent()
  logging.getLogger('math_verify').setLevel(logging.ERROR)  # "timeouts disabled": ours are
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
  try:
    os.nice(5)
  except OSError:
    pass
  if memory_mb:
    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  while True:
    try:
      chunk = conn.recv()  # unpickling imports the reward's module on first use
      conn.send((None, 'started'))
    except (EOFError, OSError):
      return
    for job_id, (fn, prompt, completion, example) in chunk:
      try:
        value = fn(prompt, completion, example)
        out = ('ok', None if value is None else float(value))  # None: no verdict
      except Rejected as e:
        out = ('rejected', str(e)[:200])
      except MemoryError:
        out = ('error', 'MemoryError: over the worker memory limit')
      except Exception as e:  # pylint: disable=broad-except  # a reward bug scores 0
        out = ('error', f'{type(e).__name__}: {str(e)[:500]}')
      try:
        conn.send((job_id, out))
      except (BrokenPipeError, OSError):
        return


class _Worker:

  def __init__(self, memory_mb: int):
    ctx = _context()
    self.conn, child = ctx.Pipe()
    self.process = ctx.Process(target=_worker_main, args=(child, memory_mb), daemon=True,
                               name='r1jax-reward')
    with _main_module_hidden():
      self.process.start()
    child.close()
    self.chunk: list[int] = []  # job ids sent and not yet answered, in order
    self.since = 0.0  # when the job at the head of `chunk` started (or the chunk was sent)
    self.started = False  # the worker has unpickled the chunk (imports done)

  def limit(self, timeout_s: float) -> float:
    # Until the worker has unpickled its chunk (a first import of the
    # reward's module), the clock of the job has not started.
    return timeout_s if self.started else max(timeout_s, _IMPORT_S)

  def kill(self) -> None:
    try:
      self.process.kill()
      self.process.join(timeout=5)
    except (OSError, ValueError, AssertionError):
      pass
    self.conn.close()


class WorkerPool:
  """`run(jobs)` -> one Outcome per job, in order; see the module doc.
  A job's function must be picklable by reference (a module-level function):
  the workers import it."""

  def __init__(self, workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 4096):
    if workers < 1:
      raise ValueError(f'workers must be >= 1, got {workers}')
    self.timeout_s = timeout_s
    self.memory_mb = memory_mb
    self.num_workers = workers
    self.restarts = 0
    self._lock = threading.Lock()  # run() is called from several callback threads
    self._workers: list[_Worker] = []
    self._closed = False
    atexit.register(self.close)
    with self._lock:  # the server imports sympy once (seconds), so start now
      self._workers = [self._spawn() for _ in range(workers)]

  def _spawn(self) -> _Worker:
    return _Worker(self.memory_mb)

  def run(self, jobs: Sequence[Job]) -> list[Outcome]:
    with self._lock:
      if self._closed:
        raise RuntimeError('the reward worker pool is closed')
      while len(self._workers) < self.num_workers:
        self._workers.append(self._spawn())
      return self._run(list(jobs))

  def _run(self, jobs: list[Job]) -> list[Outcome]:
    outcomes: list[Outcome | None] = [None] * len(jobs)
    queue = list(range(len(jobs)))[::-1]  # pop() from the end = job order
    chunk_size = max(1, min(16, len(jobs) // (4 * self.num_workers)))
    left = len(jobs)
    while left:
      now = time.monotonic()
      for w in self._workers:
        if not w.chunk and queue:
          ids = [queue.pop() for _ in range(min(chunk_size, len(queue)))]
          try:
            w.conn.send([(i, jobs[i]) for i in ids])
          except (BrokenPipeError, OSError):
            queue.extend(reversed(ids))
            self._replace(w)
            continue
          w.chunk, w.since, w.started = ids, now, False
      busy = {w.conn: w for w in self._workers if w.chunk}
      if not busy:
        continue
      deadline = min(w.since + w.limit(self.timeout_s) for w in busy.values())
      ready = mpc.wait(list(busy), timeout=max(0.0, deadline - time.monotonic()))
      now = time.monotonic()
      for conn in ready:
        w = busy[conn]
        try:
          job_id, out = conn.recv()
        except (EOFError, OSError):  # the worker died (e.g. killed by the OOM killer)
          outcomes[w.chunk[0]] = ('error', 'the reward worker died')
          left -= 1
          queue.extend(reversed(w.chunk[1:]))
          self._replace(w)
          continue
        if job_id is None:
          w.started, w.since = True, now
          continue
        assert job_id == w.chunk[0], (job_id, w.chunk)
        outcomes[job_id] = out
        left -= 1
        w.chunk.pop(0)
        w.since = now
      for w in list(self._workers):
        if w.chunk and now - w.since > w.limit(self.timeout_s) and not w.conn.poll(0):
          outcomes[w.chunk[0]] = ('timeout', None)
          left -= 1
          queue.extend(reversed(w.chunk[1:]))
          self._replace(w)
    return outcomes  # type: ignore[return-value]

  def _replace(self, w: _Worker) -> None:
    w.kill()
    self.restarts += 1
    self._workers[self._workers.index(w)] = self._spawn()

  def close(self) -> None:
    with self._lock:
      self._closed = True
      for w in self._workers:
        w.kill()
      self._workers = []

"""Running the policy's programs: a sandbox that assumes hostile code.

  run(source, stdin, time_limit_s=, memory_mb=, output_limit_bytes=) -> RunResult

A policy under RL writes whatever earns reward: infinite loops, fork and
memory bombs, writing or deleting files, reading secrets or the trainer's
environment, network access, signalling the trainer, output floods,
`os._exit(0)` with no output. Each run goes to a pre-started fork server
(sandbox_server.py: a clean `python -I -S` started with an empty
environment, never a fork of the JAX process) that forks a warm interpreter
per run, inside the isolation it set up once: namespaces (mount, pid, net,
ipc, uts), an unprivileged uid per server, a seccomp filter, rlimits. The
module doc of sandbox_server.py lists every layer; `Sandbox.level` says
which ones this host gave (probed at start, logged once), and
`require_isolation` refuses to run below a level.

Judge a run by its output, never its exit status (`os._exit(0)` exits 0).
`status`:
  ok              exited 0
  timeout         CPU time (from wait4) reached time_limit_s, or still running at
                  the wall limit (2x + 1 s: sleeping uses no CPU)
  memory          over memory_mb (MemoryError)
  runtime_error   any other non-zero exit or death by a signal
  output_limit    stdout passed output_limit_bytes (killed there)
  sandbox_error   the sandbox itself failed (its server died, a set-up step
                  failed): say nothing about the program
"""
import atexit
import dataclasses
import json
import logging
import os
import queue
import select
import struct
import subprocess
import sys
import threading
import time

STATUSES = ('ok', 'timeout', 'memory', 'runtime_error', 'output_limit', 'sandbox_error')
# Isolation levels, weakest first; a level holds the layers named in it.
LEVELS = ('rlimits', 'seccomp+rlimits', 'namespaces+seccomp+rlimits',
          'namespaces+uid+seccomp+rlimits')
_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sandbox_server.py')
_START_S = 10.0  # for a server to say hello


@dataclasses.dataclass(frozen=True)
class RunResult:
  status: str
  stdout: str
  stderr: str
  exit_code: int | None
  cpu_s: float
  wall_s: float


def rank(level: str) -> int:
  """Position of a level in LEVELS (-1: unknown, weaker than any)."""
  return LEVELS.index(level) if level in LEVELS else -1


class _Server:
  """One fork server: one run at a time."""

  def __init__(self):
    self.proc = subprocess.Popen(
        [sys.executable, '-I', '-S', '-B', _SERVER], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={}, close_fds=True,
        cwd='/', start_new_session=True)
    hello = self._recv(time.monotonic() + _START_S)
    if hello is None:
      self.kill()
      raise RuntimeError('the sandbox server did not start')
    self.level = hello['level']

  def _recv(self, deadline: float):
    fd = self.proc.stdout.fileno()
    data = b''
    need = 8
    while len(data) < need:
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([fd], [], [], left)[0]:
        return None
      chunk = os.read(fd, need - len(data))
      if not chunk:
        return None
      data += chunk
      if need == 8 and len(data) == 8:
        need = 8 + struct.unpack('>Q', data)[0]
    return json.loads(data[8:])

  def request(self, req: dict, deadline: float) -> dict | None:
    data = json.dumps(req).encode()
    try:
      self.proc.stdin.write(struct.pack('>Q', len(data)) + data)
      self.proc.stdin.flush()
    except (BrokenPipeError, OSError, ValueError):  # ValueError: a closed pipe
      return None
    return self._recv(deadline)

  def kill(self) -> None:
    try:
      self.proc.kill()
      self.proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
      pass
    for f in (self.proc.stdin, self.proc.stdout):
      try:
        f.close()
      except OSError:
        pass


class Sandbox:
  """`slots` fork servers; run() is thread-safe and takes a free one. A
  server that dies, stops answering or fails on its own side is replaced
  (that run: sandbox_error), and a replacement must reach the same
  `require_isolation`."""

  def __init__(self, slots: int = 1, require_isolation: str = ''):
    if slots < 1:
      raise ValueError(f'slots must be >= 1, got {slots}')
    if require_isolation and require_isolation not in LEVELS:
      raise ValueError(f'require_isolation: one of {LEVELS}, got {require_isolation!r}')
    self.require_isolation = require_isolation
    self._free: queue.Queue = queue.Queue()
    self._lock = threading.Lock()
    self._servers: list[_Server] = []
    for _ in range(slots):
      s = _Server()
      self._servers.append(s)
      self._free.put(s)
    self.level = min((s.level for s in self._servers), key=rank)
    if require_isolation and rank(self.level) < rank(require_isolation):
      self.close()
      raise RuntimeError(f'sandbox isolation on this host is {self.level!r}, below the '
                         f'required {require_isolation!r} (sandbox.require_isolation)')
    atexit.register(self.close)

  def _replace(self, old: _Server | None) -> _Server | None:
    with self._lock:
      if old is not None:
        old.kill()
        if old in self._servers:
          self._servers.remove(old)
      try:
        new = _Server()
      except (OSError, RuntimeError):
        return None
      if self.require_isolation and rank(new.level) < rank(self.require_isolation):
        new.kill()
        return None
      self._servers.append(new)
      return new

  def run(self, source: str, stdin: str = '', *, time_limit_s: float = 2.0,
          memory_mb: int = 512, output_limit_bytes: int = 1 << 20) -> RunResult:
    wall = 2 * time_limit_s + 1.0
    req = dict(source=source, stdin=stdin, time_limit_s=float(time_limit_s),
               wall_limit_s=wall, memory_mb=int(memory_mb),
               output_limit_bytes=int(output_limit_bytes))
    server = self._free.get()
    try:
      if server is None or server.proc.poll() is not None:
        server = self._replace(server)
        if server is None:
          return RunResult('sandbox_error', '', 'no sandbox server could start', None, 0.0, 0.0)
      reply = server.request(req, time.monotonic() + wall + 5.0)
      if reply is None or server.proc.poll() is not None:  # dead, stuck or failed itself
        server.kill()
        server = None  # replaced by the next run on this slot
        if reply is None:
          return RunResult('sandbox_error', '', 'the sandbox server died', None, 0.0, 0.0)
      return RunResult(**reply)
    finally:
      self._free.put(server)

  def close(self) -> None:
    with self._lock:
      for s in self._servers:
        s.kill()
      self._servers = []


_DEFAULT: Sandbox | None = None
_DEFAULT_LOCK = threading.Lock()


def default(require_isolation: str = '') -> Sandbox:
  """This process's shared one-slot sandbox, started on first use (a reward
  worker process gets its own), its level logged once."""
  global _DEFAULT
  with _DEFAULT_LOCK:
    if _DEFAULT is None:
      _DEFAULT = Sandbox(1, require_isolation)
      logging.getLogger('r1jax').info('sandbox isolation: %s', _DEFAULT.level)
    elif require_isolation and rank(_DEFAULT.level) < rank(require_isolation):
      raise RuntimeError(f'sandbox isolation on this host is {_DEFAULT.level!r}, below the '
                         f'required {require_isolation!r}')
    return _DEFAULT


def run(source: str, stdin: str = '', *, time_limit_s: float = 2.0, memory_mb: int = 512,
        output_limit_bytes: int = 1 << 20) -> RunResult:
  """One run in this process's default sandbox; see the module doc."""
  return default().run(source, stdin, time_limit_s=time_limit_s, memory_mb=memory_mb,
                       output_limit_bytes=output_limit_bytes)

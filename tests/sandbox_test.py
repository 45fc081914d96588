"""The sandbox against hostile programs (r1jax/rewards/sandbox.py).

Every attack bounds itself (its forks, memory and time) so that a sandbox
that fails cannot hurt the machine; each test checks the observed effect
(none), the status, and that no process of the run survives it."""
import os
import signal
import socket
import time

import pytest

from r1jax.rewards import sandbox as sb


def _server_processes() -> set[int]:
  """Host pids of every process running the fork server's code (the servers
  and anything a run forked from them)."""
  out = set()
  for pid in os.listdir('/proc'):
    if not pid.isdigit():
      continue
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if b'sandbox_server.py' in f.read():
          out.add(int(pid))
    except OSError:
      pass
  return out


@pytest.fixture(scope='module')
def box():
  s = sb.Sandbox(1)
  print(f'\nsandbox isolation on this machine: {s.level}')
  yield s
  s.close()


@pytest.fixture
def clean(box):
  """Asserts that a run leaves no process behind."""
  before = _server_processes()
  yield
  # Only new processes count: one that existed before (an earlier run's,
  # still exiting when this one started) may end meanwhile.
  deadline = time.time() + 3
  while _server_processes() - before and time.time() < deadline:
    time.sleep(0.05)
  assert not _server_processes() - before, 'a process of the run outlived it'


def test_runs_a_program_and_reports_cpu_time(box):
  r = box.run('import sys\nprint(sys.stdin.read().strip()[::-1])', 'olleh\n')
  assert (r.status, r.stdout, r.exit_code) == ('ok', 'hello\n', 0)
  assert 0 < r.cpu_s < 1 and r.wall_s < 1
  r = box.run('raise ValueError("no")')
  assert r.status == 'runtime_error' and 'ValueError: no' in r.stderr and r.exit_code == 1
  r = box.run('import sys; sys.exit(3)')
  assert (r.status, r.exit_code) == ('runtime_error', 3)
  r = box.run('def f(:\n')
  assert r.status == 'runtime_error' and 'SyntaxError' in r.stderr


def test_isolation_level_is_known_and_can_be_required(box):
  assert box.level in sb.LEVELS
  with pytest.raises(ValueError, match='require_isolation'):
    sb.Sandbox(1, require_isolation='bogus')
  if box.level != sb.LEVELS[-1]:
    with pytest.raises(RuntimeError, match='below the required'):
      sb.Sandbox(1, require_isolation=sb.LEVELS[-1])


def test_infinite_loop_times_out_on_cpu_time(box, clean):
  r = box.run('import time\nt = time.time()\nwhile time.time() - t < 30: pass', time_limit_s=1)
  assert r.status == 'timeout'
  assert 0.9 <= r.cpu_s < 2.5 and r.wall_s < 3.5


def test_sleeping_is_killed_at_the_wall_limit(box, clean):
  r = box.run('import time\ntime.sleep(20)', time_limit_s=0.5)
  assert r.status == 'timeout' and r.cpu_s < 0.5 and 1.9 < r.wall_s < 3.0


def test_ignored_signals_and_cancelled_timers_do_not_help(box, clean):
  src = ('import signal, time\n'
         'for s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGALRM, signal.SIGINT, '
         'signal.SIGHUP):\n'
         '  signal.signal(s, signal.SIG_IGN)\n'
         'signal.alarm(0)\nsignal.setitimer(signal.ITIMER_REAL, 0)\n'
         't = time.time()\nwhile time.time() - t < 30: pass')
  r = box.run(src, time_limit_s=1)
  assert r.status == 'timeout' and r.wall_s < 3.5


def test_bounded_fork_bomb_is_contained(box, clean):
  src = ('import os, time\nn = 0\n'
         'for i in range(300):\n'
         '  try:\n    pid = os.fork()\n  except OSError:\n    break\n'
         '  if pid == 0:\n    time.sleep(20)\n    os._exit(0)\n'
         '  n += 1\n'
         'print(n)')
  r = box.run(src, time_limit_s=2)
  assert r.status == 'ok'
  if 'uid' in box.level:  # RLIMIT_NPROC holds for an unprivileged uid
    assert int(r.stdout) < 64


def test_memory_bomb_is_refused(box, clean):
  r = box.run('x = bytearray(3 << 30)\nprint(len(x))', memory_mb=256)
  assert r.status == 'memory' and r.stdout == ''


def test_output_flood_is_cut_at_the_cap(box, clean):
  src = 'import sys\nchunk = "x" * (1 << 20)\nfor _ in range(100):\n  sys.stdout.write(chunk)'
  r = box.run(src, output_limit_bytes=1 << 20, time_limit_s=5)
  assert r.status == 'output_limit' and len(r.stdout) == 1 << 20 and r.wall_s < 5


def test_deep_recursion_crashes_only_the_run(box, clean):
  # Python frames live on the heap (3.11): the memory or time limit ends it.
  src = 'import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n  return f(n + 1)\nf(0)'
  r = box.run(src, time_limit_s=2, memory_mb=256)
  assert r.status in ('memory', 'timeout'), r
  # C recursion (repr of a deep list) overflows the C stack: SIGSEGV.
  src = ('import sys\nsys.setrecursionlimit(10**7)\nl = []\n'
         'for _ in range(10**6):\n  l = [l]\nprint(len(repr(l)))')
  r = box.run(src, time_limit_s=5)
  assert r.status == 'runtime_error' and r.exit_code == -signal.SIGSEGV, r
  assert box.run('print(2)').stdout == '2\n'  # the server is fine


def test_files_outside_the_run_cannot_be_touched(box, clean, tmp_path_factory):
  # A world-writable directory and file outside /tmp: only a read-only
  # mount stops these (file permissions would allow them).
  here = os.path.join(os.path.dirname(__file__), f'.sandbox-canary-{os.getpid()}')
  os.makedirs(here)
  try:
    os.chmod(here, 0o777)
    canary = os.path.join(here, 'canary')
    with open(canary, 'w') as f:
      f.write('intact')
    os.chmod(canary, 0o666)
    src = (f'import os\nd = {here!r}\n'
           'for act in (lambda: open(d + "/canary", "w").write("owned"), '
           'lambda: os.remove(d + "/canary"), lambda: open(d + "/new", "w").write("x"), '
           'lambda: os.rename(d + "/canary", d + "/moved"), lambda: os.chmod(d, 0)):\n'
           '  try:\n    act()\n    print("did")\n  except OSError as e:\n'
           '    print(type(e).__name__)\n'
           'open("mine.txt", "w").write("ok")\nprint(open("mine.txt").read())')
    r = box.run(src)
    assert 'did' not in r.stdout and r.stdout.endswith('ok\n'), r
    assert sorted(os.listdir(here)) == ['canary']
    with open(canary) as f:
      assert f.read() == 'intact'
  finally:
    for name in os.listdir(here):
      os.remove(os.path.join(here, name))
    os.rmdir(here)
  # Nothing the run wrote in its own directory survives it.
  assert box.run('import os\nprint(os.listdir("."))').stdout.strip() == "['.stdin']"


def test_secrets_and_the_trainers_environment_are_out_of_reach(box, clean, monkeypatch):
  monkeypatch.setenv('R1JAX_TEST_SECRET', 'env-secret-4711')
  here = os.path.join(os.path.dirname(__file__), f'.sandbox-secret-{os.getpid()}')
  with open(here, 'w') as f:
    f.write('file-secret-4711')
  os.chmod(here, 0o600)
  try:
    src = (f'import os\nout = [repr(dict(os.environ))]\n'
           f'for p in [{here!r}, "/proc/%d/environ" % os.getppid(), "/proc/1/environ", '
           f'"/proc/{os.getpid()}/environ"] + ["/proc/%s/environ" % p for p in '
           'os.listdir("/proc") if p.isdigit()][:200]:\n'
           '  try:\n    out.append(open(p, "rb").read().decode("latin-1"))\n'
           '  except OSError as e:\n    out.append(type(e).__name__)\n'
           'print("\\n".join(out))')
    r = box.run(src)
    assert r.status == 'ok'
    assert '4711' not in r.stdout, r.stdout
  finally:
    os.remove(here)


def test_no_network_not_even_loopback(box, clean):
  listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  listener.bind(('127.0.0.1', 0))
  listener.listen(1)
  port = listener.getsockname()[1]
  try:
    src = (f'import socket\n'
           f'for fam, addr in ((socket.AF_INET, ("127.0.0.1", {port})), '
           f'(socket.AF_INET6, ("::1", {port}))):\n'
           '  try:\n    s = socket.socket(fam, socket.SOCK_STREAM)\n    s.settimeout(1)\n'
           '    s.connect(addr)\n    s.sendall(b"hi")\n    print("connected")\n'
           '  except OSError as e:\n    print(type(e).__name__, e.errno)\n'
           'a, b = socket.socketpair()\na.sendall(b"unix ok")\nprint(b.recv(7).decode())')
    r = box.run(src, time_limit_s=3)
    assert 'connected' not in r.stdout and r.stdout.endswith('unix ok\n'), r
    if 'seccomp' in box.level:  # socket() itself is refused, whatever the family
      assert r.stdout.count('PermissionError 1') == 2, r.stdout
    listener.settimeout(0.3)
    with pytest.raises(socket.timeout):
      listener.accept()
  finally:
    listener.close()


def test_the_trainer_cannot_be_signalled(box, clean):
  got = []
  old = signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
  try:
    me = os.getpid()
    src = (f'import os, signal\n'
           f'for act in (lambda: os.kill({me}, signal.SIGUSR1), '
           f'lambda: os.killpg({os.getpgid(me)}, signal.SIGUSR1), '
           'lambda: os.kill(os.getppid(), signal.SIGKILL)):\n'
           '  try:\n    act()\n    print("sent")\n  except OSError as e:\n'
           '    print(type(e).__name__)')
    servers = _server_processes()
    r = box.run(src)
    time.sleep(0.2)
    assert got == [] and r.status == 'ok'
    assert box.run('print(1)').status == 'ok' and _server_processes() == servers
  finally:
    signal.signal(signal.SIGUSR1, old)


def test_setsid_double_fork_does_not_outlive_the_run(box, clean):
  src = ('import os, time\n'
         'if os.fork() == 0:\n  os.setsid()\n  if os.fork() == 0:\n'
         '    time.sleep(20)\n  os._exit(0)\n'
         'time.sleep(0.2)\nprint("parent done")')
  r = box.run(src)
  assert r.status == 'ok' and r.stdout == 'parent done\n'
  # (the `clean` fixture checks that the sleeping grandchild is gone)


def test_exit_zero_without_output_is_just_empty(box, clean):
  r = box.run('import os\nos._exit(0)')
  assert (r.status, r.stdout, r.exit_code) == ('ok', '', 0)


def test_forbidden_syscalls_fail(box, clean):
  if 'seccomp' not in box.level:
    pytest.skip(f'no seccomp on this host ({box.level})')
  src = ('import ctypes, os, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n'
         'print(libc.unshare(0x10000000), ctypes.get_errno())\n'  # CLONE_NEWUSER
         'print(libc.ptrace(0, 0, 0, 0), ctypes.get_errno())\n'
         'print(libc.syscall(435, 0, 0), ctypes.get_errno())\n'  # clone3: ENOSYS
         'print(libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0), ctypes.get_errno())\n'
         'try:\n  socket.socket(socket.AF_UNIX)\nexcept OSError as e:\n  print(-1, e.errno)')
  r = box.run(src)
  assert r.stdout.split() == ['-1', '1', '-1', '1', '-1', '38', '-1', '1', '-1', '1'], r


def test_a_dead_server_is_replaced():
  import threading  # pylint: disable=g-import-not-at-top
  s = sb.Sandbox(1)
  try:
    first = s._servers[0]  # pylint: disable=protected-access
    first.proc.kill()  # dead between runs: replaced before the next one
    first.proc.wait(timeout=10)
    assert s.run('print(1)').stdout == '1\n'
    second = s._servers[0]  # pylint: disable=protected-access
    assert second is not first
    # Dead during a run: that run has no verdict, the next one a new server.
    threading.Timer(0.5, second.proc.kill).start()
    assert s.run('import time\ntime.sleep(3)', time_limit_s=2).status == 'sandbox_error'
    assert s.run('print(2)').stdout == '2\n'
  finally:
    s.close()


def test_each_run_starts_with_an_empty_tmp_and_sees_no_host_files(box, clean):
  # A run's leftovers (a directory named like the next run's, a full disk)
  # cannot reach the next run: /tmp is a new tmpfs each time.
  src = ('import os\nos.mkdir("/tmp/left")\nopen("/tmp/left/x", "w").write("x" * 1000)\n'
         'print(sorted(os.listdir("/tmp")))')
  assert "'left'" in box.run(src).stdout
  r = box.run('import os\nprint(sorted(os.listdir("/tmp")), os.getcwd())')
  names = eval(r.stdout.split(']')[0] + ']')  # noqa: S307 (a list of names)
  assert len(names) == 1 and names[0].startswith('run-'), r
  # The host's tree beyond the system's libraries and Python does not exist.
  here = os.path.dirname(os.path.abspath(__file__))
  r = box.run(f'import os\nprint(os.path.exists({here!r}), os.path.exists("/etc"), '
              'os.path.exists("/run"), sorted(os.listdir("/dev")))')
  if 'namespaces' in box.level:
    assert r.stdout.startswith('False False False'), r
    assert box.run('import os\nopen(os.devnull, "w").write("x")\nprint("ok")').stdout == 'ok\n'

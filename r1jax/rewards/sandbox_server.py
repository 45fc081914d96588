"""The sandbox's fork server: `python -I -S sandbox_server.py` (sandbox.py
starts one per slot). It imports nothing outside the standard library, is
started with a clean environment, and holds no secrets and no expected
outputs: a run sees its own source and stdin, nothing else.

Isolation, set up once at start (the strongest the host allows; the level
is the first line the server writes):

  namespaces  as root: new mount, pid, net, ipc and uts namespaces; without
              root, the same inside a new user namespace. No network at all
              (a new net namespace has a loopback that is down). A minimal
              root (pivot_root into a tmpfs): read-only binds of /usr, /lib*,
              /bin, /sbin and the server's Python, /dev/{null,zero,full,
              random,urandom}, a fresh /proc that shows only the namespace,
              and a new empty tmpfs on /tmp for every run; the host's home,
              data and workdirs, /etc and /run do not exist there. The
              server is pid 1: after each run `kill(-1, SIGKILL)` ends
              every process the run left (setsid and double forks included)
              and the server reaps them.
  uid         as root, runs get an unprivileged uid of their own (1,000,000
              + the server's host pid), so RLIMIT_NPROC applies, 0600 files
              and other users' processes are out of reach.
  seccomp     no_new_privs and a BPF filter (written here: the server may
              import nothing outside the stdlib): ptrace, mount, unshare,
              setns, bpf, perf_event_open, keyctl, process_vm_*, io_uring,
              module and kexec calls, namespace flags of clone, clone3 and
              socket() of any family fail (socketpair works).
  rlimits     CPU soft = the limit, hard = soft + 1 s (SIGKILL, not an
              ignorable SIGXCPU), AS = memory, FSIZE = the output cap, NOFILE
              64, NPROC 64, CORE 0.

Each run forks from the server (a warm interpreter: a few ms), drops to its
uid and the limits, and executes the program in that process with
`__name__ == '__main__'`. The server kills it at the wall limit or when its
output passes the cap, judges time by the CPU time wait4 reports, and
answers one JSON line per request.

Protocol (fd 0 in, fd 1 out): a request is 8 bytes of big-endian length +
JSON {source, stdin, time_limit_s, wall_limit_s, memory_mb,
output_limit_bytes}; the reply is the same framing around JSON {status,
stdout, stderr, exit_code, cpu_s, wall_s}.
"""
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
import traceback

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_NS_FLAGS = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
             | CLONE_NEWPID | CLONE_NEWNET)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 22, 38
STDERR_CAP = 64 << 10

# Syscalls a program never needs (numbers per architecture).
_DENY = {
    0xC000003E: dict(  # AUDIT_ARCH_X86_64
        ptrace=101, mount=165, umount2=166, unshare=272, setns=308, bpf=321,
        perf_event_open=298, keyctl=250, add_key=248, request_key=249, process_vm_readv=310,
        process_vm_writev=311, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
        kexec_load=246, kexec_file_load=320, init_module=175, finit_module=313,
        delete_module=176, pivot_root=155, chroot=161, swapon=167, swapoff=168, reboot=169,
        personality=135, userfaultfd=323, open_by_handle_at=304, open_tree=428,
        move_mount=429, fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442,
        acct=163, syslog=103, iopl=172, ioperm=173, sethostname=170, setdomainname=171,
        socket=41, clone=56, clone3=435),
    0xC00000B7: dict(  # AUDIT_ARCH_AARCH64
        ptrace=117, mount=40, umount2=39, unshare=97, setns=268, bpf=280, perf_event_open=241,
        keyctl=219, add_key=217, request_key=218, process_vm_readv=270, process_vm_writev=271,
        io_uring_setup=425, io_uring_enter=426, io_uring_register=427, kexec_load=104,
        kexec_file_load=294, init_module=105, finit_module=273, delete_module=106,
        pivot_root=41, chroot=51, swapon=224, swapoff=225, reboot=142, personality=92,
        userfaultfd=282, open_by_handle_at=265, open_tree=428, move_mount=429, fsopen=430,
        fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, acct=89, syslog=116,
        sethostname=161, setdomainname=162, socket=198, clone=220, clone3=435),
}
_MACHINE_ARCH = {'x86_64': 0xC000003E, 'aarch64': 0xC00000B7}


def _check(ret: int, what: str) -> None:
  if ret != 0:
    e = ctypes.get_errno()
    raise OSError(e, f'{what}: {os.strerror(e)}')


def _seccomp_program(arch: int) -> bytes:
  """A classic-BPF seccomp filter: the wrong architecture kills; denied
  calls fail with EPERM; clone3 with ENOSYS (its flags are in memory a
  filter cannot read, and libc falls back to clone); clone with namespace
  flags with EPERM; socket() of every family with EPERM (a UNIX socket
  could reach the host's daemons; socketpair stays)."""
  nr = dict(_DENY[arch])
  socket, clone, clone3 = nr.pop('socket'), nr.pop('clone'), nr.pop('clone3')
  ALLOW, KILL = 0x7FFF0000, 0x80000000
  errno = lambda e: 0x00050000 | e  # noqa: E731  SECCOMP_RET_ERRNO
  LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
  prog = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, KILL), (LD, 0, 0, 0)]
  if arch == 0xC000003E:  # the x32 ABI's numbers
    prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, errno(38))]
  for n in sorted(set(nr.values())):
    prog += [(JEQ, 0, 1, n), (RET, 0, 0, errno(1))]
  prog += [(JEQ, 0, 1, clone3), (RET, 0, 0, errno(38)),
           (JEQ, 0, 1, socket), (RET, 0, 0, errno(1)),
           (JEQ, 0, 3, clone), (LD, 0, 0, 16), (JSET, 0, 1, _NS_FLAGS), (RET, 0, 0, errno(1)),
           (RET, 0, 0, ALLOW)]
  return b''.join(struct.pack('HBBI', *ins) for ins in prog)


def _install_seccomp(program: bytes) -> None:
  _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 'no_new_privs')
  buf = ctypes.create_string_buffer(program)

  class Fprog(ctypes.Structure):
    _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.c_void_p)]

  fprog = Fprog(len(program) // 8, ctypes.addressof(buf))
  _check(_libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0), 'seccomp')


def _mount(src, target, fstype, flags, data=None) -> None:
  enc = lambda s: None if s is None else s.encode()  # noqa: E731
  _check(_libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
         f'mount {target}')


def _write(path: str, text: str) -> None:
  with open(path, 'w') as f:
    f.write(text)


_SYSTEM = ('/usr', '/lib', '/lib64', '/lib32', '/bin', '/sbin')  # programs' libraries
_DEVICES = ('null', 'zero', 'full', 'random', 'urandom')
NEW_ROOT = '/tmp/.r1jax-root'  # inside the namespace's own /tmp (a tmpfs)
_PIVOT_ROOT = {'x86_64': 155, 'aarch64': 41}


def _bind_ro(src: str, dst: str) -> None:
  if os.path.isdir(src):
    os.makedirs(dst, 0o755, exist_ok=True)
  else:
    os.makedirs(os.path.dirname(dst), 0o755, exist_ok=True)
    open(dst, 'a').close()
  _mount(src, dst, None, MS_BIND | MS_REC)
  device = dst.startswith(NEW_ROOT + '/dev/')
  try:
    _mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
           | (0 if device else MS_NODEV))
  except OSError:  # a user namespace may not change a locked flag: keep the mount's own
    _mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _minimal_root(keep: list[str]) -> None:
  """pivot_root into a tmpfs holding only read-only binds of the system's
  libraries, the paths in `keep` (the Python the server runs on), a few
  device nodes, a fresh /proc and /tmp: the host's home, data, workdirs,
  /etc and /run (its sockets) do not exist for a run."""
  _mount('tmpfs', '/tmp', 'tmpfs', MS_NOSUID | MS_NODEV, 'size=1m,mode=755')
  os.mkdir(NEW_ROOT, 0o755)
  _mount('tmpfs', NEW_ROOT, 'tmpfs', MS_NOSUID | MS_NODEV, 'size=1m,mode=755')
  system = [p for p in _SYSTEM if os.path.isdir(p) and not os.path.islink(p)]
  for path in _SYSTEM:
    if os.path.islink(path):  # merged /usr: /bin -> usr/bin
      os.symlink(os.readlink(path), NEW_ROOT + path)
    elif path in system:
      _bind_ro(path, NEW_ROOT + path)
  paths = sorted({os.path.realpath(p) for p in keep if os.path.exists(p)})
  for i, p in enumerate(paths):
    inside = any(p.startswith(q.rstrip('/') + '/') for q in paths[:i])
    covered = any(p == q or p.startswith(q + '/') for q in system)
    if not inside and not covered:
      _bind_ro(p, NEW_ROOT + p)
  os.makedirs(NEW_ROOT + '/dev', 0o755)
  for d in _DEVICES:
    if os.path.exists('/dev/' + d):
      _bind_ro('/dev/' + d, f'{NEW_ROOT}/dev/{d}')
  for d in ('proc', 'tmp', '.old'):
    os.makedirs(f'{NEW_ROOT}/{d}', 0o755)
  _mount('proc', NEW_ROOT + '/proc', 'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC)
  nr = _PIVOT_ROOT.get(os.uname().machine)
  if nr is None:
    raise OSError(f'pivot_root: no syscall number for {os.uname().machine}')
  _check(_libc.syscall(nr, NEW_ROOT.encode(), (NEW_ROOT + '/.old').encode()), 'pivot_root')
  os.chdir('/')
  _check(_libc.umount2(b'/.old', 2), 'umount /.old')  # MNT_DETACH
  os.rmdir('/.old')
  _mount(None, '/', None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def fresh_tmp() -> None:
  """A new empty tmpfs on /tmp (the old one detached: whatever a run left
  there, however many files, is gone for the next run at no cost)."""
  _libc.umount2(b'/tmp', 2)
  _mount('tmpfs', '/tmp', 'tmpfs', MS_NOSUID | MS_NODEV, 'size=256m,nr_inodes=16384,mode=1777')


def _enter_namespaces() -> bool:
  """New mount/pid/net/ipc/uts namespaces (inside a new user namespace
  when not root); then fork: the child is pid 1 of the new pid namespace and
  goes on as the server, this process waits for it. False if the host
  allows none."""
  root = os.geteuid() == 0
  uid, gid = os.geteuid(), os.getegid()
  flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
  if _libc.unshare(flags if root else flags | CLONE_NEWUSER) != 0:
    return False
  if not root:
    _write('/proc/self/setgroups', 'deny')
    _write('/proc/self/uid_map', f'0 {uid} 1')
    _write('/proc/self/gid_map', f'0 {gid} 1')
  pid = os.fork()
  if pid:  # the outside half: lives as long as the server
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
      try:
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
      except InterruptedError:
        continue
  _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
  _mount(None, '/', None, MS_REC | MS_PRIVATE)
  _minimal_root([p for p in sys.path if p])
  fresh_tmp()
  return True


class Server:

  def __init__(self):
    # The protocol's pipes move off fds 0/1 so a run's stdio can take them.
    self.rfd, self.wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
      os.dup2(devnull, fd)
    os.close(devnull)
    host_pid = os.getpid()
    self.root = os.geteuid() == 0
    self.namespaces = _enter_namespaces()
    self.run_uid = 1_000_000 + host_pid if self.root else None
    arch = _MACHINE_ARCH.get(os.uname().machine)
    self.seccomp = _seccomp_program(arch) if arch else None
    # Probes in a child, so that a layer this host refuses is known now, not
    # per run: the uid switch (a container's root may not own other uids),
    # then the filter.
    pid = os.fork()
    if pid == 0:
      try:
        if self.run_uid is not None:
          os.setgroups([])
          os.setresgid(self.run_uid, self.run_uid, self.run_uid)
          os.setresuid(self.run_uid, self.run_uid, self.run_uid)
      except OSError:
        os._exit(2)
      try:
        if self.seccomp:
          _install_seccomp(self.seccomp)
      except OSError:
        os._exit(1)
      os._exit(0)
    probe = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if probe == 2:
      self.run_uid = None
    elif probe != 0:
      self.seccomp = None
    parts = (['namespaces'] if self.namespaces else []) + (
        ['uid'] if self.run_uid else []) + (['seccomp'] if self.seccomp else []) + ['rlimits']
    self.level = '+'.join(parts)
    self.count = 0

  # ------------------------------------------------------------ protocol

  def _read_exact(self, n: int) -> bytes:
    out = b''
    while len(out) < n:
      chunk = os.read(self.rfd, n - len(out))
      if not chunk:
        raise EOFError
      out += chunk
    return out

  def send(self, obj) -> None:
    data = json.dumps(obj).encode()
    data = struct.pack('>Q', len(data)) + data
    while data:
      data = data[os.write(self.wfd, data):]

  def serve(self) -> None:
    self.send({'level': self.level, 'pid': os.getpid()})
    while True:
      try:
        (n,) = struct.unpack('>Q', self._read_exact(8))
        req = json.loads(self._read_exact(n))
      except EOFError:
        return
      try:
        reply = self.run(req)
      except Exception:  # pylint: disable=broad-except  # the server's own failure: it
        # answers, then exits, and the sandbox starts a fresh one
        self.send({'status': 'sandbox_error', 'stdout': '',
                   'stderr': traceback.format_exc()[-2000:], 'exit_code': None, 'cpu_s': 0.0,
                   'wall_s': 0.0})
        return
      self.send(reply)

  # ----------------------------------------------------------------- run

  def run(self, req: dict) -> dict:
    self.count += 1
    if self.namespaces:
      fresh_tmp()  # nothing of an earlier run is left, nor can it fill the space
    workdir = os.path.join('/tmp' if self.namespaces else os.environ.get('TMPDIR', '/tmp'),
                           'run-' + os.urandom(8).hex())
    os.mkdir(workdir, 0o700)
    try:
      if self.run_uid is not None:
        os.chown(workdir, self.run_uid, self.run_uid)
      stdin_path = os.path.join(workdir, '.stdin')
      with open(stdin_path, 'w') as f:
        f.write(req.get('stdin', ''))
      return self._run(req, workdir, stdin_path)
    finally:
      if not self.namespaces:  # else the next run's fresh /tmp drops it at no cost
        shutil.rmtree(workdir, ignore_errors=True)

  def _child(self, req: dict, workdir: str, stdin_path: str, out_w: int, err_w: int,
             status_w: int) -> None:
    """In the forked run process: never returns. A set-up failure is
    written to fd 3, which is closed before the program starts (so a
    program cannot fake one)."""
    code = 1
    try:
      os.setsid()
      fd = os.open(stdin_path, os.O_RDONLY)
      os.dup2(fd, 0)
      os.dup2(out_w, 1)
      os.dup2(err_w, 2)
      os.dup2(status_w, 3)
      os.closerange(4, 1 << 16)
      os.chdir(workdir)
      for s in range(1, signal.NSIG):
        try:
          signal.signal(s, signal.SIG_DFL)
        except (OSError, ValueError):
          pass
      cpu = max(1, int(-(-req['time_limit_s'] // 1)))
      mem = int(req['memory_mb']) << 20
      limits = [(resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                (resource.RLIMIT_FSIZE, (req['output_limit_bytes'],) * 2),
                (resource.RLIMIT_NOFILE, (64, 64)), (resource.RLIMIT_CORE, (0, 0)),
                (resource.RLIMIT_NPROC, (64, 64))]
      for which, value in limits:
        resource.setrlimit(which, value)
      if self.run_uid is not None:
        os.setgroups([])
        os.setresgid(self.run_uid, self.run_uid, self.run_uid)
        os.setresuid(self.run_uid, self.run_uid, self.run_uid)
      if self.seccomp:
        _install_seccomp(self.seccomp)
      os.environ.clear()
      os.environ.update(PATH='/usr/bin:/bin', HOME=workdir, LANG='C.UTF-8', PYTHONHASHSEED='0')
      sys.argv = ['solution.py']
      source, req = req['source'], None
      os.close(3)
      try:
        program = compile(source, 'solution.py', 'exec')
        exec(program, {'__name__': '__main__', '__builtins__': __builtins__})  # pylint: disable=exec-used
        code = 0
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
          print(e.code, file=sys.stderr)
      except BaseException:  # pylint: disable=broad-except
        traceback.print_exc()
        code = 1
      for stream in (sys.stdout, sys.stderr):
        try:
          stream.flush()
        except BaseException:  # pylint: disable=broad-except
          pass
    except BaseException:  # pylint: disable=broad-except  # set-up failed: say why
      try:
        os.write(3, traceback.format_exc().encode()[-2000:])
      except OSError:
        pass
      code = 125
    os._exit(code & 0xFF)

  def _kill_all(self, pid: int) -> None:
    """Every process the run left: all of the pid namespace but the server;
    without one, the run's process group."""
    try:
      if self.namespaces:
        os.kill(-1, signal.SIGKILL)
      else:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass

  def _reap_all(self, deadline: float) -> None:
    while time.monotonic() < deadline:
      try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
      except ChildProcessError:
        return
      if pid == 0:
        time.sleep(0.001)

  def _run(self, req: dict, workdir: str, stdin_path: str) -> dict:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    status_r, status_w = os.pipe()
    t0 = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pid = os.fork()
    if pid == 0:
      for fd in (out_r, err_r, status_r):
        os.close(fd)
      self._child(req, workdir, stdin_path, out_w, err_w, status_w)
    for fd in (out_w, err_w, status_w):
      os.close(fd)
    cap = int(req['output_limit_bytes'])
    wall_limit = float(req['wall_limit_s'])
    pidfd = os.pidfd_open(pid)
    bufs = {out_r: bytearray(), err_r: bytearray()}
    open_fds = {out_r, err_r}
    exited = killed = over = False
    while True:
      left = t0 + wall_limit - time.monotonic()
      if left <= 0:
        killed = True
        break
      fds = list(open_fds) + ([] if exited else [pidfd])
      if not fds:
        break
      ready, _, _ = select.select(fds, [], [], left)
      for fd in ready:
        if fd == pidfd:
          exited = True
          self._kill_all(pid)  # what it left holds the pipes open otherwise
          continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
          open_fds.discard(fd)
          continue
        room = (cap if fd == out_r else STDERR_CAP) - len(bufs[fd])
        bufs[fd] += chunk[:max(room, 0)]
        if fd == out_r and len(chunk) > room:
          over = True
      if over:
        break
    wall = time.monotonic() - t0
    self._kill_all(pid)
    _, status, usage = os.wait4(pid, 0)
    self._reap_all(time.monotonic() + 2.0)
    setup = b''
    while chunk := os.read(status_r, 1 << 16):
      setup += chunk
    for fd in (out_r, err_r, pidfd, status_r):
      os.close(fd)
    # Every process of the run, reaped by now (the pid namespace's orphans
    # come to the server): wait4 alone counts only the ones the child reaped.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = max(usage.ru_utime + usage.ru_stime,
              after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -sig
    stderr = bufs[err_r].decode('utf-8', 'replace')
    if setup:
      result, stderr = 'sandbox_error', setup.decode('utf-8', 'replace')
    elif over:
      result = 'output_limit'
    elif killed or cpu >= req['time_limit_s'] or sig == signal.SIGXCPU:
      result = 'timeout'
    elif 'MemoryError' in stderr[-1000:] or 'Cannot allocate memory' in stderr[-1000:]:
      result = 'memory'
    elif exit_code != 0:
      result = 'runtime_error'
    else:
      result = 'ok'
    return {'status': result, 'stdout': bufs[out_r].decode('utf-8', 'replace'), 'stderr': stderr,
            'exit_code': exit_code, 'cpu_s': cpu, 'wall_s': wall}


if __name__ == '__main__':
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's
  Server().serve()

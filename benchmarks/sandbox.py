"""Throughput and latency of the code sandbox (issue 16): trivial programs
(`print(sum(map(int, input().split())))`) through `sandbox.Sandbox` with one
slot per core and as many client threads, against the naive executor in the
same run (a fresh `python -I -S` per run via subprocess, with the same
rlimits and no other isolation).

  python benchmarks/sandbox.py [--seconds 5] [--slots 0]

Prints runs/s and p50/p99 latency of each, and the ratio.
"""
import argparse
import concurrent.futures as cf
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np

from r1jax.rewards import sandbox as sb

PROGRAM = 'print(sum(map(int, input().split())))'


def _limits():
  resource.setrlimit(resource.RLIMIT_CPU, (2, 3))
  resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))


def naive(stdin: str) -> str:
  return subprocess.run([sys.executable, '-I', '-S', '-c', PROGRAM], input=stdin, env={},
                        capture_output=True, text=True, timeout=5, preexec_fn=_limits).stdout


def measure(fn, threads: int, seconds: float) -> tuple[float, np.ndarray]:
  latencies: list[float] = []
  stop = time.monotonic() + seconds
  lock = threading.Lock()

  def client(i: int):
    n = 0
    while time.monotonic() < stop:
      t = time.monotonic()
      out = fn(f'{i} {n}')
      dt = time.monotonic() - t
      assert out.strip() == str(i + n), out
      with lock:
        latencies.append(dt)
      n += 1

  t0 = time.monotonic()
  with cf.ThreadPoolExecutor(threads) as pool:
    list(pool.map(client, range(threads)))
  return len(latencies) / (time.monotonic() - t0), np.asarray(latencies) * 1e3


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--seconds', type=float, default=5.0)
  parser.add_argument('--slots', type=int, default=0, help='0: one per core')
  args = parser.parse_args()
  slots = args.slots or os.cpu_count() or 1
  box = sb.Sandbox(slots)
  print(f'sandbox isolation: {box.level}; {slots} slots, {slots} client threads, '
        f'{os.cpu_count()} cores, {args.seconds:.0f} s each')
  box.run(PROGRAM, '1 2')  # warm
  rate, lat = measure(lambda s: box.run(PROGRAM, s).stdout, slots, args.seconds)
  box.close()
  n_rate, n_lat = measure(naive, slots, args.seconds)
  for name, r, l in (('fork server', rate, lat), ('naive subprocess', n_rate, n_lat)):
    print(f'{name:18s} {r:7.1f} runs/s   p50 {np.percentile(l, 50):6.2f} ms   '
          f'p99 {np.percentile(l, 99):6.2f} ms')
  print(f'fork server / naive: {rate / n_rate:.2f}x runs/s')


if __name__ == '__main__':
  main()

"""Multi-host runs and their resume, and the helpers of the tests that start
runs in fresh processes. (A run killed with SIGKILL and started again ends
with the same parameters, bit for bit, and the same metrics.jsonl training
lines as a run never interrupted: tests/faults_test.py.)"""
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from conftest import ROOT
from launch_test import _config
from r1jax import metrics

WORKER = os.path.join(ROOT, 'tests', 'worker.py')
TIMING = ('step_seconds', 'tokens_per_s')  # wall-clock, not results


def start(config, path, env=None):
  with open(path, 'w') as f:
    json.dump(config.to_dict(), f)
  return subprocess.Popen([sys.executable, WORKER, path], cwd=ROOT, env={**os.environ, **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def final_params(workdir, step):
  """The saved parameters as numpy arrays (whatever mesh or processes saved them)."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  ckptr = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          ckptr.metadata(path).item_metadata.tree)
  return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))['params']


def training_lines(workdir):
  rows = [r for r in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
          if 'reward/total' in r]
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _leaves(tree, prefix=''):
  if isinstance(tree, dict):
    for k in sorted(tree):
      yield from _leaves(tree[k], f'{prefix}/{k}')
  else:
    yield prefix, np.asarray(tree)


def _free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two_processes(config, path):
  """One run as 2 processes x 4 CPU devices on localhost (gloo collectives)."""
  env = {'R1JAX_TEST_DEVICES': '4', 'R1JAX_NUM_PROCESSES': '2', 'R1JAX_DISTRIBUTED': '1',
         'R1JAX_COORDINATOR': f'127.0.0.1:{_free_port()}'}
  procs = [start(config, f'{path}.{i}.json', {**env, 'R1JAX_PROCESS_ID': str(i)})
           for i in range(2)]
  try:
    return [finish(p, timeout=600) for p in procs]
  finally:
    for p in procs:  # never leave a peer waiting on a dead coordinator
      if p.poll() is None:
        p.kill()
        p.wait()


def test_two_processes_equal_one_process_and_resume(tmp_path, tfds_dir):
  """2 processes x 4 devices, stopped after step 2 and resumed for step 3,
  == 1 process x 8 devices run straight through 3 steps on the same (data 4,
  tensor 2) mesh: the same training lines and parameters."""
  t0 = time.time()
  results = {}
  for name in ('one', 'two'):
    c = _config(tmp_path / name, tfds_dir, steps=3 if name == 'one' else 2)
    c.checkpoint_every = 1
    if name == 'one':
      finish(start(c, str(tmp_path / 'one.json')))
    else:
      outs = run_two_processes(c, str(tmp_path / 'two'))
      assert 'process 1 of 2' in outs[1] and '4 local devices, 8 in all' in outs[1]
      c.steps = 3  # restore from step 2 and go on
      outs = run_two_processes(c, str(tmp_path / 'two'))
      assert all('resumed from' in out for out in outs)
      assert not any('no complete digest' in out for out in outs)  # both processes' digests
      step2 = os.path.join(c.workdir, 'checkpoints', '2')
      assert {'r1jax-digest.0.json', 'r1jax-digest.1.json'} <= set(os.listdir(step2))
    results[name] = (training_lines(c.workdir), dict(_leaves(final_params(c.workdir, 3))))
  print(f'two-process test: {time.time() - t0:.0f}s')
  (lines1, params1), (lines2, params2) = results.values()
  assert [r['step'] for r in lines1] == [r['step'] for r in lines2] == [1, 2, 3]
  for r1, r2 in zip(lines1, lines2):
    assert r1.keys() == r2.keys()
    for k in r1:
      np.testing.assert_allclose(r2[k], r1[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # Gradients are summed in another order across processes (gloo) than in
  # one; Adam divides each gradient by its own running scale, so on weights
  # whose gradient is near 0 (embedding rows of rare tokens) that float noise
  # moves an update by up to a tenth of the learning rate. Everything else
  # agrees to 1e-5 relative.
  atol = 0.1 * c.optim.lr * c.steps
  for name in params1:
    np.testing.assert_allclose(params2[name], params1[name], rtol=1e-5, atol=atol, err_msg=name)

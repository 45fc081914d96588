"""`launch.run` in a fresh process, for the tests that kill or multiply it:

  python tests/worker.py CONFIG.json

R1JAX_TEST_DEVICES sets the CPU device count (default 8); with
R1JAX_NUM_PROCESSES > 1 (and R1JAX_DISTRIBUTED, R1JAX_COORDINATOR,
R1JAX_PROCESS_ID) it is one process of a multi-host run over gloo.
R1JAX_TEST_FAULT=KIND:STEP[,KIND:STEP] injects faults (tests/faults_test.py):
  kill_in_save:N   SIGKILL itself while step N's checkpoint is being written
  raise_at:N       an exception when step N's metrics are written
  slow_save:N      step N's save takes 5 s more in orbax's background thread
  hang_save:N      step N's save never finishes"""
import json
import os
import sys

import jax

jax.config.update('jax_platforms', 'cpu')
jax.config.update('jax_num_cpu_devices', int(os.environ.get('R1JAX_TEST_DEVICES', '8')))
if int(os.environ.get('R1JAX_NUM_PROCESSES', '1')) > 1:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')

import ml_collections  # noqa: E402

from r1jax import launch  # noqa: E402


def inject(fault: str) -> None:
  import asyncio  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch  # pylint: disable=g-import-not-at-top
  from r1jax import checkpoint, metrics  # pylint: disable=g-import-not-at-top
  kind, _, at = fault.partition(':')
  at = int(at)
  if kind == 'kill_in_save':
    save = checkpoint.Checkpointer.save

    def killing_save(self, step, state, meta):
      save(self, step, state, meta)
      if step == at:  # the write is under way in orbax's threads
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.Checkpointer.save = killing_save
  elif kind == 'raise_at':
    write = metrics.Writer.write

    def raising_write(self, step, m):
      if step == at and 'loss' in m:
        raise RuntimeError(f'injected fault at step {step}')
      write(self, step, m)

    metrics.Writer.write = raising_write
  elif kind in ('slow_save', 'hang_save'):
    write_json = jch.JsonCheckpointHandler._save_fn  # runs in the background

    async def slow(self, x, directory):
      if x.get('step') == at:
        await asyncio.sleep(5 if kind == 'slow_save' else 10**6)
      await write_json(self, x, directory)

    jch.JsonCheckpointHandler._save_fn = slow
  else:
    raise ValueError(fault)


if __name__ == '__main__':
  for fault in filter(None, os.environ.get('R1JAX_TEST_FAULT', '').split(',')):
    inject(fault)
  with open(sys.argv[1]) as f:
    launch.run_or_exit(ml_collections.ConfigDict(json.load(f)))

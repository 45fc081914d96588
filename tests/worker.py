"""`launch.run` in a fresh process, for the tests that kill or multiply it:

  python tests/worker.py CONFIG.json

R1JAX_TEST_DEVICES sets the CPU device count (default 8); with
R1JAX_NUM_PROCESSES > 1 (and R1JAX_DISTRIBUTED, R1JAX_COORDINATOR,
R1JAX_PROCESS_ID) it is one process of a multi-host run over gloo."""
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

if __name__ == '__main__':
  with open(sys.argv[1]) as f:
    launch.run(ml_collections.ConfigDict(json.load(f)))

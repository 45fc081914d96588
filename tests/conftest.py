"""Every test sees 8 CPU devices, so meshes like (fsdp 4, tensor 2) can be built."""
import importlib.util
import os
import sys
import tempfile

import jax
import pytest

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_platforms', 'cpu')
# One compilation cache for the session and the worker processes it starts
# (they inherit the environment): the many runs of the smoke config compile
# the same programs, and CI has 2 cores.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='r1jax-test-xla-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))

# Make `configs/` importable by path-based tests.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
sys.path.insert(0, ROOT)


def zero_config(arg):
  spec = importlib.util.spec_from_file_location('zero', os.path.join(ROOT, 'configs', 'zero.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope='session')
def smoke_base(tmp_path_factory):
  """The smoke-sized tiny base, built once for the session."""
  from r1jax import base
  c = zero_config('smoke').base
  root = tmp_path_factory.mktemp('base')
  c.dir, c.data_dir = str(root / 'base'), str(root / 'tfds')
  base.build(c)
  return c

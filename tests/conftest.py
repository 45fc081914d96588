"""Every test sees 8 CPU devices, so meshes like (fsdp 4, tensor 2) can be built."""
import importlib.util
import os
import sys
import tempfile

# The tests' programs are tiny and mostly compiled once: LLVM's optimisation
# passes cost more than they save (a third of a GRPO-step test's time on
# CI's 2 cores). Worker processes and notebook kernels inherit the flag.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()

import jax  # noqa: E402
import pytest  # noqa: E402

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


def config_file(name, arg):
  """configs/<name>.py's get_config(arg)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def zero_config(arg):
  return config_file('zero', arg)


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """One data_dir for the session's runs (each task is prepared once)."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def done(tmp_path_factory, tfds_dir):
  """A finished 3-step smoke run with a checkpoint per step (kept: 3); tests
  that change it work on a copy."""
  from launch_test import _config  # pylint: disable=g-import-not-at-top
  from r1jax import launch  # pylint: disable=g-import-not-at-top
  c = _config(tmp_path_factory.mktemp('done'), tfds_dir, steps=3)
  c.checkpoint_every = 1
  launch.run(c)
  return c

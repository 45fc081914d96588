"""Every test sees 8 CPU devices, so meshes like (fsdp 4, tensor 2) can be built."""
import os
import sys

import jax

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_platforms', 'cpu')

# Make `configs/` importable by path-based tests.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
sys.path.insert(0, ROOT)

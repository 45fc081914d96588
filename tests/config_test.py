"""Configs: the :arg parser, overrides, and validation that names the key."""
import os
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from conftest import ROOT
from r1jax import config as rc

ZERO = os.path.join(ROOT, 'configs', 'zero.py')


def _load(argv):
  # config_flags reads the overrides (--config.x=...) from sys.argv.
  saved, sys.argv = sys.argv, ['prog'] + argv
  try:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, flag_values=fv)
    fv(['prog'] + argv)
    return fv.config
  finally:
    sys.argv = saved


def test_parse_arg_types_and_errors():
  a = rc.parse_arg('model=qwen2.5-1.5b,runlocal,steps=3,lr=0.5', model='tiny',
                   runlocal=False, steps=1, lr=1.0)
  assert (a.model, a.runlocal, a.steps, a.lr) == ('qwen2.5-1.5b', True, 3, 0.5)
  with pytest.raises(ValueError, match="unknown key 'bogus'"):
    rc.parse_arg('bogus=1', model='tiny')
  with pytest.raises(ValueError, match="steps='x' is not a int"):
    rc.parse_arg('steps=x', steps=1)


def test_config_file_with_arg_and_dotted_overrides():
  c = _load([f'--config={ZERO}:model=qwen2.5-1.5b', '--config.steps=7',
             '--config.mesh.fsdp=4'])
  assert c.model.name == 'qwen2.5-1.5b' and c.steps == 7 and c.mesh.fsdp == 4
  assert c.model.param_dtype == 'float32' and c.model.dtype == 'bfloat16'
  rc.validate(c)
  assert rc.validate(_load([f'--config={ZERO}'])).model.name == 'tiny'


def test_unknown_override_is_refused():
  with pytest.raises(Exception, match='fsdpp'):
    _load([f'--config={ZERO}', '--config.mesh.fsdpp=4'])


@pytest.mark.parametrize('key,value,match', [
    ('steps', -1, 'config.steps: must be an integer >= 0'),
    ('model.dtype', 'float64', 'config.model.dtype: must be one of'),
    ('mesh.tensor', 0, 'config.mesh.tensor'),
    ('model.name', 'gpt5', "config.model.name: unknown preset 'gpt5'"),
    ('model.ckpt', '/nonexistent', 'config.model.ckpt'),
])
def test_validation_names_the_key(key, value, match):
  c = rc.base_config()
  node = c
  *parents, leaf = key.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(rc.ConfigError, match=match) as e:
    rc.validate(c)
  assert e.value.key == key


def test_two_free_mesh_axes_rejected():
  c = rc.base_config()
  c.mesh.fsdp = -1
  with pytest.raises(rc.ConfigError, match='config.mesh: at most one axis'):
    rc.validate(c)

"""Config plumbing: the `:arg` parser, the defaults every recipe starts from,
and validation that runs before anything compiles and names the bad key.

Config files (`configs/*.py`) are loaded by path, so they import this module
from the installed package rather than a sibling file.
"""
import os
from typing import Any, Callable

import ml_collections

from r1jax.models.config import PRESETS

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
  """An invalid config; the message starts with the offending key."""

  def __init__(self, key: str, message: str):
    super().__init__(f'config.{key}: {message}')
    self.key = key


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
  """Parses `key=value,flag` (the part after ':' in --config=file.py:ARG).

  Values take the type of their default; a bare `key` sets a bool to True.
  """
  out = ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, eq, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'config arg: unknown key {key!r} in {arg!r}; '
                       f'known: {sorted(defaults)}')
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f'config arg: {key!r} needs a value ({key}=...)')
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(f'config arg: {key}={value!r} is not a boolean')
      out[key] = value.lower() in ('true', '1')
    elif isinstance(default, (int, float)):
      try:
        out[key] = type(default)(value)
      except ValueError as e:
        raise ValueError(f'config arg: {key}={value!r} is not a '
                         f'{type(default).__name__}') from e
    else:
      out[key] = value
  return out


def base_config() -> ConfigDict:
  """Defaults shared by every recipe; recipes override what they need."""
  c = ConfigDict()
  c.workdir = ''
  c.seed = 0
  c.steps = 100
  c.eval_every = 50
  c.checkpoint_every = 50

  c.model = ConfigDict()
  c.model.name = 'tiny'  # a preset of r1jax.models.PRESETS
  c.model.ckpt = ''  # a HF directory; overrides the preset's shape when set
  c.model.param_dtype = 'float32'
  c.model.dtype = 'float32'
  c.model.remat = False
  c.tokenizer = ''  # file or directory; default: the checkpoint directory

  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c


DTYPES = ('float32', 'bfloat16', 'float16')


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


# (key, predicate, what it must be). Keys absent from a config are skipped
# here; configs are built from base_config(), so absence is a recipe's choice.
_CHECKS: list[tuple[str, Callable[[Any], bool], str]] = [
    ('seed', _is_int, 'an integer'),
    ('steps', lambda v: _is_int(v) and v >= 0, 'an integer >= 0'),
    ('eval_every', lambda v: _is_int(v) and v >= 0, 'an integer >= 0 (0: only at start and end)'),
    ('checkpoint_every', lambda v: _is_int(v) and v >= 0, 'an integer >= 0 (0: only at the end)'),
    ('model.param_dtype', lambda v: v in DTYPES, f'one of {DTYPES}'),
    ('model.dtype', lambda v: v in DTYPES, f'one of {DTYPES}'),
    ('model.remat', lambda v: isinstance(v, bool), 'a bool'),
    ('mesh.data', lambda v: _is_int(v) and (v >= 1 or v == -1), '>= 1 or -1'),
    ('mesh.fsdp', lambda v: _is_int(v) and (v >= 1 or v == -1), '>= 1 or -1'),
    ('mesh.tensor', lambda v: _is_int(v) and (v >= 1 or v == -1), '>= 1 or -1'),
]


def _get(config: ConfigDict, key: str) -> tuple[bool, Any]:
  node = config
  for part in key.split('.'):
    if not isinstance(node, (ConfigDict, dict)) or part not in node:
      return False, None
    node = node[part]
  return True, node


def validate(config: ConfigDict) -> ConfigDict:
  """Raises ConfigError naming the first bad key; returns the config."""
  for key, ok, what in _CHECKS:
    present, value = _get(config, key)
    if present and not ok(value):
      raise ConfigError(key, f'must be {what}, got {value!r}')
  model = config.model
  if model.ckpt:
    if not os.path.exists(os.path.join(model.ckpt, 'config.json')):
      raise ConfigError('model.ckpt', f'{model.ckpt!r} has no config.json')
  elif model.name not in PRESETS:
    raise ConfigError('model.name', f'unknown preset {model.name!r}; '
                      f'known: {sorted(PRESETS)}')
  if sum(v == -1 for v in config.mesh.values()) > 1:
    raise ConfigError('mesh', f'at most one axis may be -1, got {config.mesh}')
  return config

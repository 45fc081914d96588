"""Config plumbing: the `:arg` parser, the defaults every recipe starts from,
and validation that runs before anything compiles and names the bad key.

Config files (`configs/*.py`) are loaded by path, so they import this module
from the installed package rather than a sibling file.
"""
import os
from typing import Any, Callable

import ml_collections

from r1jax import grpo, kernels
from r1jax.data.tasks import TASKS
from r1jax.models.config import PRESETS
from r1jax.rewards import REWARDS

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
  # Multi-host: jax.distributed.initialize() before anything touches devices
  # (also switched on by R1JAX_DISTRIBUTED=1, as the launch/ scripts do).
  c.distributed = False
  c.steps = 100
  c.eval_every = 50
  c.checkpoint_every = 50
  c.checkpoint_keep = 3  # the newest checkpoints kept
  c.skip_nonfinite = False  # True: log a non-finite loss and go on instead of raising

  c.model = ConfigDict()
  c.model.name = 'tiny'  # a preset of r1jax.models.PRESETS
  c.model.ckpt = ''  # a HF directory; overrides the preset's shape when set
  c.model.param_dtype = 'float32'
  c.model.dtype = 'float32'
  c.model.remat = False
  c.tokenizer = ''  # file or directory; default: the checkpoint directory

  # dcn_data: slices the data axis spans (multislice); 1 on a single slice.
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))

  c.task = 'arithmetic'  # r1jax.data.TASKS: built-in generators or 'local'
  c.data_dir = 'workdir/tfds'  # where TFDS prepares the built-in tasks
  # Held-out evaluation as in R1: pass@1 over k samples at T 0.6, top-p 0.95.
  # no_thinking: at step 0 also score answers forced without a chain of
  # thought (templates.NO_THINKING), to show how much the task needs the steps.
  c.eval = ConfigDict(dict(num_questions=128, k=4, temperature=0.6, top_p=0.95,
                           batch_size=32, no_thinking=False))

  # GRPO (r1jax/grpo.py writes the objective out).
  c.rl = ConfigDict(dict(
      prompts_per_step=8,  # B: prompts per step
      group_size=8,  # G: completions per prompt
      max_prompt_len=256,  # P: prompts are left-padded to this many tokens
      max_new_tokens=64,  # T
      temperature=1.0, top_p=1.0, top_k=0,
      beta=0.04, kl_estimator='k3',
      epsilon_low=0.2, epsilon_high=0.2, dual_clip=0.0,
      ratio='token',  # 'token' (GRPO) | 'sequence' (GSPO)
      loss_agg='seq_mean',  # 'seq_mean' (GRPO) | 'token_mean' (DAPO) | 'constant' (Dr.GRPO)
      advantage='grpo',  # 'grpo' | 'drgrpo' | 'rloo' | 'batch_std'
      per_reward_norm=False,  # GDPO
      num_iterations=1,  # μ
      minibatches=1,  # optimizer updates per iteration
      grad_accum=1,  # micro-batches per update
      mask_truncated=False,
      reference_reset_every=0,  # steps; R1 uses 400; 0 = never
      dynamic_sampling_attempts=1,  # DAPO dynamic sampling when > 1
      overlong_max_len=0, overlong_cache_len=0, overlong_weight=1.0,  # DAPO; 0 = off
      # auto: the Pallas kernel on TPU, chunked elsewhere; naive (full logits) to debug.
      logprob_impl='auto',
  ))
  # Rule-based rewards by name (r1jax.rewards.REWARDS) and their weights.
  c.rewards = ConfigDict({'accuracy': 1.0, 'format': 1.0})
  c.reward_timeout_s = 5.0

  c.optim = ConfigDict(dict(lr=1e-6, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.99,
                            eps=1e-8, grad_clip=1.0))
  return c


DTYPES = ('float32', 'bfloat16', 'float16')


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


# (key, predicate, what it must be). Keys absent from a config are skipped
# here; configs are built from base_config(), so absence is a recipe's choice.
_CHECKS: list[tuple[str, Callable[[Any], bool], str]] = [
    ('seed', _is_int, 'an integer'),
    ('steps', lambda v: _is_int(v) and v >= 0, 'an integer >= 0'),
    ('eval_every', lambda v: _is_int(v) and v >= 0, 'an integer >= 0 (0: only at start and end)'),
    ('checkpoint_every', lambda v: _is_int(v) and v >= 0, 'an integer >= 0 (0: only at the end)'),
    ('checkpoint_keep', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('skip_nonfinite', lambda v: isinstance(v, bool), 'a bool'),
    ('model.param_dtype', lambda v: v in DTYPES, f'one of {DTYPES}'),
    ('model.dtype', lambda v: v in DTYPES, f'one of {DTYPES}'),
    ('model.remat', lambda v: isinstance(v, bool), 'a bool'),
    ('mesh.data', lambda v: _is_int(v) and (v >= 1 or v == -1), '>= 1 or -1'),
    ('mesh.fsdp', lambda v: _is_int(v) and (v >= 1 or v == -1), '>= 1 or -1'),
    ('mesh.tensor', lambda v: _is_int(v) and (v >= 1 or v == -1), '>= 1 or -1'),
    ('mesh.dcn_data', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('distributed', lambda v: isinstance(v, bool), 'a bool'),
    ('rl.prompts_per_step', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('rl.group_size', lambda v: _is_int(v) and v >= 2, 'an integer >= 2 (advantages are group-relative)'),
    ('rl.max_prompt_len', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('rl.max_new_tokens', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('rl.temperature', lambda v: _is_num(v) and v >= 0, 'a number >= 0 (0: greedy)'),
    ('rl.top_p', lambda v: _is_num(v) and 0 < v <= 1, 'in (0, 1]'),
    ('rl.top_k', lambda v: _is_int(v) and v >= 0, 'an integer >= 0 (0: off)'),
    ('rl.beta', lambda v: _is_num(v) and v >= 0, 'a number >= 0'),
    ('rl.kl_estimator', lambda v: v in grpo.KL_ESTIMATORS, f'one of {grpo.KL_ESTIMATORS}'),
    ('rl.epsilon_low', lambda v: _is_num(v) and 0 <= v < 1, 'in [0, 1)'),
    ('rl.epsilon_high', lambda v: _is_num(v) and v >= 0, 'a number >= 0'),
    ('rl.dual_clip', lambda v: _is_num(v) and (v == 0 or v > 1), '0 (off) or > 1'),
    ('rl.ratio', lambda v: v in grpo.RATIOS, f'one of {grpo.RATIOS}'),
    ('rl.loss_agg', lambda v: v in grpo.AGGREGATIONS, f'one of {grpo.AGGREGATIONS}'),
    ('rl.advantage', lambda v: v in grpo.ADVANTAGES, f'one of {grpo.ADVANTAGES}'),
    ('rl.num_iterations', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('rl.minibatches', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('rl.grad_accum', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('rl.reference_reset_every', lambda v: _is_int(v) and v >= 0, 'an integer >= 0'),
    ('rl.dynamic_sampling_attempts', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('rl.overlong_max_len', lambda v: _is_int(v) and v >= 0, 'an integer >= 0'),
    ('rl.overlong_cache_len', lambda v: _is_int(v) and v >= 0, 'an integer >= 0'),
    ('rl.logprob_impl', lambda v: v in kernels.IMPLS, f'one of {kernels.IMPLS}'),
    ('reward_timeout_s', lambda v: _is_num(v) and v > 0, 'a number > 0'),
    ('eval.num_questions', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('eval.k', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('eval.temperature', lambda v: _is_num(v) and v >= 0, 'a number >= 0'),
    ('eval.top_p', lambda v: _is_num(v) and 0 < v <= 1, 'in (0, 1]'),
    ('eval.batch_size', lambda v: _is_int(v) and v >= 1, 'an integer >= 1'),
    ('eval.no_thinking', lambda v: isinstance(v, bool), 'a bool'),
    ('optim.lr', lambda v: _is_num(v) and v > 0, 'a number > 0'),
    ('optim.warmup_steps', lambda v: _is_int(v) and v >= 0, 'an integer >= 0'),
    ('optim.weight_decay', lambda v: _is_num(v) and v >= 0, 'a number >= 0'),
    ('optim.grad_clip', lambda v: _is_num(v) and v >= 0, 'a number >= 0 (0: off)'),
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
  to_build = 'base' in config and model.ckpt == config.base.dir
  if model.ckpt and not to_build:
    if not os.path.exists(os.path.join(model.ckpt, 'config.json')):
      raise ConfigError('model.ckpt', f'{model.ckpt!r} has no config.json')
  elif not model.ckpt and model.name not in PRESETS:
    raise ConfigError('model.name', f'unknown preset {model.name!r}; '
                      f'known: {sorted(PRESETS)}')
  if sum(v == -1 for k, v in config.mesh.items() if k != 'dcn_data') > 1:
    raise ConfigError('mesh', f'at most one axis may be -1, got {config.mesh}')
  if 'task' in config and config.task not in (*TASKS, 'local'):
    raise ConfigError('task', f'unknown task {config.task!r}; known: {sorted(TASKS)} or local')
  if 'rl' in config:
    rl = config.rl
    parts = rl.minibatches * rl.grad_accum
    if rl.prompts_per_step % parts:
      raise ConfigError('rl.prompts_per_step', f'{rl.prompts_per_step} prompts do not split '
                        f'into minibatches x grad_accum = {parts} parts')
    if rl.overlong_max_len and rl.overlong_cache_len > rl.overlong_max_len:
      raise ConfigError('rl.overlong_cache_len', 'must be <= rl.overlong_max_len')
  if 'rewards' in config:
    for name, weight in config.rewards.items():
      if name not in REWARDS:
        raise ConfigError(f'rewards.{name}', f'unknown reward; known: {sorted(REWARDS)}')
      if not _is_num(weight):
        raise ConfigError(f'rewards.{name}', f'weight must be a number, got {weight!r}')
    if not config.rewards:
      raise ConfigError('rewards', 'at least one reward is needed')
  return config


def validate_for_mesh(config: ConfigDict, mesh) -> None:
  """Checks that need the device count: prompts and completions are sharded
  over the batch axes ('data', 'fsdp')."""
  batch_shards = mesh.shape['data'] * mesh.shape['fsdp']
  rl = config.rl
  if rl.prompts_per_step % batch_shards:
    raise ConfigError('rl.prompts_per_step', f'{rl.prompts_per_step} prompts do not split '
                      f'over data x fsdp = {batch_shards} devices')

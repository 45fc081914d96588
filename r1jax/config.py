"""Config plumbing: the `:arg` parser, the defaults every recipe starts from,
and validation that runs before anything compiles and names the bad key.

Config files (`configs/*.py`) are loaded by path, so they import this module
from the installed package rather than a sibling file.
"""
import json
import math
import os
import sys
from typing import Any, Callable

import ml_collections
from absl import flags
from etils import epath

from r1jax import grpo, kernels, workdir as wd
from r1jax.kernels import attention
from r1jax.data.tasks import TASKS, VERIFIERS
from r1jax.data.templates import TAGS
from r1jax.models.config import PRESETS, ModelConfig
from r1jax.rewards import CORRECTNESS, MODEL_REWARD, REWARDS, load_reward

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
  """An invalid config; the message starts with the offending key."""

  def __init__(self, key: str, message: str):
    super().__init__(f'config.{key}: {message}')
    self.key, self.message = key, message

  def within(self, section: str) -> 'ConfigError':
    """The same error named from the enclosing config (a pipeline's stage)."""
    return ConfigError(f'{section}.{self.key}', self.message)


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
        what = {int: 'an integer', float: 'a number'}.get(type(default), type(default).__name__)
        raise ValueError(f'config arg: {key}={value!r} is not {what}') from e
    else:
      out[key] = value
  return out


def sibling_config(here: str, name: str, arg: str | None = None) -> ConfigDict:
  """`get_config(arg)` of the config file <name>.py next to the file `here`
  (a recipe built from others: configs/r1.py from sft.py, zero.py, …)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(here)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'r1jax_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def base_config() -> ConfigDict:
  """Defaults shared by every recipe; recipes override what they need."""
  c = ConfigDict()
  c.workdir = 'workdir/run'
  c.seed = 0
  # Multi-host: jax.distributed.initialize() before anything touches devices
  # (also switched on by R1JAX_DISTRIBUTED=1, as the launch/ scripts do).
  c.distributed = False
  c.steps = 100
  c.eval_every = 50
  c.checkpoint_every = 50
  c.checkpoint_keep = 3  # the newest checkpoints kept
  # The longest wait for a save in flight when a run ends (a hung filesystem
  # cannot hold the process forever); seconds.
  c.checkpoint_wait_s = 1800.0
  # A non-finite loss, gradient or update is never applied. False: stop
  # (nothing is saved); True: skip that update, count it and go on.
  c.skip_nonfinite = False

  c.model = ConfigDict()
  c.model.name = 'tiny'  # a preset of r1jax.models.PRESETS
  # A HF directory, or an r1jax workdir (its newest checkpoint) or
  # <workdir>/checkpoints/<step>; overrides the preset's shape when set.
  c.model.ckpt = ''
  c.model.param_dtype = 'float32'
  c.model.dtype = 'float32'
  c.model.remat = False
  # Attention of the teacher-forced passes (r1jax/kernels/attention.py):
  # auto = splash on TPU, blockwise (linear memory) elsewhere, dense within a
  # block; 'triton' = the Pallas flash kernel on GPU (not yet run on one).
  c.model.attention = 'auto'
  # Sequences longer than this many positions run their MLP chunk by chunk
  # (its [B, T, F] activations one chunk at a time); 0: whole.
  c.model.mlp_chunk = 4096
  c.tokenizer = ''  # file or directory; default: the checkpoint directory

  # dcn_data: slices the data axis spans (multislice); 1 on a single slice.
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))

  c.task = 'arithmetic'  # r1jax.data.TASKS: built-in generators or 'local'
  # Where TFDS prepares the built-in tasks ('': <workdir>/tfds), or the
  # directory of a 'local' task's files.
  c.data_dir = ''
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
      # Sample the prompts in this many sequential chunks (the KV cache of
      # one chunk at a time: R1's 8,192 x 33k-token rollout needs it).
      rollout_chunks=1,
      # Decode slots per chunk: 0 decodes every sample of a chunk at once (a
      # static batch that runs until its longest sample ends); fewer slots
      # are refilled from the queue of pending samples as samples end
      # (continuous batching: the work follows the tokens generated, the KV
      # cache holds only the slots). Same tokens either way.
      decode_slots=0,
      # Pack the completions (with their prompts) into rows for the reference,
      # old-policy and update passes, pack_rows rows a forward (0: a quarter of
      # a micro-batch's samples where that splits over the batch devices, else
      # a whole micro-batch's): the work follows the real token count rather
      # than samples x max_new_tokens, at the price of one prompt per sample
      # instead of one per group (benchmarks/packing.py measures both).
      pack=False, pack_rows=0,
      overlong_max_len=0, overlong_cache_len=0, overlong_weight=1.0,  # DAPO; 0 = off
      # auto: the Pallas kernel on TPU, chunked elsewhere; naive (full logits) to debug.
      logprob_impl='auto',
  ))
  # Rule-based rewards by name (r1jax.rewards.REWARDS) and their weights.
  c.rewards = ConfigDict({'accuracy': 1.0, 'format': 1.0})
  # Your own rewards: name -> 'package.module:function', a function
  # f(prompt, completion, example) -> float like the built-ins; weight them in
  # `rewards` under that name. (ConfigDict keys cannot hold dots, hence the
  # two dicts.)
  c.reward_fns = ConfigDict({})
  # A trained reward model (configs/rm.py's workdir), weighted in `rewards`
  # as 'reward_model': it scores, on device, the responses to general prompts.
  c.reward_model = ConfigDict(dict(ckpt=''))
  # General prompts mixed into the RL batches (R1's stage 4): a share
  # `fraction` of each step's prompts from the built-in task `task`, from step
  # from_step + 1 on ('' : none).
  c.general = ConfigDict(dict(task='', fraction=0.0, from_step=0))
  c.reward_timeout_s = 5.0  # per call; the worker process is killed past it
  # The code rewards' sandbox (rewards/sandbox.py): limits of one run, and
  # the weakest isolation to train with ('' any; see sandbox.LEVELS).
  c.sandbox = ConfigDict(dict(time_limit_s=2.0, memory_mb=512, require_isolation=''))
  c.reward_workers = 0  # scoring processes per host; 0: one per core, at most 8

  # schedule: 'constant' after the warm-up (R1's RL), or 'cosine' decay to
  # final_lr_ratio x lr at the last update (R1's SFT: 0.1).
  # LoRA adapters (models/lora.py) instead of full fine-tuning, in RL and
  # SFT: rank 0 is off. The reference policy is the base itself (adapters
  # disabled) and checkpoints hold the adapters and their optimizer state
  # only. dropout (PEFT's lora_dropout, on the adapters' inputs) in SFT and
  # on-policy RL updates.
  c.lora = ConfigDict(dict(rank=0, alpha=16.0, dropout=0.0, targets='q,k,v,o,gate,up,down'))
  c.optim = ConfigDict(dict(lr=1e-6, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.99,
                            eps=1e-8, grad_clip=1.0, schedule='constant', final_lr_ratio=0.1))
  return c


DTYPES = ('float32', 'bfloat16', 'float16')


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(lo: int) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: _is_int(v) and v >= lo), f'an integer >= {lo}'


def _num(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False
         ) -> tuple[Callable[[Any], bool], str]:
  def ok(v):
    return (_is_num(v) and (v > lo if lo_open else v >= lo)
            and (v < hi if hi_open else v <= hi))
  if hi == math.inf:
    what = f'a finite number {">" if lo_open else ">="} {lo}'
  else:
    what = f'a number in {"(" if lo_open else "["}{lo}, {hi}{")" if hi_open else "]"}'
  return ok, what


def _one_of(values) -> tuple[Callable[[Any], bool], str]:
  values = tuple(values)
  return (lambda v: v in values), f'one of {values}'


_BOOL = (lambda v: isinstance(v, bool)), 'a bool'
_STR = (lambda v: isinstance(v, str)), 'a string'
_PATH = (lambda v: isinstance(v, str) and bool(v.strip())), 'a non-empty path'
_PATH_OR_EMPTY = ((lambda v: isinstance(v, str) and (v == '' or bool(v.strip()))),
                  "a path, or '' for the default")
_AXIS = (lambda v: _is_int(v) and (v >= 1 or v == -1)), '>= 1 or -1'

# (key, (predicate, what it must be)). Every field of base_config() and of
# base.default_config() has a line (tests/config_test.py checks that). Keys
# absent from a config are skipped: a recipe may drop a section.
_CHECKS: list[tuple[str, tuple[Callable[[Any], bool], str]]] = [
    ('workdir', _PATH),
    ('seed', (_is_int, 'an integer')),
    ('distributed', _BOOL),
    ('steps', _int(0)),
    ('eval_every', (_int(0)[0], 'an integer >= 0 (0: only at start and end)')),
    ('checkpoint_every', (_int(0)[0], 'an integer >= 0 (0: only at the end)')),
    ('checkpoint_keep', _int(1)),
    ('checkpoint_wait_s', _num(0, lo_open=True)),
    ('skip_nonfinite', _BOOL),
    ('model.name', _STR),
    ('model.ckpt', _STR),
    ('model.param_dtype', _one_of(DTYPES)),
    ('model.dtype', _one_of(DTYPES)),
    ('model.remat', _BOOL),
    ('model.attention', _one_of(attention.IMPLS)),
    ('model.mlp_chunk', (_int(0)[0], 'an integer >= 0 (0: the MLP over whole sequences)')),
    ('tokenizer', _STR),
    ('mesh.data', _AXIS),
    ('mesh.fsdp', _AXIS),
    ('mesh.tensor', _AXIS),
    ('mesh.dcn_data', _int(1)),
    ('task', _one_of((*TASKS, 'local'))),
    ('data_dir', _PATH_OR_EMPTY),
    ('eval.num_questions', _int(1)),
    ('eval.k', _int(1)),
    ('eval.temperature', _num(0, 100)),
    ('eval.top_p', _num(0, 1, lo_open=True)),
    ('eval.batch_size', _int(1)),
    ('eval.no_thinking', _BOOL),
    ('rl.prompts_per_step', _int(1)),
    ('rl.group_size', (_int(2)[0], 'an integer >= 2 (advantages are group-relative)')),
    ('rl.max_prompt_len', _int(1)),
    ('rl.max_new_tokens', _int(1)),
    ('rl.temperature', (_num(0, 100)[0], 'a number in [0, 100] (0: greedy)')),
    ('rl.top_p', _num(0, 1, lo_open=True)),
    ('rl.top_k', (_int(0)[0], 'an integer >= 0 (0: off)')),
    ('rl.beta', _num(0)),
    ('rl.kl_estimator', _one_of(grpo.KL_ESTIMATORS)),
    # R1's stage 2 clips at ε = 10: a lower bound 1 - ε <= 0 never binds.
    ('rl.epsilon_low', (_num(0)[0], 'a finite number >= 0 (>= 1: no lower clip)')),
    ('rl.epsilon_high', _num(0)),
    ('rl.dual_clip', ((lambda v: _is_num(v) and (v == 0 or v > 1)), '0 (off) or a finite number > 1')),
    ('rl.ratio', _one_of(grpo.RATIOS)),
    ('rl.loss_agg', _one_of(grpo.AGGREGATIONS)),
    ('rl.advantage', _one_of(grpo.ADVANTAGES)),
    ('rl.per_reward_norm', _BOOL),
    ('rl.num_iterations', _int(1)),
    ('rl.minibatches', _int(1)),
    ('rl.grad_accum', _int(1)),
    ('rl.mask_truncated', _BOOL),
    ('rl.reference_reset_every', _int(0)),
    ('rl.dynamic_sampling_attempts', _int(1)),
    ('rl.rollout_chunks', _int(1)),
    ('rl.decode_slots', _int(0)),
    ('rl.pack', _BOOL),
    ('rl.pack_rows', _int(0)),
    ('rl.overlong_max_len', _int(0)),
    ('rl.overlong_cache_len', _int(0)),
    ('rl.overlong_weight', _num(-math.inf)),
    ('rl.logprob_impl', _one_of(kernels.IMPLS)),
    ('reward_model.ckpt', _PATH_OR_EMPTY),
    ('general.task', _one_of(('', *TASKS))),
    ('general.fraction', _num(0, 1, hi_open=True)),
    ('general.from_step', _int(0)),
    ('reward_timeout_s', _num(0, lo_open=True)),
    ('sandbox.time_limit_s', _num(0, lo_open=True)),
    ('sandbox.memory_mb', _int(64)),
    ('sandbox.require_isolation', (lambda v: isinstance(v, str), "'' or a level of "
                                   'rewards/sandbox.py LEVELS')),
    ('base.arch', (lambda v: v in ('qwen2', 'llama'), "'qwen2' or 'llama'")),
    ('reward_workers', (_int(0)[0], 'an integer >= 0 (0: one per core, at most 8)')),
    ('optim.lr', _num(0, lo_open=True)),
    ('lora.rank', _int(0)),
    ('lora.alpha', _num(0, lo_open=True)),
    ('lora.dropout', _num(0, 1, hi_open=True)),
    ('lora.targets', (lambda v: isinstance(v, str) and bool(v) and all(
        t.strip() in ('q', 'k', 'v', 'o', 'gate', 'up', 'down') for t in v.split(',')),
                      "a comma-separated subset of q,k,v,o,gate,up,down")),
    ('optim.warmup_steps', _int(0)),
    ('optim.weight_decay', _num(0)),
    ('optim.b1', _num(0, 1, hi_open=True)),
    ('optim.b2', _num(0, 1, hi_open=True)),
    ('optim.eps', _num(0, lo_open=True)),
    ('optim.grad_clip', (_num(0)[0], 'a finite number >= 0 (0: off)')),
    ('optim.schedule', _one_of(('constant', 'cosine'))),
    ('optim.final_lr_ratio', _num(0, 1)),
    # Supervised fine-tuning (r1jax/sft.py; configs/sft.py).
    ('sft.data', _PATH_OR_EMPTY),
    ('sft.eval_data', _PATH_OR_EMPTY),
    ('sft.held_out', _int(0)),
    ('sft.builtin_examples', _int(1)),
    ('sft.builtin_words', _BOOL),
    ('sft.template', _one_of(('none', 'r1_zero', 'chat'))),
    ('sft.max_len', _int(2)),
    ('sft.too_long', _one_of(('error', 'drop'))),
    ('sft.batch_size', _int(1)),
    ('sft.grad_accum', _int(1)),
    ('sft.epochs', _num(0, lo_open=True)),
    # The reward model (r1jax/reward_model.py; configs/rm.py).
    ('rm.data', _PATH_OR_EMPTY),
    ('rm.eval_data', _PATH_OR_EMPTY),
    ('rm.held_out', _int(0)),
    ('rm.builtin_pairs', _int(1)),
    ('rm.max_prompt_len', _int(1)),
    ('rm.max_response_len', _int(1)),
    ('rm.summary_only', _BOOL),
    ('rm.batch_size', _int(1)),
    ('rm.grad_accum', _int(1)),
    ('rm.epochs', _num(0, lo_open=True)),
    ('eval.max_new_tokens', _int(1)),
    ('eval.max_prompt_len', _int(1)),
    # The tiny base build (r1jax/base.py).
    ('base.rebuild', _BOOL),
    ('base.dir', _PATH_OR_EMPTY),
    ('base.task', _one_of(TASKS)),
    ('base.data_dir', _PATH_OR_EMPTY),
    ('base.seed', (_is_int, 'an integer')),
    ('base.error_rate', _num(0, 1)),
    ('base.direct_fraction', _num(0, 1)),
    ('base.template_fraction', _num(0, 1)),
    ('base.vocab_size', _int(64)),
    ('base.number_symbols', _int(10)),
    ('base.model.hidden_size', _int(1)),
    ('base.model.intermediate_size', _int(1)),
    ('base.model.num_layers', _int(1)),
    ('base.model.num_heads', _int(1)),
    ('base.model.num_kv_heads', _int(1)),
    ('base.model.head_dim', _int(1)),
    ('base.batch_size', _int(1)),
    ('base.lr', _num(0, lo_open=True)),
    ('base.max_steps', _int(1)),
    ('base.max_minutes', _num(0, lo_open=True)),
    ('base.eval_every', _int(1)),
    ('base.eval_questions', _int(1)),
    ('base.target_greedy_accuracy', _num(0, 1)),
    ('base.max_new_tokens', _int(1)),
    ('base.chain_words', _BOOL),
    ('base.language_mixing', _num(0, 1)),
    ('base.general_fraction', _num(0, 1)),
    ('base.general_error_rate', _num(0, 1)),
]
CHECKED_KEYS = frozenset(k for k, _ in _CHECKS)


def data_dir(config: ConfigDict) -> str:
  """config.data_dir, or <workdir>/tfds: what a run writes stays in its workdir."""
  return config.data_dir or f'{str(config.workdir).rstrip("/")}/tfds'


def base_to_build(config: ConfigDict) -> ConfigDict | None:
  """The tiny base section with its paths set, when this run rebuilds it
  (base.rebuild, no model.ckpt); None when it starts from a checkpoint."""
  if 'base' not in config or config.model.ckpt or not config.base.rebuild:
    return None
  c = ConfigDict(config.base.to_dict())
  c.dir = c.dir or f'{str(config.workdir).rstrip("/")}/base'
  c.data_dir = c.data_dir or data_dir(config)
  return c


def model_ckpt(config: ConfigDict) -> str:
  """The checkpoint a run starts from: model.ckpt; for a recipe with a tiny
  base section and no model.ckpt, the base shipped with r1jax, or the one
  rebuilt into the workdir."""
  if config.model.ckpt or 'base' not in config:
    return config.model.ckpt
  from r1jax import base  # pylint: disable=g-import-not-at-top
  built = base_to_build(config)
  return built.dir if built is not None else base.SHIPPED


def check_base(c: ConfigDict, section: str = 'base') -> None:
  """A tiny base build's settings (r1jax/base.py), before it prepares data
  or trains: the table's checks, then what they need of each other. Keys are
  named under `section` ('base' in a training config; '' for python -m
  r1jax.base, whose config is the section itself)."""
  def error(key: str, message: str) -> ConfigError:
    return ConfigError(f'{section}.{key}' if section else key, message)
  try:
    check_keys(ConfigDict({'base': c.to_dict()}))
  except ConfigError as e:
    raise error(e.key.removeprefix('base.'), e.message) from None
  for key, what in (('dir', 'where the base is built'),
                    ('data_dir', 'where TFDS prepares its task')):
    if not c[key]:
      raise error(key, f'must be set: {what}')
  if c.task != 'arithmetic':
    raise error('task', f"only 'arithmetic' has the imperfect solutions a base learns from, "
                f'got {c.task!r}')
  # The tokenizer holds 3 special pieces, the tags and the numbers 10 .. N-1
  # as pieces of their own, then every character of the corpus (~45).
  reserved = 3 + len(TAGS) + max(0, c.number_symbols - 10)
  if c.vocab_size <= reserved:
    raise error('vocab_size', f'{c.vocab_size} leaves no room for the corpus: {reserved} pieces '
                f'are reserved (3 special, {len(TAGS)} tags, the numbers 10..'
                f'{c.number_symbols - 1}); raise it or lower number_symbols')
  m = c.model
  if m.num_heads % m.num_kv_heads:
    raise error('model.num_heads', f'{m.num_heads} is not a multiple of model.num_kv_heads '
                f'({m.num_kv_heads})')
  try:  # what else the decoder's own config refuses
    ModelConfig(arch=c.arch, vocab_size=c.vocab_size, **m)
  except (TypeError, ValueError) as e:
    raise error('model', str(e)) from None


def _get(config: ConfigDict, key: str) -> tuple[bool, Any]:
  node = config
  for part in key.split('.'):
    if not isinstance(node, (ConfigDict, dict)) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _check_context(config: ConfigDict, to_build: bool) -> None:
  """A prompt and its completion must fit the model's positions (RoPE past
  them is extrapolation the model never trained on)."""
  if 'rl' not in config:
    return
  model = config.model
  ckpt = model_ckpt(config)
  if ckpt and not to_build:
    check_context(ckpt, config.rl.max_prompt_len, config.rl.max_new_tokens, 'rl.')
  elif model.name in PRESETS:
    limit, where = PRESETS[model.name].max_position_embeddings, f'preset {model.name!r}'
    _check_total(limit, where, config.rl.max_prompt_len, config.rl.max_new_tokens, 'rl.')


def check_context(ckpt: str, max_prompt_len: int, max_new_tokens: int, prefix: str = '') -> None:
  """Prompt and completion lengths against the checkpoint's positions (its
  config.json; an unreadable one is left to the loader to name)."""
  path = os.path.join(wd.model_dir(ckpt), 'config.json')
  try:
    with open(path) as f:
      limit = json.load(f).get('max_position_embeddings')
  except (OSError, ValueError):
    return
  _check_total(limit, path, max_prompt_len, max_new_tokens, prefix)


def _check_total(limit, where: str, max_prompt_len: int, max_new_tokens: int, prefix: str):
  total = max_prompt_len + max_new_tokens
  if isinstance(limit, int) and total > limit:
    raise ConfigError(f'{prefix}max_new_tokens', f'{prefix}max_prompt_len ({max_prompt_len}) + '
                      f'{prefix}max_new_tokens ({max_new_tokens}) = {total} exceeds the '
                      f'model\'s max_position_embeddings ({limit}, {where}); lower them, or '
                      'use a model with a longer context')


def validate_attention(model: ConfigDict) -> None:
  """model.attention against model.dtype: cuDNN's fused attention takes
  fp16/bf16 only, and an f32 model would fail at its first GPU compile."""
  impl, dtype = model.get('attention'), model.get('dtype')
  if impl is None:  # a recipe without the key: the model's default
    return
  if impl not in attention.IMPLS:
    raise ConfigError('model.attention', f'must be one of {attention.IMPLS}, got {impl!r}')
  if impl == 'cudnn' and dtype not in ('bfloat16', 'float16'):
    raise ConfigError('model.attention', f"'cudnn' runs fp16/bf16 only (model.dtype is "
                      f"{dtype!r}); 'blockwise' runs f32 on GPU")


def check_keys(config: ConfigDict, keys=None) -> None:
  """The table's checks of `keys` (default all) that the config has."""
  for key, (ok, what) in _CHECKS:
    if keys is not None and key not in keys:
      continue
    present, value = _get(config, key)
    if present and not ok(value):
      raise ConfigError(key, f'must be {what}, got {value!r}')


def validate(config: ConfigDict) -> ConfigDict:
  """Raises ConfigError naming the first bad key; returns the config."""
  check_keys(config)
  model = config.model
  validate_attention(model)
  built = base_to_build(config)
  to_build = built is not None
  if to_build:
    check_base(built)
  ckpt = model_ckpt(config)
  if to_build and not wd.is_local(config.workdir):
    raise ConfigError('base.rebuild', f'the tiny base is built on local disk; with the workdir '
                      f'{config.workdir!r} build it once with python -m r1jax.base and set '
                      'model.ckpt to it')
  if config.get('task') == 'local' and not config.get('data_dir'):
    raise ConfigError('data_dir', 'task \'local\' reads <data_dir>/{train,test}.jsonl (or '
                      '.parquet); set --config.data_dir')
  if ckpt and not to_build:
    if '://' in ckpt:
      raise ConfigError('model.ckpt', f'{ckpt!r}: weights and tokenizer are read from a local '
                        'directory; copy the checkpoint to local disk first (e.g. gcloud '
                        'storage cp -r), or export an r1jax workdir with python -m r1jax.export')
    if not os.path.exists(os.path.join(wd.model_dir(ckpt), 'config.json')):
      raise ConfigError('model.ckpt', f'{ckpt!r} has no config.json (neither a HF directory '
                        'nor an r1jax workdir or <workdir>/checkpoints/<step>)')
    ref = wd.checkpoint_ref(ckpt)
    if ref and ref[1] is not None and not (ref[0] / wd.CHECKPOINTS / str(ref[1])).exists():
      have = sorted(int(p.name) for p in (ref[0] / wd.CHECKPOINTS).iterdir() if p.name.isdigit())
      raise ConfigError('model.ckpt', f'{ckpt!r}: no checkpoint {ref[1]} in {ref[0]} '
                        f'(steps: {have})')
  elif not ckpt and model.name not in PRESETS:
    raise ConfigError('model.name', f'unknown preset {model.name!r}; '
                      f'known: {sorted(PRESETS)}')
  _check_context(config, to_build)
  if sum(v == -1 for k, v in config.mesh.items() if k != 'dcn_data') > 1:
    raise ConfigError('mesh', f'at most one axis may be -1, got {config.mesh}')
  if 'rl' in config:
    rl = config.rl
    parts = rl.minibatches * rl.grad_accum
    if rl.prompts_per_step % parts:
      raise ConfigError('rl.prompts_per_step', f'{rl.prompts_per_step} prompts do not split '
                        f'into minibatches x grad_accum = {parts} parts')
    if rl.prompts_per_step % rl.rollout_chunks:
      raise ConfigError('rl.rollout_chunks', f'{rl.prompts_per_step} prompts do not split into '
                        f'{rl.rollout_chunks} chunks')
    per_chunk = rl.prompts_per_step // rl.rollout_chunks * rl.group_size
    if rl.decode_slots > per_chunk:
      raise ConfigError('rl.decode_slots', f'{rl.decode_slots} slots for {per_chunk} samples a '
                        'chunk (prompts_per_step / rollout_chunks x group_size); at most that')
    per_update = rl.prompts_per_step // rl.minibatches * rl.group_size
    if rl.pack_rows and per_update % rl.pack_rows:
      raise ConfigError('rl.pack_rows', f'{rl.pack_rows} rows do not divide the '
                        f'{per_update} samples of an update')
    if rl.overlong_max_len and rl.overlong_cache_len > rl.overlong_max_len:
      raise ConfigError('rl.overlong_cache_len', 'must be <= rl.overlong_max_len')
    g = config.get('general')
    if g is not None and g.task:
      n = rl.prompts_per_step * g.fraction
      if abs(n - round(n)) > 1e-9 or not 0 < round(n) < rl.prompts_per_step:
        raise ConfigError('general.fraction', f'{g.fraction} of rl.prompts_per_step='
                          f'{rl.prompts_per_step} must be a whole number of prompts, at least '
                          'one and not all')
  if 'rewards' in config:
    custom = dict(config.get('reward_fns', {}))
    for name, spec in custom.items():
      if name in REWARDS:
        raise ConfigError(f'reward_fns.{name}', 'is a built-in reward\'s name; pick another')
      try:
        load_reward(spec)
      except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise ConfigError(f'reward_fns.{name}', str(e)) from None
    for name, weight in config.rewards.items():
      if name == MODEL_REWARD:
        if not config.get('reward_model', {}).get('ckpt'):
          raise ConfigError('reward_model.ckpt', f'rewards.{MODEL_REWARD} needs a trained reward '
                            'model: the workdir of python -m r1jax.launch --config=configs/rm.py')
      elif name not in REWARDS and name not in custom:
        raise ConfigError(f'rewards.{name}', f'unknown reward; known: {sorted(REWARDS)}, or '
                          'yours by name in reward_fns (\'package.module:function\')')
      if not _is_num(weight):
        raise ConfigError(f'rewards.{name}', f'weight must be a finite number, got {weight!r}')
    if not config.rewards:
      raise ConfigError('rewards', 'at least one reward is needed')
    _check_sandbox(config)
    if 'task' in config:
      _check_verifier(config)
  lora = config.get('lora')
  if lora is not None and lora.rank and 'rm' in config:
    raise ConfigError('lora.rank', 'LoRA trains the policy (RL and SFT), not the reward model; '
                      'set lora.rank=0')
  if (lora is not None and lora.rank and lora.dropout and 'rl' in config
      and config.rl.num_iterations * config.rl.minibatches > 1):
    # Stale updates take the ratio against a separate old-policy pass, run
    # with the adapters whole: dropout in the update alone would make the
    # ratio of unchanged weights differ from 1 (and clip on noise). On-policy
    # (μ·M = 1) the old log-probs are the update's own forward, detached.
    raise ConfigError('lora.dropout', 'dropout in RL needs on-policy updates '
                      '(rl.num_iterations * rl.minibatches = 1): a stale update would compare '
                      'dropped-out log-probs to whole ones in its ratio; set 0')
  return config


def _check_sandbox(config) -> None:
  from r1jax.rewards import programs, sandbox  # pylint: disable=g-import-not-at-top
  s = config.get('sandbox')
  if s is None:
    return
  if s.require_isolation and s.require_isolation not in sandbox.LEVELS:
    raise ConfigError('sandbox.require_isolation', f"'' or one of {sandbox.LEVELS}, got "
                      f'{s.require_isolation!r}')
  one_run = 2 * s.time_limit_s + 1
  if any(n in programs.NAMES for n in config.rewards) and config.reward_timeout_s < one_run + 1:
    raise ConfigError('reward_timeout_s', f'{config.reward_timeout_s}s cannot fit one sandbox run '
                      f'of a code reward (its wall limit is 2 x sandbox.time_limit_s + 1 = '
                      f'{one_run}s); a reward call runs every test of its example')


def _check_verifier(config: ConfigDict) -> None:
  """The task decides which correctness rewards can score it."""
  fits = VERIFIERS[config.task]
  named = [n for n in config.rewards if n in CORRECTNESS]
  wrong = [n for n in named if n not in fits]
  if wrong:
    raise ConfigError(f'rewards.{wrong[0]}', f'cannot score task {config.task!r}; '
                      f'use one of {fits}')
  if len(named) > 1:
    raise ConfigError('rewards', f'one correctness reward at a time, got {named}')


def validate_for_mesh(config: ConfigDict, mesh) -> None:
  """Checks that need the device count: prompts and completions are sharded
  over the batch axes ('data', 'fsdp')."""
  batch_shards = mesh.shape['data'] * mesh.shape['fsdp']
  rl = config.rl
  if rl.prompts_per_step % batch_shards:
    raise ConfigError('rl.prompts_per_step', f'{rl.prompts_per_step} prompts do not split '
                      f'over data x fsdp = {batch_shards} devices')
  if (rl.prompts_per_step // rl.rollout_chunks) % batch_shards:
    raise ConfigError('rl.rollout_chunks', f'a chunk of {rl.prompts_per_step // rl.rollout_chunks}'
                      f' prompts does not split over data x fsdp = {batch_shards} devices')
  if rl.pack and rl.pack_rows % batch_shards:
    raise ConfigError('rl.pack_rows', f'{rl.pack_rows} rows do not split over data x fsdp = '
                      f'{batch_shards} devices')
  if rl.decode_slots % batch_shards:
    raise ConfigError('rl.decode_slots', f'{rl.decode_slots} slots do not split over data x '
                      f'fsdp = {batch_shards} devices')
  if 'eval' in config and config.eval.batch_size % batch_shards:
    raise ConfigError('eval.batch_size', f'{config.eval.batch_size} questions do not split '
                      f'over data x fsdp = {batch_shards} devices (evaluation is sharded '
                      'like the rollout)')


def parse_flags(argv: list[str],
                example: str = 'python -m r1jax.launch --config=configs/zero.py',
                needs_config: bool = True) -> list[str]:
  """absl flag parsing with errors a user can act on, for every command
  (app.run's flags_parser), each one FATAL line: a missing --config or config
  file, a bad `:arg` of the config file (ml_collections wraps the config's
  own ValueError in a traceback), an override of a key the config does not
  have (config_flags raises a bare AttributeError or KeyError), a bad flag
  value, and a stray argument (`config.steps=5` without its dashes would
  otherwise be ignored). A bug inside a config file keeps its traceback."""
  try:
    rest = flags.FLAGS(argv)
    config = flags.FLAGS.config if needs_config else None
    if config is not None:
      _ = 'workdir' in config  # a config file that failed to load raises on use
  except (AttributeError, KeyError) as e:
    # ml_collections' message: the quoted key, then for a near miss a line
    # with its suggestion (an AttributeError wraps the KeyError).
    inner = e
    while inner.args and isinstance(inner.args[0], BaseException):
      inner = inner.args[0]
    first, _, hint = str(inner.args[0] if inner.args else inner).partition('\n')
    bad = first.strip('"\'')
    arg = next((a for a in argv if a.startswith('--config.')
                and a.partition('=')[0].split('.')[-1] == bad), None)
    if arg is None:  # not an override's: raised inside the config file
      raise
    sys.exit(f'FATAL: {arg.partition("=")[0][2:]}: no such key in the config file; '
             '--config.KEY=VALUE overrides keys the config already has (a typo? a reward the '
             'config does not name goes into the config file)'
             + (f'. {hint.strip()}' if hint.strip() else ''))
  except (flags.Error, OSError, ValueError) as e:
    message = _flag_error(e, argv)
    if message is None:
      raise
    sys.exit(f'FATAL: {message}')
  if needs_config and config is None:
    sys.exit(f'FATAL: --config is required, e.g. {example}')
  if len(rest) > 1:
    sys.exit(f'FATAL: unexpected argument {rest[1]!r}: flags take two dashes, e.g. '
             + ('--config.KEY=VALUE' if needs_config else '--name=value'))
  return rest


def _flag_error(e: BaseException, argv: list[str]) -> str | None:
  """What went wrong in parsing, or None for a bug in a config file (its
  traceback is the message): the config file's own error for a bad `:arg`
  (the one ml_collections' wrapper holds), the file's OSError, else absl's
  message, which names its flag."""
  arg = next((a for a in argv if a.startswith('--config=')), '--config')
  chain = []
  while e is not None and e not in chain:
    chain.append(e)
    e = e.__cause__ or e.__context__
  last_line = lambda x: (str(x).strip().splitlines() or [repr(x)])[-1].strip()  # noqa: E731
  wrappers = [i for i, x in enumerate(chain) if 'Error whilst parsing config file' in str(x)]
  if wrappers:
    inner = chain[min(wrappers[-1] + 1, len(chain) - 1)]
    if isinstance(inner, ValueError) and str(inner).startswith('config'):
      return f'{arg}: {last_line(inner)}'  # rc.parse_arg's or a ConfigError
    if isinstance(inner, FileNotFoundError):
      return f'{arg}: cannot load the config file: {last_line(inner)}'
    return None
  if any(type(x) is OSError or isinstance(x, FileNotFoundError) for x in chain):
    return f'{arg}: cannot load the config file: {last_line(chain[-1])}'
  return str(chain[0]).removeprefix('flag ')


def make_mesh(config, devices=None):
  """The config's mesh (sharding.make_mesh), a size the devices cannot hold
  named as config.mesh."""
  from r1jax import sharding  # pylint: disable=g-import-not-at-top
  try:
    return sharding.make_mesh(**config.mesh, devices=devices)
  except ValueError as e:
    raise ConfigError('mesh', str(e).removeprefix('mesh: ')) from None


def load_data(key: str, task: str, split: str, data_dir: str | None):
  """data.load_split, a missing or unreadable file named as config.<key>."""
  from r1jax.data import load_split  # pylint: disable=g-import-not-at-top
  try:
    return load_split(task, split, data_dir)
  except (OSError, ValueError) as e:
    raise ConfigError(key, str(e)) from None


def check_inputs(config) -> None:
  """What a run reads that validation leaves alone (the AOT tool checks
  pipelines whose earlier stages have not run): a reward model's workdir
  must exist before the policy loads."""
  ckpt = config.get('reward_model', {}).get('ckpt')
  if MODEL_REWARD in config.get('rewards', {}) and ckpt and not epath.Path(ckpt).exists():
    raise ConfigError('reward_model.ckpt', f'{ckpt!r} does not exist (the workdir of '
                      'python -m r1jax.launch --config=configs/rm.py)')

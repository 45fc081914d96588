"""Ahead-of-time check of the compiled GRPO step for a target TPU topology,
from any machine: see the per-device memory (and OOMs) before launching.

  python -m r1jax.tools.aot --config=configs/zero.py:model=qwen2.5-1.5b,paper --topology=v5p-64

The step (rollouts, rewards callback, reference and policy log-probs, update)
is traced on abstract values (nothing is allocated, no checkpoint is read),
lowered for TPU on the config's mesh over the topology's devices, and
compiled by the TPU compiler (`pip install -e '.[tpu]'`: libtpu compiles for
a topology without the chips; without it a TPU topology is refused with
that advice). The exit status is 1 when a program does not compile or its
peak exceeds the chip's memory. The evaluation sampler (k
samples of eval.batch_size questions, sharded like the rollout) is compiled
and reported the same way (`eval_*`). `--topology=cpu` uses this machine's
devices instead (what the tests run).

  python -m r1jax.tools.aot --config=configs/eval.py:r1 --config.model.name=qwen2.5-1.5b --topology=v5p-64

checks the evaluation command's sampler instead (configs/eval.py: k samples of
batch_size questions, with its decode slots). An SFT config checks its SFT
step, a reward-model config (configs/rm.py) its Bradley–Terry step, and a
pipeline (configs/r1.py, configs/distill.py) every selected stage
(`--config.stages=rm,rl`), wired as the pipeline wires them; an RL config
with the reward `reward_model` compiles the step with the reward model's
forward in it.

  python -m r1jax.tools.aot --config=configs/r1.py:model=qwen2.5-7b,paper --config.stages=rm,rl --topology=v5p-128
"""
import dataclasses
import json
import math
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from r1jax import config as rc, evaluate, models, sharding as shd, train_step as ts
from r1jax import workdir as wd
from r1jax.rollout import SamplingConfig

# name -> (libtpu topology prefix, chips per core-count unit, HBM GiB per chip,
# chips per host). v4/v5p slice names count TensorCores (2 per chip).
_TPUS = {'v4': ('v4', 2, 32, 4), 'v5p': ('v5p', 2, 95, 4), 'v5e': ('v5e', 1, 16, 4),
         'v5litepod': ('v5e', 1, 16, 4), 'v6e': ('v6e', 1, 32, 4)}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str
  chips: int
  shape: tuple[int, ...]  # chips per dimension
  hbm_gib: float
  libtpu_name: str


class TopologyError(ValueError):
  """A --topology this tool cannot build."""


def parse_topology(name: str) -> Topology:
  """'v5p-64' → 32 chips in a 2x4x4 cube; 'v5e-16' → 16 chips in 4x4."""
  m = re.fullmatch(r'(v4|v5p|v5e|v5litepod|v6e)-(\d+)', name)
  if not m:
    raise TopologyError(f'--topology: expected e.g. v5p-64 or v5e-16, got {name!r}')
  kind, count = m.group(1), int(m.group(2))
  prefix, per_chip, hbm, _ = _TPUS[kind]
  chips = count // per_chip
  if chips < 1 or chips * per_chip != count or chips & (chips - 1):
    raise TopologyError(f'--topology: {name!r} is not a power-of-two slice')
  dims = 3 if prefix in ('v4', 'v5p') else 2
  shape = [1] * dims
  for i in range(int(math.log2(chips))):  # grow the smallest dimension first
    shape[sorted(range(dims), key=lambda d: (shape[d], -d))[0]] *= 2
  shape = tuple(sorted(shape, key=lambda d: (d == 1, d)))  # libtpu: 2x2x1, 2x4x4
  return Topology(name, chips, shape, hbm, f'{prefix}:{"x".join(map(str, shape))}')


def topology_devices(topology: Topology) -> list:
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(platform='tpu', topology_name=topology.libtpu_name)
  except RuntimeError as e:
    if 'TPU support not installed' not in str(e):
      raise
    raise SystemExit(f'[aot] a TPU topology ({topology.libtpu_name}) needs the TPU compiler: '
                     "pip install -e '.[tpu]' (libtpu compiles for a topology without the "
                     'chips), or --topology=cpu for this machine\'s devices') from e
  return list(desc.devices)


def model_config(config) -> models.ModelConfig:
  """The policy's shape: the checkpoint's config.json, or the preset; with
  config.lora's adapters."""
  kw = dict(param_dtype=config.model.param_dtype, dtype=config.model.dtype,
            remat=config.model.remat, attention=config.model.attention,
            mlp_chunk=config.model.mlp_chunk)
  ckpt_config = os.path.join(wd.model_dir(rc.model_ckpt(config)), 'config.json')
  if rc.model_ckpt(config) and os.path.exists(ckpt_config):
    # The checkpoint's own shape (its config.json; no weights are read): a
    # HF directory, an r1jax workdir or step, or the shipped tiny base.
    with open(ckpt_config) as f:
      cfg = models.config_from_hf(json.load(f), **kw)
  else:
    cfg = models.get_preset(config.model.name, **kw)
  lo = config.get('lora')
  if lo is not None and lo.rank:
    cfg = cfg.replace(lora_rank=lo.rank, lora_alpha=float(lo.alpha),
                      lora_targets=tuple(t.strip() for t in lo.targets.split(',')))
  return cfg


def abstract_params(cfg: models.ModelConfig, mesh):
  """(graphdef, trained params, frozen base or None) as sharded
  ShapeDtypeStructs: LoRA trains the adapters, the base is an argument."""
  abstract = nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0)))
  graphdef = nnx.graphdef(abstract)
  sharded = lambda tree: jax.tree.map(  # noqa: E731
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
      shd.state_shardings(tree, mesh, shd.TRAIN_RULES))
  if cfg.lora_rank:
    params, frozen = (sharded(x) for x in nnx.state(abstract, nnx.LoRAParam, ...))
    return graphdef, params, frozen
  return graphdef, sharded(nnx.state(abstract)), None


def abstract_opt_state(optimizer, params, mesh):
  """The optimizer state's ShapeDtypeStructs: moments follow their
  parameters (optax nests a params-shaped tree in its state, so a leaf whose
  key path ends with a parameter's path, and has its shape, takes its
  sharding); counters are replicated."""
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  by_path = {jax.tree_util.keystr(k): x for k, x in jax.tree_util.tree_leaves_with_path(params)}

  def like_param(path, x):
    key = jax.tree_util.keystr(path)
    for suffix, p in by_path.items():
      if key.endswith(suffix) and p.shape == x.shape:
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=p.sharding)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep)
  return jax.tree_util.tree_map_with_path(like_param, jax.eval_shape(optimizer.init, params))


def abstract_state(config, mesh):
  """ShapeDtypeStructs (with shardings) of the train state, graphdef, step config."""
  cfg = model_config(config)
  step_cfg = ts.step_config(config, eos_ids=cfg.eos_ids, pad_id=0)
  optimizer = ts.make_optimizer(config.optim, config.steps * ts.updates_per_step(config))
  graphdef, params, frozen = abstract_params(cfg, mesh)
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_state = abstract_opt_state(optimizer, params, mesh)
  state = ts.TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), params=params,
      opt_state=opt_state, ref_params=params if step_cfg.loss.beta > 0 else None,
      rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep))
  return state, graphdef, step_cfg, optimizer, frozen


def abstract_rm_params(cfg: models.ModelConfig, mesh):
  """(graphdef, {'backbone', 'head'}) of a reward model as sharded
  ShapeDtypeStructs (reward_model.init_params' tree)."""
  graphdef, params, _ = abstract_params(cfg.replace(lora_rank=0), mesh)
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  head = {'w': jax.ShapeDtypeStruct((cfg.hidden_size,), jnp.float32, sharding=rep),
          'b': jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)}
  return graphdef, {'backbone': params, 'head': head}


def _reward_model_config(config, policy_cfg: models.ModelConfig) -> models.ModelConfig:
  """The RL step's reward model's shape: its workdir's model/config.json,
  else (a pipeline's stage not trained yet: R1's reward model is trained
  from the base) the policy's."""
  path = os.path.join(config.reward_model.ckpt, wd.MODEL, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      return models.config_from_hf(json.load(f), param_dtype=config.model.param_dtype,
                                   dtype=config.model.dtype, remat=config.model.remat,
                                   attention=config.model.attention)
  return policy_cfg.replace(lora_rank=0)


def _reward_model_view(config, default: tuple[bool, int]) -> tuple[bool, int]:
  """(summary_only, the summary length scored; 0: whole responses) of the RL
  step's reward model, as reward_model.load reads them: its workdir's
  reward_model.json, else `default` (the recipe's rm stage, or configs/rm.py's
  summary-only 2,048 for named models)."""
  from r1jax import reward_model as rm_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(config.reward_model.ckpt, rm_lib.INFO)
  if not os.path.exists(path):
    return default
  with open(path) as f:
    info = json.load(f)
  return _view(info['summary_only'], info['max_response_len'])


def _view(summary_only, max_response_len) -> tuple[bool, int]:
  """reward_model.load's rule: a summary-only model's summaries are cut to
  the length it was trained on; a whole-response model's rows are not cut."""
  return bool(summary_only), int(max_response_len) if summary_only else 0


def check(config, devices, rm_view: tuple[bool, int] = (True, 2048)) -> dict:
  """Lowers (and compiles where possible) the train step; returns a report.
  With the reward `reward_model`, the step holds the reward model's forward
  on the general prompts' responses, its parameters an argument."""
  from r1jax import reward_model as rm_lib  # pylint: disable=g-import-not-at-top
  rc.validate(config)
  mesh = rc.make_mesh(config, devices)
  rc.validate_for_mesh(config, mesh)
  state, graphdef, step_cfg, optimizer, frozen = abstract_state(config, mesh)
  R = len(step_cfg.reward_names) + step_cfg.reward_model  # + which prompts the RM scores
  reward_fn = ts.make_reward_fn(lambda tokens, mask, ids: np.zeros((len(tokens), R), np.float32),
                                mesh, R)
  rm, rm_args = None, ()
  if step_cfg.reward_model:
    rm_graphdef, rm_params = abstract_rm_params(
        _reward_model_config(config, model_config(config)), mesh)
    summary_only, max_len = _reward_model_view(config, rm_view)
    rm = rm_lib.Loaded(rm_graphdef, rm_params, summary_only=summary_only,
                       think_end_id=1 if summary_only else None, max_len=max_len)
    rm_args = (rm_params,)
  step = ts.make_train_step(graphdef, step_cfg, optimizer, reward_fn, mesh,
                            ts.shardings_of(state), reward_model=rm)
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.BATCH_AXES))
  B = config.rl.prompts_per_step * config.rl.dynamic_sampling_attempts
  P = config.rl.max_prompt_len
  batch = ts.Batch(jax.ShapeDtypeStruct((B, P), jnp.int32, sharding=rows),
                   jax.ShapeDtypeStruct((B, P), jnp.bool_, sharding=rows),
                   jax.ShapeDtypeStruct((B,), jnp.int32, sharding=rows))
  t0 = time.time()
  lowered = step.trace(state, batch, *rm_args, *(() if frozen is None else (frozen,))).lower()
  report = {'devices': len(devices), 'mesh': dict(mesh.shape),
            'lower_seconds': round(time.time() - t0, 1),
            'state_gib_per_device': _bytes_per_device(state) / 2**30}
  if frozen is not None:
    report['frozen_base_gib_per_device'] = _bytes_per_device(frozen) / 2**30
  if rm is not None:
    report['reward_model_gib_per_device'] = _bytes_per_device(rm.params) / 2**30
    report['reward_model_summary_tokens'] = rm.max_len
  policy = state.params if frozen is None else nnx.merge_state(frozen, state.params)
  # The evaluation sampler (R1's protocol: k samples of eval.batch_size
  # questions), sharded over the batch axes like the rollout.
  e = config.eval
  sampler = evaluate.make_sampler(graphdef, SamplingConfig(
      max_new_tokens=config.rl.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
      eos_ids=step_cfg.sampling.eos_ids), e.k, mesh)
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  t0 = time.time()
  eval_lowered = sampler.jitted.trace(
      policy, jax.ShapeDtypeStruct((e.batch_size, P), jnp.int32, sharding=rows),
      jax.ShapeDtypeStruct((e.batch_size, P), jnp.bool_, sharding=rows),
      jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep),
      jax.ShapeDtypeStruct((e.batch_size * e.k,), jnp.int32, sharding=rows)).lower()
  report['eval_lower_seconds'] = round(time.time() - t0, 1)
  report.update(_compile(lowered))
  report.update({f'eval_{k}': v for k, v in _compile(eval_lowered).items()})
  return report


def check_sft(config, devices) -> dict:
  """The SFT step (configs/sft.py, LoRA or full): sft.batch_size packed rows
  of sft.max_len - 1 slots in grad_accum micro-batches, sharded over the
  batch axes; the model's shape as the GRPO check reads it."""
  from r1jax import sft  # pylint: disable=g-import-not-at-top
  rc.validate(config)
  sft.validate(config)
  mesh = rc.make_mesh(config, devices)
  sft.validate_for_mesh(config, mesh)
  cfg = model_config(config)
  s = config.sft
  optimizer = ts.make_optimizer(config.optim, max(config.steps, 1))
  graphdef, params, frozen = abstract_params(cfg, mesh)
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = sft.SFTState(jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), params,
                       abstract_opt_state(optimizer, params, mesh))
  lora = frozen is not None
  step = sft.make_train_step(graphdef, optimizer, s.grad_accum, mesh, ts.shardings_of(state),
                             lora=lora, lora_dropout=float(config.lora.dropout) if lora else 0.0,
                             seed=config.seed)
  rows_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.BATCH_AXES))
  shape = (s.batch_size, s.max_len - 1)
  rows = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == 'weights' else jnp.int32,
                                  sharding=rows_sharding) for k in sft.PackedRows._fields}
  t0 = time.time()
  lowered = step.trace(state, rows, *((frozen,) if lora else ())).lower()
  report = {'devices': len(devices), 'mesh': dict(mesh.shape),
            'lower_seconds': round(time.time() - t0, 1),
            'state_gib_per_device': _bytes_per_device(state) / 2**30}
  if lora:
    report['frozen_base_gib_per_device'] = _bytes_per_device(frozen) / 2**30
  report.update(_compile(lowered))
  return report


def check_rm(config, devices) -> dict:
  """The reward model's step (configs/rm.py): rm.batch_size preference
  pairs (prompt of rm.max_prompt_len, chosen and rejected of
  rm.max_response_len) in grad_accum micro-batches, sharded over the batch
  axes; the backbone's shape as the GRPO check reads the policy's."""
  from r1jax import reward_model as rm_lib  # pylint: disable=g-import-not-at-top
  rc.validate(config)
  mesh = rc.make_mesh(config, devices)
  rm_lib.validate(config, mesh)
  r = config.rm
  graphdef, params = abstract_rm_params(model_config(config), mesh)
  optimizer = ts.make_optimizer(config.optim, max(config.steps, 1))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = rm_lib.RMState(jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), params,
                         abstract_opt_state(optimizer, params, mesh))
  step = rm_lib.make_train_step(graphdef, optimizer, r.grad_accum, mesh, ts.shardings_of(state))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.BATCH_AXES))
  B, P, T = r.batch_size, r.max_prompt_len, r.max_response_len
  pairs = {'prompt': jax.ShapeDtypeStruct((B, P), jnp.int32, sharding=rows),
           'prompt_mask': jax.ShapeDtypeStruct((B, P), jnp.bool_, sharding=rows),
           'tokens': jax.ShapeDtypeStruct((B, 2, T), jnp.int32, sharding=rows),
           'mask': jax.ShapeDtypeStruct((B, 2, T), jnp.bool_, sharding=rows)}
  t0 = time.time()
  lowered = step.trace(state, pairs).lower()
  report = {'devices': len(devices), 'mesh': dict(mesh.shape),
            'lower_seconds': round(time.time() - t0, 1),
            'state_gib_per_device': _bytes_per_device(state) / 2**30}
  report.update(_compile(lowered))
  return report


def _stage_rm_view(config) -> tuple[bool, int]:
  """How a pipeline's rm stage, not trained yet, will feed its model."""
  if 'rm' not in config:
    return True, 2048
  return _view(config.rm.rm.summary_only, config.rm.rm.max_response_len)


def stage_config(config, stage: str, placeholder: str):
  """A pipeline stage's config as check_pipeline compiles it: wired as the
  pipeline wires it; with no base given (`placeholder`), a model read from
  the placeholder is the preset of the stage it comes from."""
  from r1jax import pipeline  # pylint: disable=g-import-not-at-top
  c = pipeline.wired(config, stage, placeholder=True)
  if not placeholder:
    return c
  if c.get('model', {}).get('ckpt') == placeholder:
    c.model.ckpt = ''  # only shapes are read: the preset's
  if c.get('ckpt') == placeholder:  # rejection sampling reads its model from `ckpt`
    source = next(src for st, key, src in config.pipeline.inputs if st == stage and key == 'ckpt')
    names = [config[s].model.name for s in (source, *config.pipeline.order)
             if s in config and config[s].get('model', {}).get('name')]
    c.ckpt = ''
    c.model.name = names[0]
  return c


def check_pipeline(config, devices) -> dict:
  """Every selected stage of a pipeline config (configs/r1.py,
  configs/distill.py) with its inputs wired as the pipeline would, stages
  not run yet standing in by their shapes (the base's, or the preset's);
  rejection sampling is checked as its sampler. Keys: '<stage>.<key>'."""
  report = {}
  for stage, c in _stage_configs(config):
    print(f'[aot] stage {stage} ({config.pipeline.kinds[stage]})', flush=True)
    try:
      part = dispatch(c, devices, rm_view=_stage_rm_view(config))
    except rc.ConfigError as e:
      raise e.within(stage) from None
    report.update({f'{stage}.{k}': v for k, v in part.items()})
  return report


def _stage_configs(config):
  """(stage, its config) of each selected stage, wired as stage_config
  does, with the preset standing in for a base the config does not give."""
  from r1jax import pipeline  # pylint: disable=g-import-not-at-top
  config = rc.ConfigDict(config.to_dict())
  placeholder = '' if config.pipeline.base else 'aot: the preset'
  config.pipeline.base = config.pipeline.base or placeholder
  for stage in pipeline.stage_names(config):
    yield stage, stage_config(config, stage, placeholder)


def validate(config) -> None:
  """The checks `dispatch` runs before compiling, of every stage of a
  pipeline first: a bad key of its last stage is not found after its first
  has compiled."""
  if 'pipeline' in config:
    for stage, c in _stage_configs(config):
      try:
        validate(c)
      except rc.ConfigError as e:
        raise e.within(stage) from None
  elif 'benchmarks' in config:
    from r1jax import eval_command  # pylint: disable=g-import-not-at-top
    eval_command.validate(config)
    name = config.model.get('name')
    if name and name not in models.PRESETS:
      raise rc.ConfigError('model.name', f'unknown preset {name!r}; known: '
                           f'{sorted(models.PRESETS)}')
  else:
    rc.validate(config)
    if 'sft' in config:
      from r1jax import sft  # pylint: disable=g-import-not-at-top
      sft.validate(config)


def dispatch(config, devices, rm_view: tuple[bool, int] = (True, 2048)) -> dict:
  """The check a config's kind needs."""
  if 'pipeline' in config:
    return check_pipeline(config, devices)
  if 'benchmarks' in config:  # configs/eval.py, configs/rejection.py: the sampler
    return check_eval(config, devices)
  if 'sft' in config:
    return check_sft(config, devices)
  if 'rm' in config:
    return check_rm(config, devices)
  return check(config, devices, rm_view)


def check_eval(config, devices) -> dict:
  """The evaluation command's sampler (configs/eval.py): k samples of each
  of batch_size questions, prompts of max_prompt_len tokens (512 when 0),
  sharded over the batch axes; the model's shape from the checkpoint's
  config.json, or the preset `model.name` (no weights are read)."""
  from r1jax import eval_command  # pylint: disable=g-import-not-at-top
  eval_command.validate(config)
  mesh = rc.make_mesh(config, devices)
  kw = dict(param_dtype=config.model.param_dtype, dtype=config.model.dtype,
            attention=config.model.attention)
  ckpt_config = os.path.join(wd.model_dir(config.ckpt), 'config.json') if config.ckpt else ''
  if config.model.get('name'):
    try:
      cfg = models.get_preset(config.model.name, **kw)
    except ValueError as e:
      raise rc.ConfigError('model.name', str(e).removeprefix('model: ')) from None
  elif ckpt_config and os.path.exists(ckpt_config):
    with open(ckpt_config) as f:
      cfg = models.config_from_hf(json.load(f), **kw)
  else:
    raise rc.ConfigError('model.name', 'a preset (e.g. qwen2.5-1.5b) or a ckpt with config.json')
  abstract = nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(abstract)
  shardings = shd.state_shardings(params, mesh, shd.SAMPLE_RULES)
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        params, shardings)
  sampler = evaluate.make_sampler(graphdef, SamplingConfig(
      max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
      eos_ids=cfg.eos_ids), config.k, mesh, slots=config.decode_slots)
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(evaluate.BATCH_AXES))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  B, P = config.batch_size, config.max_prompt_len or 512
  t0 = time.time()
  lowered = sampler.jitted.trace(
      params, jax.ShapeDtypeStruct((B, P), jnp.int32, sharding=rows),
      jax.ShapeDtypeStruct((B, P), jnp.bool_, sharding=rows),
      jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep),
      jax.ShapeDtypeStruct((B * config.k,), jnp.int32, sharding=rows)).lower()
  report = {'devices': len(devices), 'mesh': dict(mesh.shape),
            'eval_lower_seconds': round(time.time() - t0, 1),
            'params_gib_per_device': _bytes_per_device(params) / 2**30}
  report.update({f'eval_{k}': v for k, v in _compile(lowered).items()})
  return report


def _compile(lowered) -> dict:
  try:
    t0 = time.time()
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    return {'compiled': False, 'compile_error': f'{type(e).__name__}: {str(e)[:500]}'}
  report = {'compiled': True, 'compile_seconds': round(time.time() - t0, 1)}
  mem = compiled.memory_analysis()
  if mem is not None:
    gib = lambda b: b / 2**30  # noqa: E731
    report.update(
        argument_gib=gib(mem.argument_size_in_bytes), output_gib=gib(mem.output_size_in_bytes),
        alias_gib=gib(mem.alias_size_in_bytes), temp_gib=gib(mem.temp_size_in_bytes),
        peak_gib=gib(mem.argument_size_in_bytes + mem.output_size_in_bytes
                     - mem.alias_size_in_bytes + mem.temp_size_in_bytes))
  return report


def _bytes_per_device(tree) -> float:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.sharding.shard_shape(x.shape)
    total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
  return total


def main(argv):
  del argv
  config = flags.FLAGS.config
  name = flags.FLAGS.topology
  try:  # a bad config or topology: one FATAL line, before any compile
    validate(config)
    if name == 'cpu':
      devices, hbm = jax.devices(), None
    else:
      topology = parse_topology(name)
      devices, hbm = topology_devices(topology), topology.hbm_gib
      print(f'[aot] {name}: {topology.chips} chips ({topology.libtpu_name}), '
            f'{topology.hbm_gib} GiB HBM each')
    report = dispatch(config, devices)
  except (rc.ConfigError, models.CheckpointError, TopologyError) as e:
    print(f'FATAL: {e}', file=sys.stderr, flush=True)
    return 1
  for k, v in report.items():
    print(f'[aot] {k}: {v:.2f}' if isinstance(v, float) else f'[aot] {k}: {v}')
  lines, ok = verdicts(report, hbm)
  for line in lines:
    print(f'[aot] {line}')
  return 0 if ok else 1


def verdicts(report: dict, hbm: float | None) -> tuple[list[str], bool]:
  """One line per compiled program (fits or not in `hbm` GiB a device), and
  whether all fit and compiled: the tool's exit status is 1 otherwise, so
  that a script or CI can gate a launch on it."""
  lines, ok = [], True
  for key, value in report.items():
    stage, _, name = key.rpartition('.')
    where = stage + ' ' if stage else ''
    what = 'evaluation sampler' if name.startswith('eval_') else 'step'
    if name.endswith('compiled') and value is False:
      ok = False
      lines.append(f'{where}{what}: DID NOT COMPILE')
    if hbm is not None and name.endswith('peak_gib'):
      fits = value <= hbm
      ok &= fits
      lines.append(f'{where}{what}: peak {value:.2f} GiB per device of {hbm} GiB: '
                   f'{"fits" if fits else "DOES NOT FIT (OOM)"}')
  return lines, ok


if __name__ == '__main__':
  # Flags only when run as a program (r1jax.launch defines its own --config).
  config_flags.DEFINE_config_file('config', None, 'a configs/*.py file', lock_config=False)
  flags.DEFINE_string('topology', 'v5p-64', "e.g. v5p-64, v5e-256, v6e-16, v4-32, or 'cpu'")
  app.run(main, flags_parser=lambda argv: rc.parse_flags(
      argv, 'python -m r1jax.tools.aot --config=configs/zero.py --topology=v5p-64'))

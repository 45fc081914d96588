"""LoRA adapters on the decoder (Hu et al. 2021): what is trained, what is
frozen, and what is exported.

  y = W x + (alpha / r) · B A x      A [in, r] ~ U(±1/sqrt(in)), B [r, out] = 0

The adapters are `nnx.LoRAParam` variables of `Layers` (`<target>_lora_a`,
`<target>_lora_b`, stacked over layers like the base weights, with the base
weight's logical axes on their input / output sides so they shard alike);
decoder.py adds their product in the projections. Flax's `nnx.LoRA` wraps
an `nnx.Linear` call, which the decoder does not have (its layers are
stacked einsums under `lax.scan`), so the adapters are plain variables of
Flax's LoRA type and the filters below split them from the base.

  split(model)         -> graphdef, adapters, base  (adapters: nnx.LoRAParam)
  merge(graphdef, adapters, base) -> the model
  disabled(adapters)   -> the same tree with every B zero: the base model
                          exactly (the reference policy, with no copy)
  merged(model)        -> a plain decoder with W + (alpha/r) A B folded in
  save_peft(model, dir)-> adapter_config.json + adapter_model.safetensors in
                          the PEFT layout (PEFT and vLLM load it)
  load_peft(model, dir)-> the model with a PEFT adapter directory's adapters
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax import sharding as shd
from r1jax.models.config import ModelConfig
from r1jax.models.decoder import Decoder

# PEFT's names of the targets (HF module names).
PEFT_MODULES = {'q': 'self_attn.q_proj', 'k': 'self_attn.k_proj', 'v': 'self_attn.v_proj',
                'o': 'self_attn.o_proj', 'gate': 'mlp.gate_proj', 'up': 'mlp.up_proj',
                'down': 'mlp.down_proj'}
_BASE = {'q': 'q_proj', 'k': 'k_proj', 'v': 'v_proj', 'o': 'o_proj', 'gate': 'gate_proj',
         'up': 'up_proj', 'down': 'down_proj'}


def add(model: Decoder, rank: int, alpha: float, targets: tuple[str, ...], seed: int = 0,
        mesh: jax.sharding.Mesh | None = None) -> Decoder:
  """`model` with fresh adapters (B = 0: the same function), each created in
  its sharding when a mesh is given."""
  cfg = model.cfg.replace(lora_rank=rank, lora_alpha=float(alpha), lora_targets=tuple(targets))
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(seed)))
  graphdef, abs_adapters, _ = nnx.split(abstract, nnx.LoRAParam, ...)
  # Jitted, so XLA drops the base weights this draws along (only the
  # adapters are returned).
  make = lambda: nnx.state(Decoder(cfg, rngs=nnx.Rngs(seed)), nnx.LoRAParam)  # noqa: E731
  make = jax.jit(make, out_shardings=None if mesh is None else shd.state_shardings(
      abs_adapters, mesh, shd.TRAIN_RULES))
  return nnx.merge(graphdef, make(), _fresh(nnx.state(model)))


def _fresh(state):
  """New variables over the same arrays: merging a state reuses its
  variable objects, and a model built from another must not write into it."""
  return jax.tree.map(lambda x: x, state)


def split(model: Decoder):
  """(graphdef, adapters, base): the trainable and the frozen state."""
  return nnx.split(model, nnx.LoRAParam, ...)


def disabled(adapters):
  """The adapters with every B set to zero: the model computes exactly the
  base's function (x·A·0 = 0)."""
  def zero(path, x):
    return jnp.zeros_like(x) if '_lora_b' in jax.tree_util.keystr(path) else x
  return jax.tree_util.tree_map_with_path(zero, adapters)


def _pairs(model: Decoder):
  layers, cfg = model.layers, model.cfg
  for t in cfg.lora_targets:
    yield t, getattr(layers, f'{t}_lora_a').get_value(), getattr(layers, f'{t}_lora_b').get_value()


def merged(model: Decoder) -> Decoder:
  """A plain decoder (no adapters) whose weights are W + (alpha/r)·A·B."""
  cfg = model.cfg
  plain = cfg.replace(lora_rank=0, lora_targets=())
  _, _, base = split(model)
  out = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Decoder(plain, rngs=nnx.Rngs(0)))),
                  _fresh(base))
  for t, a, b in _pairs(model):
    w = getattr(out.layers, _BASE[t])
    L, r = a.shape[0], a.shape[-1]
    delta = cfg.lora_scale * jnp.einsum('lir,lro->lio', a.reshape(L, -1, r).astype(jnp.float32),
                                        b.reshape(L, r, -1).astype(jnp.float32))
    w.set_value((w.get_value().astype(jnp.float32) + delta.reshape(w.get_value().shape))
                .astype(w.get_value().dtype))
  return out


def peft_tensors(model: Decoder) -> dict[str, np.ndarray]:
  """PEFT's tensors: base_model.model.model.layers.{i}.<module>.lora_A.weight
  [r, in] and .lora_B.weight [out, r] (torch Linear layout: out × in)."""
  out = {}
  for t, a, b in _pairs(model):
    a, b = np.asarray(jax.device_get(a), np.float32), np.asarray(jax.device_get(b), np.float32)
    L, r = a.shape[0], a.shape[-1]
    a, b = a.reshape(L, -1, r), b.reshape(L, r, -1)
    for i in range(L):
      name = f'base_model.model.model.layers.{i}.{PEFT_MODULES[t]}'
      out[f'{name}.lora_A.weight'] = np.ascontiguousarray(a[i].T)
      out[f'{name}.lora_B.weight'] = np.ascontiguousarray(b[i].T)
  return out


def peft_config(cfg: ModelConfig, base_model: str = '') -> dict:
  return {'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': cfg.lora_rank,
          'lora_alpha': cfg.lora_alpha, 'lora_dropout': 0.0, 'bias': 'none',
          'target_modules': sorted(PEFT_MODULES[t].split('.')[-1] for t in cfg.lora_targets),
          'fan_in_fan_out': False, 'use_rslora': False, 'inference_mode': True,
          'base_model_name_or_path': base_model}


def save_peft(model: Decoder, path: str, base_model: str = '') -> None:
  """adapter_config.json + adapter_model.safetensors (PEFT's layout)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  save_file(peft_tensors(model), os.path.join(path, 'adapter_model.safetensors'),
            metadata={'format': 'pt'})
  with open(os.path.join(path, 'adapter_config.json'), 'w') as f:
    json.dump(peft_config(model.cfg, base_model), f, indent=2)


def load_peft(model: Decoder, path: str, mesh: jax.sharding.Mesh | None = None) -> Decoder:
  """`model` (plain) with the adapters of a PEFT LoRA directory."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  with open(os.path.join(path, 'adapter_config.json')) as f:
    c = json.load(f)
  by_module = {v.split('.')[-1]: k for k, v in PEFT_MODULES.items()}
  modules = c['target_modules']
  modules = [modules] if isinstance(modules, str) else modules
  unknown = [m for m in modules if m not in by_module]
  extras = [k for k in ('use_rslora', 'use_dora', 'alpha_pattern', 'rank_pattern', 'lora_bias',
                         'fan_in_fan_out', 'layers_to_transform', 'modules_to_save',
                         'layer_replication') if c.get(k)]
  if c.get('bias', 'none') != 'none':
    extras.append('bias')
  if c.get('peft_type') != 'LORA' or unknown or extras or isinstance(c['target_modules'], str):
    raise ValueError(f'{path}: only plain LoRA on a list of {sorted(by_module)} is supported '
                     f'(peft_type {c.get("peft_type")}, modules {unknown or modules}, '
                     f'options {extras})')
  targets = tuple(t for t in PEFT_MODULES if PEFT_MODULES[t].split('.')[-1] in modules)
  out = add(model, int(c['r']), float(c['lora_alpha']), targets, mesh=mesh)
  tensors = load_file(os.path.join(path, 'adapter_model.safetensors'))
  L = out.cfg.num_layers
  for t in targets:
    for side, key in (('a', 'lora_A'), ('b', 'lora_B')):
      var = getattr(out.layers, f'{t}_lora_{side}')
      shape = var.get_value().shape
      stack = np.stack([tensors[f'base_model.model.model.layers.{i}.{PEFT_MODULES[t]}.'
                                f'{key}.weight'].T for i in range(L)])
      value = jnp.asarray(stack.reshape(shape), var.get_value().dtype)
      sharding = getattr(var.get_value(), 'sharding', None)
      var.set_value(jax.device_put(value, sharding) if sharding is not None else value)
  return out

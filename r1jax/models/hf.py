"""Hugging Face checkpoint import/export (config.json + safetensors).

Loading is tensor by tensor: every parameter is built with
`jax.make_array_from_callback`, whose callback reads from the safetensors files
only the layers (and, through the layout transform, the slice) that a device
shard needs. Host memory holds at most one stacked parameter at a time — never
two copies of the model — and on a multi-host mesh each host reads only its own
shards.

HF stores Linear weights as [out, in]; r1jax as [in, ...out] with heads split
out (q_proj [D, N, H], o_proj [N, H, D]) so the logical axes can be sharded.
"""
import json
import os
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from r1jax import sharding as shd
from r1jax.models.config import ModelConfig
from r1jax.models.decoder import Decoder

_ARCHS = {'qwen2': 'Qwen2ForCausalLM', 'qwen3': 'Qwen3ForCausalLM', 'llama': 'LlamaForCausalLM'}
# Tensors some checkpoints carry that hold no parameters.
_IGNORED = re.compile(r'.*rotary_emb\.inv_freq$')


class CheckpointError(ValueError):
  """A checkpoint that does not match the architecture; names the tensor."""


# --------------------------------------------------------------------------
# config.json <-> ModelConfig


def _refuse_sliding_window(hf: dict[str, Any]) -> None:
  """The decoder attends over the whole context. A config whose layers use
  sliding-window attention (Qwen2's use_sliding_window: layers from
  max_window_layers on; or an explicit layer_types list) would load and give
  different logits past the window, so it is refused."""
  if not hf.get('use_sliding_window'):
    return  # transformers then drops the window whatever layer_types says
  layers = hf.get('num_hidden_layers', 0)
  types = hf.get('layer_types')
  if types is None:
    first = hf.get('max_window_layers', 28)  # transformers' default
    types = ['sliding_attention' if i >= first else 'full_attention' for i in range(layers)]
  sliding = [i for i, t in enumerate(types or []) if t == 'sliding_attention']
  window = hf.get('sliding_window')
  if sliding and window is not None and window < hf.get('max_position_embeddings', 1 << 62):
    raise CheckpointError(
        f'config.json: sliding-window attention (sliding_window={window}) in layers '
        f'{sliding[:4]}{"..." if len(sliding) > 4 else ""} is not supported: r1jax attends '
        'over the full context, so logits would differ from transformers past the window')


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
  model_type = hf.get('model_type')
  if model_type not in _ARCHS:
    raise CheckpointError(
        f'config.json: unsupported model_type {model_type!r} (architectures='
        f'{hf.get("architectures")}); supported: {sorted(_ARCHS)}')
  if hf.get('mlp_bias'):
    raise CheckpointError('config.json: mlp_bias=true is not supported')
  if hf.get('hidden_act', 'silu') != 'silu':
    raise CheckpointError(f'config.json: hidden_act={hf["hidden_act"]!r} is not supported')
  _refuse_sliding_window(hf)
  # transformers<5 writes rope_theta/rope_scaling; >=5 writes rope_parameters.
  rope = dict(hf.get('rope_parameters') or hf.get('rope_scaling') or {})
  theta = hf.get('rope_theta', rope.get('rope_theta', 10_000.0))
  rope_type = rope.get('rope_type', rope.get('type', 'default'))
  if rope_type == 'llama3':
    scaling = tuple((k, float(rope[k])) for k in (
        'factor', 'low_freq_factor', 'high_freq_factor',
        'original_max_position_embeddings'))
  elif rope_type == 'default':
    scaling = None
  else:
    raise CheckpointError(f'config.json: rope type {rope_type!r} is not supported')
  eos = hf.get('eos_token_id')
  n = hf['num_attention_heads']
  fields = dict(
      arch=model_type, vocab_size=hf['vocab_size'],
      hidden_size=hf['hidden_size'], intermediate_size=hf['intermediate_size'],
      num_layers=hf['num_hidden_layers'], num_heads=n,
      num_kv_heads=hf.get('num_key_value_heads', n),
      head_dim=hf.get('head_dim') or hf['hidden_size'] // n,
      rope_theta=float(theta), rope_scaling=scaling,
      rms_norm_eps=hf.get('rms_norm_eps', 1e-6),
      qkv_bias=model_type == 'qwen2' or bool(hf.get('attention_bias')),
      qk_norm=model_type == 'qwen3',
      tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
      max_position_embeddings=hf.get('max_position_embeddings', 4096),
      bos_token_id=hf.get('bos_token_id'),
      eos_token_id=tuple(eos) if isinstance(eos, list) else eos)
  fields.update(overrides)
  return ModelConfig(**fields)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  hf = {
      'architectures': [_ARCHS[cfg.arch]], 'model_type': cfg.arch,
      'vocab_size': cfg.vocab_size, 'hidden_size': cfg.hidden_size,
      'intermediate_size': cfg.intermediate_size,
      'num_hidden_layers': cfg.num_layers,
      'num_attention_heads': cfg.num_heads,
      'num_key_value_heads': cfg.num_kv_heads, 'head_dim': cfg.head_dim,
      'hidden_act': 'silu', 'rms_norm_eps': cfg.rms_norm_eps,
      'rope_theta': cfg.rope_theta,
      'max_position_embeddings': cfg.max_position_embeddings,
      'tie_word_embeddings': cfg.tie_embeddings,
      'torch_dtype': cfg.param_dtype, 'use_cache': True,
      'bos_token_id': cfg.bos_token_id,
      'eos_token_id': list(cfg.eos_token_id)
                      if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id,
  }
  if cfg.rope_scaling:
    hf['rope_scaling'] = dict(cfg.rope_scaling_dict, rope_type='llama3')
  if cfg.arch == 'llama':
    hf.update(attention_bias=cfg.qkv_bias, mlp_bias=False)
  else:
    hf.update(use_sliding_window=False, sliding_window=None)
  if cfg.arch == 'qwen3':
    hf.update(attention_bias=cfg.qkv_bias, max_window_layers=cfg.num_layers)
  return hf


# --------------------------------------------------------------------------
# Parameter name and layout mapping


def _mapping(cfg: ModelConfig) -> dict[str, tuple[str, Callable, Callable]]:
  """r1jax param path -> (HF name, hf->r1jax transform, r1jax->hf transform).

  Names under 'layers/' have '{i}' for the layer index; the transforms act on
  one layer.
  """
  D, N, K, H = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  same = (lambda w: w, lambda w: w)
  heads = lambda n: (lambda w: w.T.reshape(D, n, H),  # noqa: E731
                     lambda w: w.reshape(D, n * H).T)
  bias = lambda n: (lambda w: w.reshape(n, H), lambda w: w.reshape(n * H))  # noqa: E731
  t = (lambda w: w.T, lambda w: w.T)
  pre = 'model.layers.{i}.'
  m = {
      'embed': ('model.embed_tokens.weight', *same),
      'final_norm': ('model.norm.weight', *same),
      'layers/input_norm': (pre + 'input_layernorm.weight', *same),
      'layers/post_attention_norm': (pre + 'post_attention_layernorm.weight', *same),
      'layers/q_proj': (pre + 'self_attn.q_proj.weight', *heads(N)),
      'layers/k_proj': (pre + 'self_attn.k_proj.weight', *heads(K)),
      'layers/v_proj': (pre + 'self_attn.v_proj.weight', *heads(K)),
      'layers/o_proj': (pre + 'self_attn.o_proj.weight',
                        lambda w: w.T.reshape(N, H, D),
                        lambda w: w.reshape(N * H, D).T),
      'layers/gate_proj': (pre + 'mlp.gate_proj.weight', *t),
      'layers/up_proj': (pre + 'mlp.up_proj.weight', *t),
      'layers/down_proj': (pre + 'mlp.down_proj.weight', *t),
  }
  if cfg.qkv_bias:
    m['layers/q_bias'] = (pre + 'self_attn.q_proj.bias', *bias(N))
    m['layers/k_bias'] = (pre + 'self_attn.k_proj.bias', *bias(K))
    m['layers/v_bias'] = (pre + 'self_attn.v_proj.bias', *bias(K))
  if cfg.qk_norm:
    m['layers/q_norm'] = (pre + 'self_attn.q_norm.weight', *same)
    m['layers/k_norm'] = (pre + 'self_attn.k_norm.weight', *same)
  if not cfg.tie_embeddings:
    m['lm_head'] = ('lm_head.weight', *same)
  return m


def _path(key: tuple) -> str:
  return '/'.join(str(k) for k in key)


def _expected_hf_shapes(cfg: ModelConfig, abstract: nnx.State) -> dict[str, tuple]:
  out = {}
  for key, var in nnx.to_flat_state(abstract):
    name, _, to_hf = _mapping(cfg)[_path(key)]
    shape = var.get_value().shape
    if name.count('{i}'):
      one = jax.eval_shape(to_hf, jax.ShapeDtypeStruct(shape[1:], jnp.float32))
      for i in range(cfg.num_layers):
        out[name.format(i=i)] = tuple(one.shape)
    else:
      out[name] = tuple(shape)
  return out


# --------------------------------------------------------------------------
# Loading


def _read_json(file: str) -> dict:
  try:
    with open(file, encoding='utf-8') as f:
      out = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f'{file}: not valid JSON ({e})') from None
  if not isinstance(out, dict):
    raise CheckpointError(f'{file}: expected a JSON object, got {type(out).__name__}')
  return out


def _safe_open(file: str):
  try:
    return safe_open(file, framework='numpy')
  except Exception as e:  # pylint: disable=broad-except  # truncated, not safetensors, ...
    raise CheckpointError(f'{file}: cannot be read as safetensors '
                          f'({type(e).__name__}: {e})') from None


def _index_files(path: str) -> dict[str, str]:
  """HF tensor name -> safetensors file, from the index or the single file."""
  index = os.path.join(path, 'model.safetensors.index.json')
  if os.path.exists(index):
    weight_map = _read_json(index).get('weight_map')
    if not isinstance(weight_map, dict):
      raise CheckpointError(f'{index}: no "weight_map" object')
    return {k: os.path.join(path, v) for k, v in weight_map.items()}
  files = sorted(f for f in os.listdir(path) if f.endswith('.safetensors'))
  if not files:
    raise CheckpointError(f'{path}: no *.safetensors files')
  out = {}
  for fname in files:
    with _safe_open(os.path.join(path, fname)) as f:
      for k in f.keys():
        if k in out:
          raise CheckpointError(
              f'{path}: tensor {k!r} is in both {os.path.basename(out[k])} and {fname} and '
              'there is no model.safetensors.index.json to say which one holds it')
        out[k] = os.path.join(path, fname)
  return out


def load_hf(path: str, dtype: str = 'float32', *, compute_dtype: str | None = None,
            mesh: jax.sharding.Mesh | None = None,
            rules: shd.Rules = shd.TRAIN_RULES, **config_overrides: Any) -> Decoder:
  """Reads a HF Qwen2/Llama directory into a `Decoder`.

  Args:
    path: directory with config.json and *.safetensors (+ index when split).
    dtype: parameter dtype ('float32' or 'bfloat16').
    compute_dtype: activation/matmul dtype; defaults to `dtype`.
    mesh: when given, each weight is placed with its sharding under `rules`.
    **config_overrides: ModelConfig fields to replace (e.g. remat=True).
  """
  config_file = os.path.join(path, 'config.json')
  try:
    cfg = config_from_hf(_read_json(config_file), param_dtype=dtype,
                         dtype=compute_dtype or dtype, **config_overrides)
  except KeyError as e:
    raise CheckpointError(f'{config_file}: missing field {e}') from None
  except CheckpointError as e:
    raise CheckpointError(str(e) if str(e).startswith(path) else f'{path}/{e}') from None
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, abs_state = nnx.split(abstract)
  files = _index_files(path)

  expected = _expected_hf_shapes(cfg, abs_state)
  allowed_extra = {'lm_head.weight'} if cfg.tie_embeddings else set()
  missing = sorted(set(expected) - set(files))
  if missing:
    raise CheckpointError(f'{path}: missing tensor {missing[0]!r}'
                          f' ({len(missing)} missing in all)')
  extra = sorted(k for k in set(files) - set(expected) - allowed_extra
                 if not _IGNORED.match(k))
  if extra:
    raise CheckpointError(f'{path}: unexpected tensor {extra[0]!r} for '
                          f'{cfg.arch} ({len(extra)} unexpected in all)')
  handles: dict[str, Any] = {}

  def handle(name):
    fname = files[name]
    if fname not in handles:
      handles[fname] = _safe_open(fname)
    return handles[fname]

  for name, shape in expected.items():
    got = tuple(handle(name).get_slice(name).get_shape())
    if got != shape:
      raise CheckpointError(f'{path}: tensor {name!r} has shape {got}, '
                            f'expected {shape} from config.json')

  np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == 'bfloat16' else np.dtype(dtype)
  mapping = _mapping(cfg)
  if mesh is not None:
    shardings = dict(nnx.to_flat_state(shd.state_shardings(abs_state, mesh, rules)))
  flat = []
  for key, var in nnx.to_flat_state(abs_state):
    name, from_hf, _ = mapping[_path(key)]
    shape = var.get_value().shape
    if mesh is not None:
      sharding = shardings[key].get_value()
    else:
      sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def read(index, name=name, from_hf=from_hf, shape=shape):
      try:
        return read_unchecked(index, name, from_hf, shape)
      except CheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # e.g. data cut short
        tensor = name.replace('{i}', '*')
        raise CheckpointError(f'{path}: reading tensor {tensor!r} from '
                              f'{os.path.basename(files[name.format(i=0)])} failed '
                              f'({type(e).__name__}: {e})') from None

    def read_unchecked(index, name, from_hf, shape):
      if '{i}' not in name:
        return from_hf(handle(name).get_tensor(name).astype(np_dtype))[index]
      layers = range(*index[0].indices(shape[0]))
      out = np.empty((len(layers),) + tuple(
          len(range(*s.indices(d))) for s, d in zip(index[1:], shape[1:])), np_dtype)
      for j, i in enumerate(layers):
        w = handle(name.format(i=i)).get_tensor(name.format(i=i))
        out[j] = from_hf(w.astype(np_dtype))[index[1:]]
      return out

    flat.append((key, var.replace(
        jax.make_array_from_callback(shape, sharding, read))))
  handles.clear()
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


# --------------------------------------------------------------------------
# Saving


def _to_host(x: jax.Array) -> np.ndarray:
  if not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def save_hf(model: Decoder, path: str, max_shard_bytes: int = 4 * 2**30) -> None:
  """Writes config.json and safetensors that `transformers` loads.

  Tensors are streamed into files of at most `max_shard_bytes` (plus an index
  when there are several), so host memory holds one file's worth at a time.
  Every process must call it (multi-host arrays are gathered); only process 0
  writes.
  """
  cfg = model.cfg
  writer = jax.process_index() == 0
  umask = os.umask(0)
  os.umask(umask)
  if writer:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, 'config.json'), 'w') as f:
      json.dump(config_to_hf(cfg), f, indent=2)
  mapping = _mapping(cfg)
  names: list[list[str]] = []  # tensor names of each written part
  pending: dict[str, np.ndarray] = {}
  total = 0

  def flush():
    if writer and pending:
      file = os.path.join(path, f'part-{len(names)}.safetensors')
      save_file(pending, file, metadata={'format': 'pt'})
      os.chmod(file, 0o666 & ~umask)  # safetensors writes 0600; others must read it
    names.append(list(pending))
    pending.clear()

  for key, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name, _, to_hf = mapping[_path(key)]
    value = var.get_value()
    per_layer = ([(name.format(i=i), value[i]) for i in range(value.shape[0])]
                 if '{i}' in name else [(name, value)])
    for hf_name, w in per_layer:
      arr = np.ascontiguousarray(to_hf(_to_host(w)))
      if pending and sum(a.nbytes for a in pending.values()) + arr.nbytes > max_shard_bytes:
        flush()
      pending[hf_name] = arr
      total += arr.nbytes
  flush()
  if not writer:
    return
  n = len(names)
  if n == 1:
    os.replace(os.path.join(path, 'part-0.safetensors'),
               os.path.join(path, 'model.safetensors'))
    return
  weight_map = {}
  for i, part in enumerate(names):
    fname = f'model-{i + 1:05d}-of-{n:05d}.safetensors'
    os.replace(os.path.join(path, f'part-{i}.safetensors'), os.path.join(path, fname))
    weight_map.update({k: fname for k in part})
  with open(os.path.join(path, 'model.safetensors.index.json'), 'w') as f:
    json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map},
              f, indent=2)

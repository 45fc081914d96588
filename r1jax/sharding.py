"""Device mesh, logical-axis rules, and the "are we actually sharded" check.

Every weight carries `logical_axes` metadata (e.g. ('layers', 'embed', 'mlp'))
and the model constrains its main activations with logical names too. One rules
table per phase maps logical names to mesh axes ('data', 'fsdp', 'tensor'):

  training: weights FSDP-sharded over 'fsdp' and tensor-parallel over 'tensor';
  sampling: weights only tensor-parallel (no all-gather per decoded token).

A dimension that a mesh axis does not divide stays replicated on that axis;
`check_sharded` reports when that leaves parameters less sharded than the mesh.
"""
import contextlib
import math
import threading
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

TRAIN_RULES: Rules = (
    # weights
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('head_dim', None),
    ('layers', None),
    ('norm', None),
    # activations
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_kv_heads', 'tensor'),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
    ('cache_length', None),
)
SAMPLE_RULES: Rules = tuple(
    (name, None if name == 'embed' else axes) for name, axes in TRAIN_RULES)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None, dcn_data: int = 1) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh; one size may be -1 (= the rest).

  Multislice: `dcn_data` > 1 splits the data axis over that many slices
  (data-parallel gradients cross the slower DCN once per step; FSDP and
  tensor collectives stay on each slice's ICI)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {'data': data, 'fsdp': fsdp, 'tensor': tensor}
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ValueError(f'mesh: at most one axis may be -1, got {sizes}')
  for k, v in sizes.items():
    if v != -1 and v < 1:
      raise ValueError(f'mesh.{k}: must be >= 1 or -1, got {v}')
  known = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if len(devices) % known:
      raise ValueError(f'mesh: {len(devices)} devices are not divisible by '
                       f'the fixed axes {sizes}')
    sizes[free[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f'mesh: sizes {sizes} need {math.prod(sizes.values())} '
                     f'devices, {len(devices)} available')
  if dcn_data < 1 or sizes['data'] % dcn_data:
    raise ValueError(f'mesh.dcn_data: {dcn_data} must be >= 1 and divide the data axis '
                     f'({sizes["data"]})')
  shape = tuple(sizes[a] for a in MESH_AXES)
  if dcn_data > 1:
    # No fallback: a data axis laid across slices in the wrong order would put
    # FSDP/tensor collectives on the slow DCN.
    try:
      dev_array = jax.experimental.mesh_utils.create_hybrid_device_mesh(
          (sizes['data'] // dcn_data, sizes['fsdp'], sizes['tensor']), (dcn_data, 1, 1),
          devices)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'mesh.dcn_data={dcn_data}: cannot lay the mesh over {dcn_data} '
                       f'slices of these {len(devices)} {devices[0].platform} devices '
                       f'({type(e).__name__}: {e})') from e
  else:
    try:
      dev_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # pylint: disable=broad-except  # e.g. CPU devices: no ICI topology
      dev_array = np.asarray(devices).reshape(shape)
  return Mesh(dev_array, MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int],
                    mesh: Mesh, rules: Rules) -> P:
  """Maps logical names to a PartitionSpec, skipping axes that don't divide."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(names, shape, strict=True):
    axes = table.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept = []
    for ax in axes:
      size = mesh.shape[ax]
      if ax in used or size == 1 or dim % (math.prod(
          mesh.shape[a] for a in kept) * size):
        continue
      kept.append(ax)
      used.add(ax)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*spec)


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
  """NamedShardings for a (possibly abstract) nnx.State from its metadata."""
  def one(v):
    names = v.get_metadata().get('logical_axes') or (None,) * v.get_value().ndim
    return v.replace(NamedSharding(
        mesh, logical_to_spec(names, v.get_value().shape, mesh, rules)))
  return jax.tree.map(one, state, is_leaf=_is_var)


def check_sharded(state: Any, mesh: Mesh, tolerance: float = 0.02,
                  axes: Sequence[str] = ('fsdp', 'tensor')) -> float:
  """Fails unless parameters are spread over the mesh axes that shard them.

  Returns bytes per device / (total bytes / devices along `axes`); 1.0 is
  perfect sharding ('data' replicates parameters by design). Tensors too small
  to matter (norms, biases) are what the tolerance absorbs.
  """
  leaves = [x for x in jax.tree.leaves(state) if hasattr(x, 'sharding')]
  total = sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)
  per_device = sum(
      math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
      for x in leaves)
  shards = math.prod(mesh.shape[a] for a in axes)
  ratio = per_device / (total / shards)
  if ratio > 1 + tolerance:
    worst = sorted(
        ((math.prod(x.sharding.shard_shape(x.shape)) / math.prod(x.shape),
          x.shape, getattr(x.sharding, 'spec', x.sharding)) for x in leaves),
        key=lambda t: -t[0])[:5]
    raise AssertionError(
        f'parameters are under-sharded: {per_device} bytes per device vs '
        f'{total / shards:.0f} ideal over {tuple(axes)} of {dict(mesh.shape)}; '
        f'e.g. {worst}')
  return ratio


# Activation constraints: the model calls `constrain(x, names)`; it is a no-op
# unless a mesh and rules are active (set by `activation_rules`).
_ACTIVE = threading.local()


@contextlib.contextmanager
def activation_rules(mesh: Mesh | None, rules: Rules) -> Iterator[None]:
  prev = getattr(_ACTIVE, 'current', None)
  _ACTIVE.current = (mesh, rules) if mesh is not None else None
  try:
    yield
  finally:
    _ACTIVE.current = prev


def is_split(name: str, size: int) -> bool:
  """Whether a dimension of `size` with logical name `name` is split over
  devices under the active rules (False outside `activation_rules`)."""
  active = getattr(_ACTIVE, 'current', None)
  if active is None:
    return False
  mesh, rules = active
  return logical_to_spec((name,), (size,), mesh, rules)[0] is not None


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  active = getattr(_ACTIVE, 'current', None)
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules)))


def per_device_attention(local: Callable, q_BxKxGxTxH: jax.Array, k_BxKxSxH: jax.Array,
                         v_BxKxSxH: jax.Array, *rows: jax.Array) -> jax.Array:
  """`local(q, k, v, *rows)` (an attention kernel's per-device call) under
  `jax.shard_map` over the active mesh: batch over the data axes and kv heads
  over 'tensor' where they divide, `rows` ([B, ...] arrays: masks, segment
  ids) over the batch; called as it is outside `activation_rules`."""
  active = getattr(_ACTIVE, 'current', None)
  if active is None:
    return local(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, *rows)
  mesh, rules = active
  q_spec = logical_to_spec(('batch', 'act_kv_heads', None, None, None), q_BxKxGxTxH.shape,
                           mesh, rules)
  kv_spec = P(*q_spec[:2], None, None)
  row_specs = tuple(P(q_spec[0], *[None] * (r.ndim - 1)) for r in rows)
  return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, *row_specs),
                       out_specs=q_spec, check_vma=False)(q_BxKxGxTxH, k_BxKxSxH, v_BxKxSxH, *rows)


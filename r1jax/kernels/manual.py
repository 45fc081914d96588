"""Custom VJPs that also run inside `jax.shard_map` (vocab_parallel.py).

With `check_vma` (the default) every value carries the set of mesh axes it
varies over, a scan carry must keep its set, and a custom VJP's cotangents
must have their primals' sets.
"""
import jax


def vma(x) -> frozenset:
  # jax 0.10 keeps the varying manual axes in aval.mat.varying (earlier: aval.vma).
  aval = jax.typeof(x)
  return frozenset(getattr(getattr(aval, 'mat', None), 'varying', None) or
                   getattr(aval, 'vma', ()))


def cotangent_like(ct, primal):
  """Inside `jax.shard_map`, an input invariant over an axis (e.g. hidden
  states replicated over 'tensor') whose output varies over it was implicitly
  broadcast; the transpose of that broadcast is a psum."""
  extra = tuple(sorted(vma(ct) - vma(primal)))
  return jax.lax.psum(ct, extra) if extra else ct


def varying(x, *refs):
  """`x` typed as varying over every mesh axis the refs vary over: inside
  `jax.shard_map` (vocab_parallel.py) a scan carry must keep its type, and
  fresh constants are invariant."""
  axes = tuple(sorted(frozenset().union(*(vma(r) for r in refs)) - vma(x)))
  return jax.lax.pcast(x, axes, to='varying') if axes else x


def align(*xs):
  """Each of xs varying over the union of their axes: Pallas' interpreter
  checks the kernel body's ops like any other (a no-op cast on hardware)."""
  return tuple(varying(x, *xs) for x in xs)


def struct(shape, dtype, like) -> jax.ShapeDtypeStruct:
  """A `pallas_call` out_shape that varies over the mesh axes `like` does
  (inside `jax.shard_map` it must say so)."""
  if not vma(like):
    return jax.ShapeDtypeStruct(shape, dtype)
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(like).mat)

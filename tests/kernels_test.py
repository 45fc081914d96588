"""Log-prob paths: chunked (custom VJP, recomputed tiles) equals naive."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import kernels


def _case(n, d, v, dtype=jnp.float32, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(k[0], (n, d), dtype), (jax.random.normal(k[1], (v, d)) * 0.3).astype(dtype),
          jax.random.randint(k[2], (n,), 0, v), jax.random.normal(k[3], (n,)))


def _run(impl, h, w, t, g, **chunks):
  logp, ent = kernels.token_logprobs(h, w, t, impl=impl, with_entropy=True, **chunks)
  grads = jax.grad(lambda h, w: (kernels.token_logprobs(h, w, t, impl=impl, **chunks) * g).sum(),
                   argnums=(0, 1))(h, w)
  return logp, ent, grads


@pytest.mark.parametrize('n,d,v,tc,vc', [
    (37, 16, 1003, 16, 128),  # neither N nor V a multiple of the chunks
    (64, 32, 512, 64, 512),  # exact multiples, one tile
    (5, 8, 151_936, 8, 8192),  # Qwen2.5's vocabulary
])
def test_chunked_matches_naive_values_and_grads(n, d, v, tc, vc):
  h, w, t, g = _case(n, d, v)
  ref = _run('naive', h, w, t, g)
  out = _run('chunked', h, w, t, g, token_chunk=tc, vocab_chunk=vc)
  np.testing.assert_allclose(out[0], ref[0], atol=2e-5, rtol=1e-5)  # log p
  np.testing.assert_allclose(out[1], ref[1], atol=2e-5, rtol=1e-5)  # entropy
  np.testing.assert_allclose(out[2][0], ref[2][0], atol=2e-5, rtol=1e-4)  # d hidden
  np.testing.assert_allclose(out[2][1], ref[2][1], atol=2e-5, rtol=1e-4)  # d weight


def test_chunked_bf16_inputs_accumulate_in_f32():
  h, w, t, g = _case(33, 64, 700, jnp.bfloat16)
  ref = _run('naive', h.astype(jnp.float32), w.astype(jnp.float32), t, g)
  out = _run('chunked', h, w, t, g, token_chunk=16, vocab_chunk=256)
  assert out[0].dtype == jnp.float32 and out[2][0].dtype == jnp.bfloat16
  np.testing.assert_allclose(out[0], ref[0], atol=0.05, rtol=0.02)


def test_chunked_never_materialises_the_logits():
  n, d, v = 4096, 256, 65_536
  args = (jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((v, d), jnp.float32),
          jax.ShapeDtypeStruct((n,), jnp.int32))

  def temp(impl):
    f = jax.value_and_grad(lambda h, w, t: kernels.token_logprobs(h, w, t, impl=impl).sum(),
                           argnums=(0, 1))
    return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = n * v * 4
  assert temp('naive') >= logits_bytes
  assert temp('chunked') < 0.2 * logits_bytes


def test_unknown_impl_is_an_error():
  h, w, t, _ = _case(4, 8, 16)
  with pytest.raises(ValueError, match='pallas'):
    kernels.token_logprobs(h, w, t, impl='pallas')

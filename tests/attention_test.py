"""Issue 13.1: attention whose memory is linear in length (blockwise, splash)
against the dense reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.kernels import attention as at


def _case(B=2, K=2, G=2, T=37, S=None, H=8, offset=0, pad=(5, 0), segments=False, seed=0):
  """Random q/k/v and a mask: left padding of `pad[b]` keys, own keys
  (S == T) or a prefix of S - T keys before them (offset S - T)."""
  S = S or T
  r = np.random.default_rng(seed)
  q = jnp.asarray(r.normal(size=(B, K, G, T, H)), jnp.float32)
  k = jnp.asarray(r.normal(size=(B, K, S, H)), jnp.float32)
  v = jnp.asarray(r.normal(size=(B, K, S, H)), jnp.float32)
  valid = np.ones((B, S), bool)
  for b, p in enumerate(pad):
    valid[b, :p] = False
  q_seg = k_seg = None
  if segments:  # two packed sequences per row, split at a random point
    cut = r.integers(3, T - 3, size=B)
    k_seg = jnp.asarray(np.arange(S)[None] >= cut[:, None], jnp.int32)
    q_seg = k_seg[:, S - T:]
  mask = at.Mask(jnp.asarray(valid), offset, q_seg, k_seg)
  q_valid = np.array(mask.dense(T).any(-1))  # rows with at least one allowed key
  if S == T:
    q_valid &= valid
  return q, k, v, mask, jnp.asarray(q_valid)


def _loss(fn, q, k, v, mask, q_valid, w):
  out = fn(q, k, v, mask)
  return jnp.sum(jnp.where(q_valid[:, None, None, :, None], out * w, 0.0))


CASES = {
    'causal+left padding+GQA, 37 not a block multiple': dict(T=37),
    'prefix of 13, continuation 29': dict(T=29, S=42, offset=13, pad=(4, 9)),
    'packed segments': dict(T=40, segments=True, pad=(0, 6)),
    'one key block': dict(T=11, pad=(2, 0)),
    'prefix of 40 (past a block), continuation 23': dict(T=23, S=63, offset=40, pad=(3, 17)),
    'prefix of 32 (on a block edge), 5 key blocks': dict(T=45, S=77, offset=32, pad=(0, 1)),
}


@pytest.mark.parametrize('causal_tiles', [True, False], ids=['causal tiles', 'all tiles'])
@pytest.mark.parametrize('name', CASES)
def test_blockwise_equals_dense_values_and_gradients(name, causal_tiles):
  """Both blockwise forms: the causal tiles (a static query offset: query
  chunks aligned to the key blocks, each reading the blocks up to its own)
  and every tile (the form a traced offset takes)."""
  _assert_equals_dense(lambda *a: at.blockwise(*a, block=16, causal_tiles=causal_tiles),
                       *_case(**CASES[name]))


def _assert_equals_dense(fn, q, k, v, mask, q_valid):
  """fn's values and gradients equal the dense path's (f32, 1e-5) on the
  queries that have an allowed key."""
  w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  sel = q_valid[:, None, None, :, None]
  np.testing.assert_allclose(jnp.where(sel, fn(q, k, v, mask), 0),
                             jnp.where(sel, at.dense(q, k, v, mask), 0), atol=1e-5, rtol=1e-5)
  g_ref = jax.grad(_loss, argnums=(1, 2, 3))(at.dense, q, k, v, mask, q_valid, w)
  # The mask is closed over, not a jit argument: its static offset (what
  # selects the causal tiles, or places a kernel's queries) would be traced.
  g = jax.jit(jax.grad(lambda q, k, v: _loss(fn, q, k, v, mask, q_valid, w),
                       argnums=(0, 1, 2)))(q, k, v)
  for a, b, what in zip(g, g_ref, 'qkv'):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=f'd{what}')
  assert all(np.isfinite(np.asarray(x)).all() for x in g)


@pytest.mark.parametrize('causal_tiles', [True, False], ids=['causal tiles', 'all tiles'])
def test_blockwise_memory_grows_linearly_where_dense_grows_quadratically(causal_tiles):
  """Compiled temp bytes of forward + backward at T = 1k, 2k, 4k."""
  def temp(fn, T):
    q, k, v, valid, q_valid = (jax.ShapeDtypeStruct((1, 2, 2, T, 32), jnp.float32),
                               jax.ShapeDtypeStruct((1, 2, T, 32), jnp.float32),
                               jax.ShapeDtypeStruct((1, 2, T, 32), jnp.float32),
                               jax.ShapeDtypeStruct((1, T), bool),
                               jax.ShapeDtypeStruct((1, T), bool))
    f = jax.jit(jax.grad(lambda q, k, v, valid, qv: _loss(fn, q, k, v, at.Mask(valid, 0), qv, 1.0),
                         argnums=(0, 1, 2)))
    return f.lower(q, k, v, valid, q_valid).compile().memory_analysis().temp_size_in_bytes
  dense = [temp(at.dense, T) for T in (1024, 2048, 4096)]
  block = [temp(lambda *a: at.blockwise(*a, block=256, causal_tiles=causal_tiles), T)
           for T in (1024, 2048, 4096)]
  assert all(b / a <= 2.2 for a, b in zip(block, block[1:])), block
  assert all(b / a >= 3.5 for a, b in zip(dense, dense[1:])), dense
  assert block[-1] < dense[-1] / 8


def test_causal_tiles_read_no_key_block_past_a_chunks_own():
  """Keys in a block after the last query's (NaN there) reach every output
  of the all-tiles form (p = 0 times NaN) and none of the causal tiles':
  chunk c reads key blocks 0..c only, forward and backward."""
  q, k, v, mask, q_valid = _case(T=29, S=64, offset=3, pad=(2, 0))  # queries in slots 3..31
  poison = (jnp.arange(64) >= 32)[None, None, :, None]  # key blocks 2 and 3 of 16
  k_nan, v_nan = (jnp.where(poison, jnp.nan, x) for x in (k, v))
  w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

  def value_and_grads(causal_tiles, k, v):
    block = lambda *a: at.blockwise(*a, block=16, causal_tiles=causal_tiles)  # noqa: E731
    return jax.jit(jax.value_and_grad(lambda q, k, v: _loss(block, q, k, v, mask, q_valid, w),
                                      argnums=(0, 1, 2)))(q, k, v)

  assert np.isnan(value_and_grads(False, k_nan, v_nan)[0])
  loss, grads = value_and_grads(True, k_nan, v_nan)
  ref_loss, ref_grads = value_and_grads(True, k, v)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for a, b in zip(grads, ref_grads):
    np.testing.assert_allclose(jnp.where(poison[0], 0, a) if a.ndim == 4 else a,
                               jnp.where(poison[0], 0, b) if b.ndim == 4 else b, rtol=1e-5,
                               atol=1e-6)
  assert all(np.isfinite(np.asarray(x)).all() for x in grads)


def test_auto_is_dense_within_one_block_and_blockwise_beyond():
  q, k, v, mask, _ = _case(T=37)
  np.testing.assert_array_equal(at.attention(q, k, v, mask, 'auto', block=64),
                                at.dense(q, k, v, mask))
  np.testing.assert_array_equal(at.attention(q, k, v, mask, 'auto', block=16),
                                at.blockwise(q, k, v, mask, block=16))
  # Traced twice with the same shapes (the TPU branch is traced on CPU too:
  # a kernel cached across traces leaked the first trace's arrays). The mask
  # is closed over: as a jit argument its offset would be traced, and a
  # traced offset takes blockwise without tracing the TPU branch.
  from r1jax.kernels import attention_tpu
  calls = []
  splash = attention_tpu.splash
  attention_tpu.splash = lambda *a, **kw: calls.append(1) or splash(*a, **kw)
  try:
    for _ in range(2):
      out = jax.jit(lambda q, k, v: at.attention(q, k, v, mask, 'auto', block=16))(q, k, v)
      np.testing.assert_array_equal(out, at.blockwise(q, k, v, mask, block=16))
  finally:
    attention_tpu.splash = splash
  assert len(calls) == 2
  with pytest.raises(ValueError, match='model.attention'):
    at.attention(q, k, v, mask, 'flash')


def test_decoder_with_blockwise_attention_matches_dense():
  """The model's teacher-forced passes (own keys and the shared prompt
  prefix): logits and parameter gradients equal at f32."""
  from flax import nnx
  from r1jax import models
  cfg = models.get_preset('tiny', max_position_embeddings=256)
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (4, 70)), jnp.int32)
  mask = jnp.ones((4, 70), bool).at[:2, :9].set(False)
  prompt, prompt_mask = tokens[:2, :30], mask[:2, :30]
  rest = tokens[:, 30:]

  def run(attention):
    model = models.create(cfg.replace(attention=attention, attention_block=16), seed=0)
    graphdef, params = nnx.split(model)

    def loss(params):
      m = nnx.merge(graphdef, params)
      logits = m(tokens, mask_BxT=mask)
      last, cont = m.hidden_with_prefix(prompt, prompt_mask, rest)
      return (jnp.sum(jnp.where(mask[..., None], logits, 0) ** 2) * 1e-3
              + jnp.mean(cont ** 2) + jnp.mean(last ** 2)), logits
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (l_d, logits_d), g_d = run('dense')
  (l_b, logits_b), g_b = run('blockwise')
  np.testing.assert_allclose(jnp.where(mask[..., None], logits_b, 0),
                             jnp.where(mask[..., None], logits_d, 0), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(l_b, l_d, rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_b), jax.tree.leaves(g_d)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------ splash


def _lower_splash_for_tpu(mesh=None, grad=True, T=2048, P=512):
  from r1jax import sharding as shd
  from r1jax.kernels import attention_tpu
  B, K, G, H = 8, 2, 6, 128
  args = (jax.ShapeDtypeStruct((B, K, G, T, H), jnp.bfloat16),
          jax.ShapeDtypeStruct((B, K, P + T, H), jnp.bfloat16),
          jax.ShapeDtypeStruct((B, K, P + T, H), jnp.bfloat16),
          jax.ShapeDtypeStruct((B, P + T), bool))

  def f(q, k, v, valid):
    out = attention_tpu.splash(q, k, v, at.Mask(valid, P))
    return jnp.sum(out.astype(jnp.float32))
  f = jax.value_and_grad(f, argnums=(0, 1, 2)) if grad else f
  with shd.activation_rules(mesh, shd.TRAIN_RULES):
    return jax.jit(f).trace(*args).lower(lowering_platforms=('tpu',)).as_text()


def test_splash_lowers_for_tpu():
  fwd = _lower_splash_for_tpu(grad=False)
  assert fwd.count('tpu_custom_call') >= 1
  assert _lower_splash_for_tpu(grad=True).count('tpu_custom_call') >= 3  # fwd, dq, dkv


def test_splash_lowers_for_tpu_under_a_data_fsdp_tensor_mesh():
  from r1jax import sharding as shd
  text = _lower_splash_for_tpu(mesh=shd.make_mesh(2, 2, 2))
  assert text.count('tpu_custom_call') >= 3
  # Per device: batch over (data, fsdp), kv heads over tensor.
  assert 'sdy.manual_computation' in text
  assert 'in_shardings=[<@mesh, [{"data", "fsdp"}, {"tensor"}, {}, {}, {}]' in text


GPU_CASES = {**CASES, 'prefix of 70, continuation 150 (two kernel blocks)':
             dict(T=150, S=220, offset=70, pad=(9, 130), H=16)}


@pytest.mark.parametrize('name', GPU_CASES)
def test_gpu_flash_interpreted_equals_dense_values_and_gradients(name):
  """The Pallas Triton kernel (model.attention='triton'), run interpreted:
  queries placed at their key slots, padding and packed rows as segment
  ids, GQA by repeated kv heads."""
  from r1jax.kernels import attention_gpu
  _assert_equals_dense(lambda *a: attention_gpu.flash(*a, interpret=True),
                       *_case(**GPU_CASES[name]))


def test_gpu_flash_blocks_fit_shared_memory():
  """128-row forward blocks up to 256 bytes a row, smaller beyond (f32 at
  head_dim 128 would need ~256 KiB of shared memory with 128-row blocks)."""
  from r1jax.kernels import attention_gpu
  sizes = lambda dtype, h: attention_gpu.block_sizes(dtype, h).block_q  # noqa: E731
  assert sizes(jnp.bfloat16, 128) == 128 and sizes(jnp.float32, 64) == 128
  assert sizes(jnp.float32, 128) == 64 and sizes(jnp.float32, 256) == 32
  assert sizes(jnp.bfloat16, 64) == 128 and sizes(jnp.float32, 80) == 64  # 80 pads to 128


def _trace_training_passes(cfg, rows: int, length: int, prompt: int):
  """The gradient of the model's two teacher-forced passes, traced: the
  full forward of `rows` sequences of `length` tokens, and the prompt-prefix
  pass of their first `prompt` tokens (one prompt per two rows) continued by
  the rest."""
  from flax import nnx
  from r1jax import models
  graphdef, params = nnx.split(nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0))))

  def loss(params, tokens, mask):
    m = nnx.merge(graphdef, params)
    last, cont = m.hidden_with_prefix(tokens[:rows // 2, :prompt], mask[:rows // 2, :prompt],
                                      tokens[:, prompt:])
    return jnp.sum(m.hidden(tokens, mask_BxT=mask)[0]) + jnp.sum(cont) + jnp.sum(last)
  return jax.jit(jax.grad(loss)).trace(params, jax.ShapeDtypeStruct((rows, length), jnp.int32),
                                       jax.ShapeDtypeStruct((rows, length), bool))


def test_gpu_flash_lowers_for_cuda_per_device_under_a_mesh():
  """model.attention='triton' in the model's update pass, lowered for CUDA
  from this CPU host: the forward and the backward's kernels are Triton
  calls, run per device (batch over data x fsdp, kv heads over tensor);
  a traced offset (a prefill into a cache) takes blockwise."""
  from r1jax import models, sharding as shd
  cfg = models.get_preset('tiny', max_position_embeddings=2048, attention='triton',
                          attention_block=256)
  with shd.activation_rules(shd.make_mesh(2, 2, 2), shd.TRAIN_RULES):
    traced = _trace_training_passes(cfg, rows=4, length=700, prompt=300)
  text = traced.lower(lowering_platforms=('cuda',)).as_text()
  assert text.count('__gpu$xla.gpu.triton') >= 6  # forward and backward kernels of both passes
  # Per device: q [B, K, G, T, H] with batch over (data, fsdp), kv heads over tensor.
  assert '<@mesh, [{"data", "fsdp"}, {"tensor"}, {}, {}, {}]>' in text
  q = jax.ShapeDtypeStruct((2, 2, 2, 1, 16), jnp.float32)
  kv = jax.ShapeDtypeStruct((2, 2, 300, 16), jnp.float32)
  traced = jax.jit(lambda q, k, v, valid, i: at.attention(q, k, v, at.Mask(valid, i), 'triton'))
  text = traced.trace(q, kv, kv, jax.ShapeDtypeStruct((2, 300), bool), 7).lower(
      lowering_platforms=('cuda',)).as_text()
  assert 'triton' not in text


@pytest.mark.parametrize('case', [
    dict(B=1, K=1, G=2, T=128, S=256, H=128, offset=128, pad=(7,)),  # a prefix
    dict(B=2, K=2, G=2, T=128, H=128, pad=(9, 0), segments=True),  # packed rows, GQA
], ids=['prefix', 'packed segments, GQA'])
def test_splash_interpreted_equals_dense_on_tiny_shapes(case):
  """Values and gradients, f32."""
  from r1jax.kernels import attention_tpu
  _assert_equals_dense(lambda *a: attention_tpu.splash(*a, interpret=True), *_case(**case))


@pytest.mark.parametrize('q_offset', [0, 15, 16, 47, 69])
def test_decode_over_the_filled_blocks_equals_dense(q_offset):
  """A decode step reads key blocks up to its own slot only (70 slots in
  blocks of 16: the last block overlaps the one before it)."""
  r = np.random.default_rng(q_offset)
  L, B, K, G, S, H = 3, 2, 2, 2, 70, 8
  k_all = jnp.asarray(r.normal(size=(L, B, K, S, H)), jnp.float32)
  v_all = jnp.asarray(r.normal(size=(L, B, K, S, H)), jnp.float32)
  q = jnp.asarray(r.normal(size=(B, K, G, 1, H)), jnp.float32)
  # Left padding of 3 in row 0; the query's own slot holds its token.
  valid = jnp.asarray((np.arange(S)[None] >= np.array([[3], [0]])) | (np.arange(S) == q_offset))
  mask = at.Mask(valid, q_offset)
  kT_all = jnp.swapaxes(k_all, 3, 4)  # the decoder's cache layout: K as [.., H, S]
  decode = jax.jit(at.decode, static_argnums=(6,))
  out = decode(q, kT_all, v_all, 1, valid, q_offset, 16)
  np.testing.assert_allclose(out, at.dense(q, k_all[1], v_all[1], mask), atol=1e-6, rtol=1e-6)
  # The blocks past the query's are never read: NaN there changes nothing
  # (a read would spread it: 0 x NaN is NaN).
  unread = np.arange(S) >= -(-(q_offset + 1) // 16) * 16
  poison = lambda x, axis: jnp.where(  # noqa: E731
      np.expand_dims(unread, tuple(a for a in range(5) if a != axis)), jnp.nan, x)
  np.testing.assert_array_equal(decode(q, poison(kT_all, 4), poison(v_all, 3), 1, valid,
                                       q_offset, 16), out)


def test_decode_over_block_buffers_equals_the_stacked_decode_bit_for_bit():
  """decode_blocks (the CPU rollout's separate block buffers) and decode
  (blocks sliced out of the stacked cache) agree exactly when the cache is
  whole blocks, including blocks past the query that hold no allowed key."""
  r = np.random.default_rng(0)
  L, B, K, G, S, H, Sb, q_offset = 2, 3, 2, 2, 64, 8, 16, 37
  kT_all = jnp.asarray(r.normal(size=(L, B, K, H, S)), jnp.float32)
  v_all = jnp.asarray(r.normal(size=(L, B, K, S, H)), jnp.float32)
  q = jnp.asarray(r.normal(size=(B, K, G, 1, H)), jnp.float32)
  valid = jnp.asarray((np.arange(S)[None] >= np.array([[3], [0], [20]]))
                      & (np.arange(S) <= q_offset))
  stacked = jax.jit(at.decode, static_argnums=(6,))(q, kT_all, v_all, 1, valid, q_offset, Sb)
  n = q_offset // Sb + 1
  for blocks in (n, n + 1):  # the one past the query's block is a no-op
    ks = [kT_all[1, ..., j * Sb:(j + 1) * Sb] for j in range(blocks)]
    vs = [v_all[1, :, :, j * Sb:(j + 1) * Sb] for j in range(blocks)]
    out = jax.jit(at.decode_blocks)(q, ks, vs, valid[:, :blocks * Sb], q_offset)
    np.testing.assert_array_equal(out, stacked)


@pytest.mark.parametrize('attention_block', [512, 8])
def test_rollout_with_decode_blocks_equals_the_dense_rollout(attention_block):
  """With blocks of 8 the 20-token prefill runs blockwise too."""
  from r1jax import models
  from r1jax.rollout import SamplingConfig, generate
  cfg = models.get_preset('tiny', max_position_embeddings=256, attention_block=attention_block)
  r = np.random.default_rng(0)
  prompt = jnp.asarray(r.integers(3, cfg.vocab_size, (3, 20)), jnp.int32)
  prompt_mask = jnp.asarray(np.arange(20)[None] >= np.array([[0], [5], [11]]))
  # 20 + 140 slots: beyond one decode block.
  sampling = SamplingConfig(max_new_tokens=140, temperature=0.0, eos_ids=(), pad_id=0)
  outs = {}
  for attention in ('dense', 'auto'):
    model = models.create(cfg.replace(attention=attention), seed=0)
    outs[attention] = jax.jit(lambda p, m, model=model: generate(
        model, p, m, jax.random.key(0), sampling, group_size=2))(prompt, prompt_mask)
  np.testing.assert_array_equal(outs['auto'].tokens_NxT, outs['dense'].tokens_NxT)
  np.testing.assert_allclose(outs['auto'].logp_NxT, outs['dense'].logp_NxT, atol=1e-5)


def test_the_models_training_passes_lower_to_splash_on_tpu_with_auto():
  """`auto` picks splash when lowering for TPU: the full forward and the
  prompt-prefix pass of a 1,024-token sequence (beyond one block), with
  their backward; the CPU lowering has no kernel."""
  from r1jax import models
  cfg = models.get_preset('tiny', max_position_embeddings=2048, head_dim=128, attention_block=512)
  traced = _trace_training_passes(cfg, rows=2, length=1024, prompt=512)
  tpu = traced.lower(lowering_platforms=('tpu',)).as_text()
  assert tpu.count('tpu_custom_call') >= 6  # forward, dq, dkv of each pass (layers are scanned)
  assert 'tpu_custom_call' not in traced.lower(lowering_platforms=('cpu',)).as_text()


def test_the_models_scoring_pass_memory_is_linear_in_length():
  """Grad of Σ completion log-probs (the update pass) in the model: inside the
  layer scan, JAX kept every key block's [T, block] mask (memory quadratic
  in T: 2.54x then 2.87x per doubling) until the block scans recomputed them."""
  from flax import nnx
  from r1jax import models, train_step as ts

  def temp(T, P=64):
    cfg = models.get_preset('tiny', max_position_embeddings=P + T + 1, attention='blockwise',
                            attention_block=256)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0))))

    def loss(params, prompt, prompt_mask, tokens):
      return ts.completion_logprobs(nnx.merge(graphdef, params), prompt, prompt_mask, tokens,
                                    1.0, impl='chunked').sum()
    args = (params, jax.ShapeDtypeStruct((1, P), jnp.int32), jax.ShapeDtypeStruct((1, P), bool),
            jax.ShapeDtypeStruct((1, T), jnp.int32))
    return jax.jit(jax.grad(loss)).lower(*args).compile().memory_analysis().temp_size_in_bytes
  sizes = [temp(T) for T in (1024, 2048, 4096)]
  assert all(b / a <= 2.2 for a, b in zip(sizes, sizes[1:])), sizes


@pytest.mark.parametrize('slots', [0, 2])
def test_decode_slices_whole_128_slot_blocks_of_the_cache_when_lowered_for_tpu(slots):
  """TPU tiles the cache's slot axis by 128: 64-slot slices of it made XLA
  keep relaid-out copies of the whole caches (the paper preset with decode
  slots and packing compiled at 61.78 GiB a chip instead of 47.57). The
  rollout (static and continuous) lowered for TPU slices the caches in
  blocks of 128 slots; for CPU the continuous one in blocks of 64, and the
  static one holds its blocks apart (no slices)."""
  import re
  from r1jax import models
  from r1jax.rollout import SamplingConfig, cache_slots, generate
  cfg = models.get_preset('tiny', max_position_embeddings=512)
  model = models.create(cfg, seed=0)
  P, T = 20, 200
  S = cache_slots(P, T)
  assert S % 128 == 0 and S > 128
  sampling = SamplingConfig(max_new_tokens=T, temperature=1.0, eos_ids=(), pad_id=0)
  f = jax.jit(lambda p, m: generate(model, p, m, jax.random.key(0), sampling, group_size=2,
                                    slots=slots))
  traced = f.trace(jax.ShapeDtypeStruct((2, P), jnp.int32), jax.ShapeDtypeStruct((2, P), bool))

  def cache_slice_widths(platform):
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    widths = set()
    for sizes, shape in re.findall(
        r'stablehlo\.dynamic_slice .*sizes = \[([0-9, ]+)\] : \(tensor<([0-9x]+)x\w+>', text):
      sizes, shape = [int(s) for s in sizes.split(',')], [int(s) for s in shape.split('x')]
      if len(shape) == 5 and S in shape[3:]:  # [L, B, K, H, S] or [L, B, K, S, H]
        axis = 3 + shape[3:].index(S)
        widths.add(sizes[axis])
    return widths
  assert cache_slice_widths('tpu') == {128}
  # On CPU the static rollout keeps 64-slot block buffers (no slice of a
  # whole cache); the continuous one slices its cache in blocks of 64.
  assert cache_slice_widths('cpu') == (set() if slots == 0 else {64})

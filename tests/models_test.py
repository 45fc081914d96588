"""Decoder: logits parity with HF transformers (committed fixtures), KV-cache
decode, bf16, remat, HF save/load, checkpoint errors, sharding."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from conftest import FIXTURES
from r1jax import models, sharding as shd

HF_CASES = ['hf_qwen2_tiny', 'hf_llama3_tiny', 'hf_qwen3_tiny']


def _greedy(model, prompt, new_tokens):
  """Token-by-token greedy decoding through the KV cache."""
  T = len(prompt) + new_tokens
  cache = model.init_cache(1, T)
  tokens = jnp.asarray(prompt, jnp.int32)[None]
  valid = jnp.arange(T)[None] < len(prompt)
  hidden, cache = model.hidden(tokens, cache=cache, cache_index=0, cache_mask_BxS=valid)
  out = list(prompt)
  nxt = int(jnp.argmax(model.logits_from_hidden(hidden[:, -1:])[0, -1]))
  for pos in range(len(prompt), T):
    out.append(nxt)
    if pos == T - 1:
      break
    valid = jnp.arange(T)[None] <= pos
    hidden, cache = model.hidden(
        jnp.array([[nxt]], jnp.int32), positions_BxT=jnp.array([[pos]]),
        cache=cache, cache_index=pos, cache_mask_BxS=valid)
    nxt = int(jnp.argmax(model.logits_from_hidden(hidden)[0, -1]))
  return np.array(out)


@pytest.mark.parametrize('name', HF_CASES)
def test_logits_match_transformers(name):
  path = os.path.join(FIXTURES, name)
  ref = np.load(os.path.join(path, 'reference.npz'))
  model = models.load_hf(path)
  logits = np.asarray(model(jnp.asarray(ref['tokens'])))
  err = np.abs(logits - ref['logits']).max()
  print(f'{name} f32 max|dlogits|={err:.2e}')
  assert err <= 1e-4
  greedy = _greedy(model, ref['prompt'], len(ref['greedy']) - len(ref['prompt']))
  np.testing.assert_array_equal(greedy, ref['greedy'])


@pytest.mark.parametrize('name', HF_CASES)
def test_bf16_within_tolerance(name):
  """bf16 weights and matmuls vs the f32 reference: |dlogits| <= 5% of the
  logit range and the same argmax on >= 90% of positions (tiny random models have small margins)."""
  path = os.path.join(FIXTURES, name)
  ref = np.load(os.path.join(path, 'reference.npz'))
  model = models.load_hf(path, dtype='bfloat16')
  assert model.embed.get_value().dtype == jnp.bfloat16
  logits = np.asarray(model(jnp.asarray(ref['tokens'])))
  err = np.abs(logits - ref['logits']).max() / np.abs(ref['logits']).max()
  agree = (logits.argmax(-1) == ref['logits'].argmax(-1)).mean()
  print(f'{name} bf16 max|dlogits|/max|logits|={err:.3f} argmax agreement={agree:.3f}')
  assert err <= 0.05 and agree >= 0.9


def test_kv_cache_decode_matches_full_forward_with_left_padding():
  cfg = models.get_preset('tiny')
  model = models.create(cfg, seed=1)
  rng = np.random.default_rng(0)
  B, P, NEW = 3, 6, 5
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, P + NEW)), jnp.int32)
  pad = jnp.array([0, 2, 4])  # left padding per row
  mask = jnp.arange(P + NEW)[None] >= pad[:, None]
  full = model(tokens, mask_BxT=mask)

  S = P + NEW
  cache = model.init_cache(B, S)
  positions = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
  h, cache = model.hidden(tokens[:, :P], positions_BxT=positions[:, :P], cache=cache,
                          cache_index=0, cache_mask_BxS=mask & (jnp.arange(S) < P))
  steps = [model.logits_from_hidden(h)]
  for t in range(P, S):
    h, cache = model.hidden(tokens[:, t:t + 1], positions_BxT=positions[:, t:t + 1],
                            cache=cache, cache_index=t,
                            cache_mask_BxS=mask & (jnp.arange(S) <= t))
    steps.append(model.logits_from_hidden(h))
  incremental = jnp.concatenate(steps, axis=1)
  real = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(incremental)[real], np.asarray(full)[real],
                             atol=1e-5, rtol=1e-5)
  # Padded rows see the same logits as the unpadded sequence alone.
  alone = model(tokens[2:3, 4:])
  np.testing.assert_allclose(np.asarray(full[2, 4:]), np.asarray(alone[0]), atol=1e-5)


def test_remat_gives_same_values_and_grads():
  cfg = models.get_preset('tiny')
  tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)

  def loss_and_grad(remat):
    model = models.create(cfg.replace(remat=remat), seed=0)
    graphdef, state = nnx.split(model)
    def loss(state):
      return jnp.mean(nnx.merge(graphdef, state)(tokens) ** 2)
    return jax.jit(jax.value_and_grad(loss))(state)

  (l0, g0), (l1, g1) = loss_and_grad(False), loss_and_grad(True)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)



@pytest.mark.parametrize('remat', [False, True])
def test_mlp_over_chunks_gives_the_whole_mlps_values_and_grads(remat):
  """model.mlp_chunk: sequences longer than the chunk run their MLP chunk
  by chunk (19 positions in chunks of 8, the last one padded), with LoRA
  adapters on gate, up and down; the same logits and gradients."""
  from r1jax.models import lora  # pylint: disable=g-import-not-at-top
  cfg = models.get_preset('tiny', remat=remat)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 19)), jnp.int32)

  def run(chunk):
    model = lora.add(models.create(cfg.replace(mlp_chunk=chunk), seed=0), 4, 8.0,
                     ('gate', 'up', 'down'), seed=1)
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: x + 0.01, state)  # non-zero B
    def loss(state):
      return jnp.mean(jnp.sin(nnx.merge(graphdef, state)(tokens)))
    scans = str(jax.make_jaxpr(loss)(state)).count(' scan[')
    return jax.jit(jax.value_and_grad(loss))(state), scans

  ((l0, g0), whole), ((l1, g1), chunked) = run(0), run(8)
  assert chunked > whole  # the chunks ran
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_mlp_chunks_draw_each_chunks_lora_dropout_mask_anew():
  """Two chunks of the same inputs: without dropout the same outputs, with
  dropout different ones (each chunk's key has its index folded in)."""
  from r1jax.models import decoder, lora  # pylint: disable=g-import-not-at-top
  cfg = models.get_preset('tiny', mlp_chunk=8)
  model = lora.add(models.create(cfg, seed=0), 4, 8.0, ('gate', 'up', 'down'), seed=1)
  w = {k: v[0] + (0.05 if k.endswith('lora_b') else 0.0)  # layer 0, non-zero B
       for k, v in model.layers.weights().items()}
  h = jnp.tile(jax.random.normal(jax.random.key(2), (1, 8, cfg.hidden_size)), (1, 2, 1))
  drop = {'key': jax.random.key_data(jax.random.key(3)), 'keep': jnp.float32(0.5)}
  plain = decoder._mlp_chunks(model.cfg, w, h, None)  # pylint: disable=protected-access
  dropped = decoder._mlp_chunks(model.cfg, w, h, drop)  # pylint: disable=protected-access
  np.testing.assert_allclose(plain[:, :8], plain[:, 8:], rtol=1e-6)
  assert not np.allclose(dropped[:, :8], dropped[:, 8:], rtol=1e-3)
  assert not np.allclose(dropped, plain, rtol=1e-3)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('w_shape', [(8, 12), (8, 3, 4)])
def test_projection_backward_equals_the_einsums(dtype, w_shape):
  """decoder.project's written-out backward (the weight gradient as one
  matmul over (b, t)) gives JAX's own gradients of the einsum, in dtype."""
  from r1jax.models import decoder  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (2, 5, 8)).astype(dtype)
  w = jax.random.normal(jax.random.key(1), w_shape).astype(dtype)
  ct = jax.random.normal(jax.random.key(2), (2, 5) + w_shape[1:])
  outs = 'fo'[:len(w_shape) - 1]
  ref = lambda x, w: jnp.einsum(f'btd,d{outs}->bt{outs}', x, w,  # noqa: E731
                                preferred_element_type=jnp.float32)
  y, vjp = jax.vjp(decoder.project, x, w)
  y_ref, vjp_ref = jax.vjp(ref, x, w)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, y_ref, rtol=1e-6)
  for a, b in zip(vjp(ct), vjp_ref(ct)):
    assert a.dtype == b.dtype == dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=1e-5 if dtype == jnp.float32 else 1e-2, atol=1e-6)

@pytest.mark.parametrize('tie', [True, False])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_save_load_round_trip_is_exact(tmp_path, tie, dtype):
  cfg = models.get_preset('tiny').replace(tie_embeddings=tie, param_dtype=dtype, dtype=dtype,
                                          arch='llama' if tie else 'qwen2')
  model = models.create(cfg, seed=3)
  # A small shard size forces several files and an index.
  models.save_hf(model, str(tmp_path), max_shard_bytes=40_000)
  files = os.listdir(tmp_path)
  assert 'model.safetensors.index.json' in files and len(
      [f for f in files if f.endswith('.safetensors')]) > 1
  umask = os.umask(0)
  os.umask(umask)
  for f in files:  # issue 12.9: safetensors wrote 0600
    assert os.stat(tmp_path / f).st_mode & 0o777 == 0o666 & ~umask, f
  loaded = models.load_hf(str(tmp_path), dtype=dtype)
  assert loaded.cfg.replace(bos_token_id=None) == cfg.replace(bos_token_id=None)
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded))):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('name,arch,tied', [('hf_qwen2_tiny', 'Qwen2ForCausalLM', True),
                                             ('hf_qwen3_tiny', 'Qwen3ForCausalLM', False)])
def test_saved_checkpoint_matches_the_original_hf_files(tmp_path, name, arch, tied):
  """load_hf then save_hf reproduces the HF tensors bit for bit."""
  src = os.path.join(FIXTURES, name)
  models.save_hf(models.load_hf(src), str(tmp_path))
  a, b = load_file(os.path.join(src, 'model.safetensors')), load_file(
      os.path.join(tmp_path, 'model.safetensors'))
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  cfg = json.load(open(os.path.join(tmp_path, 'config.json')))
  assert cfg['architectures'] == [arch] and cfg['tie_word_embeddings'] == tied
  assert models.config_from_hf(cfg) == models.load_hf(src).cfg


# Published sizes (the Qwen3 model cards): total and non-embedding, billions.
QWEN3_SIZES = {'qwen3-0.6b': (0.6, 0.44), 'qwen3-1.7b': (1.7, 1.4), 'qwen3-4b': (4.0, 3.6),
               'qwen3-8b': (8.2, 6.95)}


@pytest.mark.parametrize('preset', sorted(QWEN3_SIZES))
def test_qwen3_presets_have_the_published_sizes(preset):
  cfg = models.get_preset(preset)
  total, non_embedding = QWEN3_SIZES[preset]
  embedding = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_embeddings else 2)
  assert cfg.num_params() / 1e9 == pytest.approx(total, rel=0.02)
  assert (cfg.num_params() - embedding) / 1e9 == pytest.approx(non_embedding, rel=0.02)
  assert cfg.qk_norm and not cfg.qkv_bias and cfg.head_dim == 128


def _copy_fixture(tmp_path, name='hf_qwen2_tiny'):
  dst = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), dst)
  return dst


def _edit_tensors(path, fn):
  f = os.path.join(path, 'model.safetensors')
  tensors = load_file(f)
  fn(tensors)
  save_file(tensors, f, metadata={'format': 'pt'})


def test_checkpoint_errors_name_the_tensor(tmp_path):
  d = _copy_fixture(tmp_path)
  _edit_tensors(d, lambda t: t.pop('model.layers.1.mlp.up_proj.weight'))
  with pytest.raises(models.CheckpointError, match=r'model\.layers\.1\.mlp\.up_proj\.weight'):
    models.load_hf(str(d))

  d = _copy_fixture(tmp_path / 'b')
  _edit_tensors(d, lambda t: t.update({'model.layers.0.extra.weight': np.zeros(3, np.float32)}))
  with pytest.raises(models.CheckpointError, match=r'model\.layers\.0\.extra\.weight'):
    models.load_hf(str(d))

  d = _copy_fixture(tmp_path / 'c')
  _edit_tensors(d, lambda t: t.update({'model.norm.weight': np.ones(65, np.float32)}))
  with pytest.raises(models.CheckpointError, match=r"'model\.norm\.weight' has shape \(65,\)"):
    models.load_hf(str(d))

  d = _copy_fixture(tmp_path / 'd')
  cfg = json.load(open(d / 'config.json'))
  cfg['model_type'] = 'gpt2'
  json.dump(cfg, open(d / 'config.json', 'w'))
  with pytest.raises(models.CheckpointError, match='unsupported model_type'):
    models.load_hf(str(d))


def _abstract_state(cfg):
  return nnx.state(nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0))))


@pytest.mark.parametrize('preset', sorted(set(models.PRESETS) - {'tiny'}))
def test_presets_are_sharded_on_fsdp4_tensor2(preset):
  """MaxText-style check on the full-size presets (abstract shapes only)."""
  mesh = shd.make_mesh(data=1, fsdp=4, tensor=2)
  cfg = models.get_preset(preset)
  abstract = _abstract_state(cfg)
  shardings = shd.state_shardings(abstract, mesh, shd.TRAIN_RULES)
  structs = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, shardings)
  ratio = shd.check_sharded(structs, mesh)
  print(f'{preset}: {cfg.num_params() / 1e9:.2f}B params, per-device/ideal={ratio:.4f}')
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(abstract)) == cfg.num_params()


def test_created_and_loaded_params_are_really_sharded():
  mesh = shd.make_mesh(data=1, fsdp=4, tensor=2)
  cfg = models.get_preset('qwen2.5-0.5b', num_layers=2, vocab_size=4096)
  model = models.create(cfg, mesh=mesh)
  shd.check_sharded(nnx.state(model), mesh)
  assert model.layers.gate_proj.get_value().sharding.spec == jax.sharding.PartitionSpec(
      None, 'fsdp', 'tensor')
  # An unsharded state is caught.
  with pytest.raises(AssertionError, match='under-sharded'):
    shd.check_sharded(jax.device_put(nnx.state(model), jax.devices()[0]), mesh)

  path = os.path.join(FIXTURES, 'hf_llama3_tiny')
  ref = np.load(os.path.join(path, 'reference.npz'))
  sharded = models.load_hf(path, mesh=mesh)
  shd.check_sharded(nnx.state(sharded), mesh, tolerance=0.1)
  graphdef, state = nnx.split(sharded)
  logits = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, jnp.asarray(ref['tokens']))
  np.testing.assert_allclose(np.asarray(logits), ref['logits'], atol=1e-4)


def test_activation_constraints_under_a_mesh_keep_values():
  mesh = shd.make_mesh(data=2, fsdp=2, tensor=2)
  cfg = models.get_preset('tiny')
  model = models.create(cfg, seed=0, mesh=mesh)
  tokens = jnp.arange(32, dtype=jnp.int32).reshape(4, 8)
  graphdef, state = nnx.split(model)

  def fwd(state, tokens):
    with shd.activation_rules(mesh, shd.TRAIN_RULES):
      return nnx.merge(graphdef, state)(tokens)

  sharded = jax.jit(fwd)(state, tokens)
  plain = models.create(cfg, seed=0)(tokens)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(plain), atol=1e-5)


def test_sliding_window_config_is_refused(tmp_path):
  """Issue 10.6: Qwen2 with use_sliding_window loaded as full attention
  (logits differed from transformers by up to 5.9); now refused."""
  d = _copy_fixture(tmp_path)
  cfg = json.load(open(d / 'config.json'))
  cfg.update(use_sliding_window=True, sliding_window=16, max_window_layers=0)
  del cfg['layer_types']  # transformers derives it from max_window_layers
  json.dump(cfg, open(d / 'config.json', 'w'))
  with pytest.raises(models.CheckpointError, match='sliding-window attention'):
    models.load_hf(str(d))
  cfg['layer_types'] = ['full_attention', 'sliding_attention']
  json.dump(cfg, open(d / 'config.json', 'w'))
  with pytest.raises(models.CheckpointError, match=r'in layers \[1\]'):
    models.load_hf(str(d))
  # Switched on for no layer (max_window_layers >= layers): full attention, loads.
  del cfg['layer_types']
  cfg.update(max_window_layers=cfg['num_hidden_layers'])
  json.dump(cfg, open(d / 'config.json', 'w'))
  models.load_hf(str(d))


def test_duplicate_tensor_in_unindexed_files_is_refused(tmp_path):
  """Issue 10.6: two un-indexed safetensors files with the same tensor: the
  later file silently won; now an error naming both files."""
  d = _copy_fixture(tmp_path)
  t = load_file(os.path.join(d, 'model.safetensors'))
  save_file({'model.norm.weight': t['model.norm.weight'] * 2}, os.path.join(d, 'zz.safetensors'),
            metadata={'format': 'pt'})
  with pytest.raises(models.CheckpointError, match=r"'model\.norm\.weight'.*model\.safetensors.*zz\.safetensors"):
    models.load_hf(str(d))


def test_multislice_mesh_never_falls_back_silently():
  """Issue 11.12: a failed hybrid (multislice) mesh reshaped the devices and
  went on; CPU devices have no slices, so dcn_data=2 is an error here."""
  with pytest.raises(ValueError, match='mesh.dcn_data=2'):
    shd.make_mesh(4, 2, 1, dcn_data=2)


def test_hf_loading_errors_name_the_file(tmp_path):
  """Issue 11.10: truncated safetensors, malformed config or index, a missing
  hidden_size: each error names the file (and the field)."""
  d = _copy_fixture(tmp_path / 'a')
  f = d / 'model.safetensors'
  f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
  with pytest.raises(models.CheckpointError, match=r'model\.safetensors'):
    models.load_hf(str(d))

  d = _copy_fixture(tmp_path / 'b')
  (d / 'config.json').write_text('{"model_type": "qwen2",')
  with pytest.raises(models.CheckpointError, match=r'config\.json: not valid JSON'):
    models.load_hf(str(d))

  d = _copy_fixture(tmp_path / 'c')
  cfg = json.load(open(d / 'config.json'))
  del cfg['hidden_size']
  json.dump(cfg, open(d / 'config.json', 'w'))
  with pytest.raises(models.CheckpointError, match=r"config\.json: missing field 'hidden_size'"):
    models.load_hf(str(d))

  d = _copy_fixture(tmp_path / 'e', 'hf_llama3_tiny')
  (d / 'model.safetensors.index.json').write_text('[1, 2]')
  with pytest.raises(models.CheckpointError, match=r'model\.safetensors\.index\.json'):
    models.load_hf(str(d))

"""LoRA adapters (r1jax/models/lora.py): the base exactly at B = 0, PEFT's
layout and numbers (a fixture written with peft, tools/make_peft_fixture.py),
merging, and the reference by disabling."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from r1jax import models
from r1jax.models import lora

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
PEFT_DIR = os.path.join(FIXTURES, 'peft_qwen3_tiny_lora')
ALL = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')
ALL_NAMES = [f'{t}_lora_{s}' for t in ALL for s in 'ab']


def _tokens(cfg, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, 12)), jnp.int32)


def test_zero_b_is_exactly_the_base_model():
  base = models.create(models.get_preset('tiny'), seed=0)
  tokens = _tokens(base.cfg)
  want = np.asarray(base(tokens))
  adapted = lora.add(base, rank=4, alpha=8, targets=ALL, seed=1)
  np.testing.assert_array_equal(np.asarray(adapted(tokens)), want)
  _, adapters, _ = lora.split(adapted)
  assert len(jax.tree.leaves(adapters)) == 2 * len(ALL)


def test_peft_adapter_gives_peft_logits():
  ref = np.load(os.path.join(PEFT_DIR, 'reference.npz'))
  model = lora.load_peft(models.load_hf(os.path.join(FIXTURES, 'hf_qwen3_tiny')), PEFT_DIR)
  assert model.cfg.lora_rank == 4 and model.cfg.lora_scale == 2.0
  err = np.abs(np.asarray(model(jnp.asarray(ref['tokens']))) - ref['logits']).max()
  print(f'PEFT LoRA on Qwen3 tiny: max|dlogits| {err:.2e}')
  assert err <= 1e-4
  # The adapter changes the function (the test would pass vacuously otherwise).
  plain = models.load_hf(os.path.join(FIXTURES, 'hf_qwen3_tiny'))
  assert np.abs(np.asarray(plain(jnp.asarray(ref['tokens']))) - ref['logits']).max() > 0.1


def test_save_peft_writes_peft_names_shapes_and_values(tmp_path):
  model = lora.load_peft(models.load_hf(os.path.join(FIXTURES, 'hf_qwen3_tiny')), PEFT_DIR)
  lora.save_peft(model, str(tmp_path), base_model='Qwen/Qwen3-0.6B')
  theirs = load_file(os.path.join(PEFT_DIR, 'adapter_model.safetensors'))
  ours = load_file(os.path.join(tmp_path, 'adapter_model.safetensors'))
  assert sorted(ours) == sorted(theirs)
  for k in theirs:
    np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
  cfg = json.load(open(os.path.join(tmp_path, 'adapter_config.json')))
  want = json.load(open(os.path.join(PEFT_DIR, 'adapter_config.json')))
  for key in ('peft_type', 'task_type', 'r', 'lora_alpha', 'bias', 'fan_in_fan_out'):
    assert cfg[key] == want[key], key
  assert sorted(cfg['target_modules']) == sorted(want['target_modules'])


def test_merged_model_equals_the_adapted_one(tmp_path):
  model = lora.load_peft(models.load_hf(os.path.join(FIXTURES, 'hf_qwen3_tiny')), PEFT_DIR)
  tokens = jnp.asarray(np.load(os.path.join(PEFT_DIR, 'reference.npz'))['tokens'])
  merged = lora.merged(model)
  assert merged.cfg.lora_rank == 0 and not hasattr(merged.layers, 'q_lora_a')
  np.testing.assert_allclose(np.asarray(merged(tokens)), np.asarray(model(tokens)), atol=1e-4)
  models.save_hf(merged, str(tmp_path))  # a plain HF checkpoint
  np.testing.assert_allclose(np.asarray(models.load_hf(str(tmp_path))(tokens)),
                             np.asarray(model(tokens)), atol=1e-4)


def test_disabled_adapters_are_the_reference_policy():
  model = lora.load_peft(models.load_hf(os.path.join(FIXTURES, 'hf_qwen3_tiny')), PEFT_DIR)
  plain = models.load_hf(os.path.join(FIXTURES, 'hf_qwen3_tiny'))
  tokens = _tokens(model.cfg)
  graphdef, adapters, base = lora.split(model)
  off = nnx.merge(graphdef, lora.disabled(adapters), base)
  np.testing.assert_array_equal(np.asarray(off(tokens)), np.asarray(plain(tokens)))


def test_gradients_reach_only_the_adapters():
  model = lora.add(models.create(models.get_preset('tiny'), seed=0), 4, 8, ALL, seed=1)
  graphdef, adapters, base = lora.split(model)
  tokens = _tokens(model.cfg)

  def loss(adapters):
    logits = nnx.merge(graphdef, adapters, base)(tokens)
    return jax.nn.log_softmax(logits)[..., 0].mean()

  grads = jax.grad(loss)(adapters)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  name = lambda path: next(k for k in ALL_NAMES if f"'{k}'" in jax.tree_util.keystr(path))  # noqa: E731
  names = {name(p) for p, _ in flat}
  assert names == set(ALL_NAMES)
  # With B = 0 only B moves first (dL/dA carries B).
  for path, g in flat:
    assert (np.abs(np.asarray(g)).max() > 0) == name(path).endswith('_b'), name(path)


def test_bad_lora_settings_are_refused():
  with pytest.raises(ValueError, match='lora'):
    models.get_preset('tiny', lora_rank=4, lora_targets=('qq',))
  with pytest.raises(ValueError, match='lora'):
    models.get_preset('tiny', lora_rank=4)


def test_a_lora_run_trains_resumes_and_exports_merged_and_peft(tmp_path, tfds_dir, capsys):
  """configs/zero.py:smoke with lora.rank=4 on a (data 2, fsdp 2, tensor 2)
  mesh: the checkpoints hold the adapters only, a rerun resumes, and the
  export is the merged model plus the adapters in PEFT's layout."""
  from conftest import zero_config  # pylint: disable=g-import-not-at-top
  from r1jax import config as rc, export, launch, metrics  # pylint: disable=g-import-not-at-top
  c = zero_config('smoke')
  c.data_dir, c.workdir, c.steps = tfds_dir, str(tmp_path / 'run'), 2
  c.mesh.update(data=2, fsdp=2, tensor=2)
  c.lora.update(rank=4, alpha=8.0)
  launch.run(c)
  rows = metrics.read_jsonl(str(tmp_path / 'run' / 'metrics.jsonl'))
  assert [r['step'] for r in rows if 'reward/total' in r] == [1, 2]
  spec = json.load(open(tmp_path / 'run' / 'model' / 'lora.json'))
  assert spec['rank'] == 4 and spec['base'] == rc.model_ckpt(c)
  c.steps = 3
  capsys.readouterr()
  launch.run(c)  # resumes from the adapters' checkpoint
  assert f"resumed from {tmp_path / 'run' / 'checkpoints'}/2" in capsys.readouterr().out
  rows = metrics.read_jsonl(str(tmp_path / 'run' / 'metrics.jsonl'))
  assert [r['step'] for r in rows if 'reward/total' in r] == [1, 2, 3]
  # The checkpoint's parameters are the adapters, and all of them.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  tree = ocp.PyTreeCheckpointer().metadata(
      str(tmp_path / 'run' / 'checkpoints' / '3' / 'state')).item_metadata.tree['params']
  names = ['/'.join(str(getattr(k, 'key', k)) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert names and all('_lora_' in n for n in names), names
  out = str(tmp_path / 'hf')
  export.export(str(tmp_path / 'run'), out)
  model = export.load(str(tmp_path / 'run'))
  assert len(names) == len(jax.tree.leaves(lora.split(model)[1]))
  tokens = _tokens(model.cfg)
  want = np.asarray(model(tokens))
  np.testing.assert_allclose(np.asarray(models.load_hf(out)(tokens)), want, atol=1e-4)
  peft_model = lora.load_peft(models.load_hf(spec['base']), os.path.join(out, 'adapter'))
  np.testing.assert_allclose(np.asarray(peft_model(tokens)), want, atol=1e-5)
  assert np.abs(want - np.asarray(models.load_hf(spec['base'])(tokens))).max() > 0  # it trained
  c.lora.dropout = 0.1
  rc.validate(c)  # on-policy (μ·M = 1): the ratio's old log-probs share the dropout
  with pytest.raises(rc.ConfigError, match='lora.dropout'):
    c.rl.minibatches = 2
    rc.validate(c)

"""Issue 12.5: a trained checkpoint as a HF directory (`r1jax.export`), and
an r1jax workdir or step as `model.ckpt`."""
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from resume_test import _leaves, final_params
from r1jax import config as rc, export, models, tokenizer as tk, workdir as wd


def _params(model) -> dict:
  from flax import nnx
  return {'/'.join(map(str, k)): np.asarray(v.get_value())
          for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_export_writes_a_hf_directory_that_loads_with_the_trained_weights(done, tmp_path):
  out = export.export(done.workdir, str(tmp_path / 'hf'))
  names = set(os.listdir(out))
  assert {'config.json', 'model.safetensors', 'generation_config.json', 'tokenizer.model',
          'tokenizer_config.json'} <= names
  # The HF directory, read by r1jax's own HF reader, holds exactly the
  # checkpoint's params (step 3, the newest), not the base's.
  exported = _params(models.load_hf(out))
  saved = dict(_leaves(final_params(done.workdir, 3)))
  saved = {k.strip('/').removesuffix('/value'): v for k, v in saved.items()}
  assert set(exported) == set(saved)
  for k, v in exported.items():
    np.testing.assert_array_equal(v, saved[k], err_msg=k)
  base = _params(models.load_hf(rc.model_ckpt(done)))
  assert any(not np.array_equal(base[k], v) for k, v in exported.items())
  # Same logits as the policy loaded from the workdir (model.ckpt=<workdir>).
  tokens = np.arange(1, 25, dtype=np.int32).reshape(2, 12)
  from_hf, from_run = models.load_hf(out), export.load(done.workdir)
  np.testing.assert_array_equal(np.asarray(from_hf(jnp.asarray(tokens))),
                                np.asarray(from_run(jnp.asarray(tokens))))
  # The tokenizer: the base's SentencePiece model converted to tokenizer.json
  # (what transformers reads), with the same ids on every prompt and
  # completion of the task, and the same special ids.
  ours, theirs = tk.load_tokenizer(rc.model_ckpt(done)), tk.load_tokenizer(out)
  assert type(theirs).__name__ == 'HFTokenizer'
  assert (theirs.eos_id, theirs.pad_id) == (ours.eos_id, ours.pad_id)
  texts = _task_texts(done)
  assert [theirs.encode(t) for t in texts] == [ours.encode(t) for t in texts]
  assert [theirs.decode(ours.encode(t)) for t in texts] == [ours.decode(ours.encode(t)) for t in texts]


def _task_texts(c, n=300):
  """Prompts and completions as the base and the policy write them."""
  from r1jax import base
  from r1jax.data import load_split, make_prompt
  rng = np.random.default_rng(0)
  out = []
  for split in ('train', 'test'):
    source = load_split(c.task, split, rc.data_dir(c))
    for i in range(0, len(source), len(source) // n):
      ex = dict(source[i])
      chain, answer = base.imperfect_arithmetic(ex['question'], rng, 0.1)
      out += [make_prompt(ex), base.short_prompt(ex['question']),
              base.completion_text(chain, answer), base.direct_text(ex['answer'])]
  return out


def test_a_workdir_or_a_step_is_a_model_ckpt(done, tmp_path):
  step2 = os.path.join(done.workdir, wd.CHECKPOINTS, '2')
  assert wd.checkpoint_ref(done.workdir)[1] is None and wd.checkpoint_ref(step2)[1] == 2
  c = done.copy_and_resolve_references()
  for ckpt in (done.workdir, step2):
    c.model.ckpt = ckpt
    rc.validate(c)
    assert tk.load_tokenizer(wd.model_dir(ckpt)).vocab_size > 0
  p2 = _params(export.load(step2))
  saved = {k.strip('/').removesuffix('/value'): v
           for k, v in _leaves(final_params(done.workdir, 2))}
  for k, v in p2.items():
    np.testing.assert_array_equal(v, saved[k], err_msg=k)
  # Sharded over a (fsdp 4, tensor 2) mesh: the same values.
  mesh = jax.make_mesh((1, 4, 2), ('data', 'fsdp', 'tensor'))
  sharded = export.load(step2, mesh=mesh)
  for k, v in _params(sharded).items():
    np.testing.assert_array_equal(v, p2[k], err_msg=k)
  c.model.ckpt = os.path.join(done.workdir, wd.CHECKPOINTS, '99')
  with pytest.raises(rc.ConfigError, match=r'config.model.ckpt: .*no checkpoint 99 in .* '
                     r'\(steps: \[1, 2, 3\]\)'):
    rc.validate(c)
  with pytest.raises(models.CheckpointError, match='no checkpoint 99'):
    export.export(done.workdir, str(tmp_path / 'x'), step=99)


def test_export_command(done, tmp_path):
  out = tmp_path / 'hf'
  cmd = [sys.executable, '-m', 'r1jax.export', f'--workdir={done.workdir}', '--step=2',
         f'--out={out}']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert f'exported {done.workdir} (step 2) to {out}' in run.stdout
  # Library INFO (absl's 'I1201 12:00:00…' lines) stays off the console.
  assert not re.search(r'^I\d{4} ', run.stderr + run.stdout, re.M), run.stderr[-2000:]
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 1 and 'FATAL: ' in again.stderr and 'is not empty' in again.stderr


def test_the_export_commands_flags_are_checked_before_loading(tmp_path):
  (tmp_path / 'afile').write_text('')
  assert export.check_flags(str(tmp_path / 'new' / 'hf'), -1, '') == ''
  assert export.check_flags(str(tmp_path / 'hf'), 2, 'bfloat16') == ''
  assert export.check_flags(str(tmp_path / 'hf'), -1, 'fp8').startswith("--dtype: 'fp8'")
  assert export.check_flags(str(tmp_path / 'hf'), -5, '').startswith('--step: -5')
  assert export.check_flags(str(tmp_path / 'afile'), -1, '').startswith('--out: ')
  assert 'is not a directory this process can write' in export.check_flags(
      str(tmp_path / 'afile' / 'hf'), -1, '')

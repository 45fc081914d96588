"""Checks that `save_hf` output loads in `transformers` and gives our logits.

Two halves, because r1jax's environment has no torch:
  python tools/check_hf_export.py write /tmp/export        # r1jax env
  /tmp/hf/bin/python tools/check_hf_export.py check /tmp/export   # torch + transformers env
(see tools/make_hf_fixtures.py for the torch env).
"""
import os
import sys

import numpy as np

CASES = {  # name -> ModelConfig overrides of the tiny preset
    'qwen2_tied': dict(arch='qwen2', qkv_bias=True, tie_embeddings=True),
    'llama3_untied': dict(arch='llama', qkv_bias=False, tie_embeddings=False,
                          rope_scaling=(('factor', 8.0), ('low_freq_factor', 1.0),
                                        ('high_freq_factor', 4.0),
                                        ('original_max_position_embeddings', 32))),
}


def write(root):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from r1jax import models  # pylint: disable=g-import-not-at-top
  tokens = np.random.default_rng(0).integers(0, 512, (2, 40)).astype(np.int32)
  for name, overrides in CASES.items():
    model = models.create(models.get_preset('tiny', **overrides), seed=1)
    path = os.path.join(root, name)
    models.save_hf(model, path, max_shard_bytes=100_000)
    np.savez(os.path.join(path, 'r1jax_logits.npz'), tokens=tokens,
             logits=np.asarray(model(jnp.asarray(tokens))))
    print('wrote', path)


def check(root):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  for name in CASES:
    path = os.path.join(root, name)
    ref = np.load(os.path.join(path, 'r1jax_logits.npz'))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation='eager', dtype=torch.float32).eval()
    with torch.no_grad():
      logits = model(torch.tensor(ref['tokens'], dtype=torch.long)).logits.numpy()
    err = np.abs(logits - ref['logits']).max()
    print(f'{name}: transformers loaded it; max|dlogits| = {err:.2e}')
    assert err < 1e-4, name


if __name__ == '__main__':
  {'write': write, 'check': check}[sys.argv[1]](sys.argv[2])

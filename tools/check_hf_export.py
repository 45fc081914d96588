"""Checks that `save_hf` output loads in `transformers` and gives our logits.

Two halves, because r1jax's environment has no torch:
  python tools/check_hf_export.py write /tmp/export        # r1jax env
  /tmp/hf/bin/python tools/check_hf_export.py check /tmp/export   # torch + transformers env
(see tools/make_hf_fixtures.py for the torch env).

The same for a trained run exported by `python -m r1jax.export --out=DIR`
(weights and tokenizer, through AutoModelForCausalLM and AutoTokenizer):
  python tools/check_hf_export.py write_exported DIR
  /tmp/hf/bin/python tools/check_hf_export.py check_exported DIR
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


TEXTS = ['User: 7+5-3+9. Assistant: <think>7+5-3+9=12-3+9=9+9=18</think> <answer>18</answer>',
         'A conversation between User and Assistant. User: 4-2+8-1. Assistant:']


def write_exported(path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from r1jax import models, tokenizer  # pylint: disable=g-import-not-at-top
  tok = tokenizer.load_tokenizer(path)
  ids = [tok.encode(t) for t in TEXTS]
  tokens = np.asarray([x[:min(map(len, ids))] for x in ids], np.int32)
  logits = np.asarray(models.load_hf(path)(jnp.asarray(tokens)))
  np.savez(os.path.join(path, '..', 'r1jax_exported.npz'), tokens=tokens, logits=logits,
           **{f'ids{i}': np.asarray(x) for i, x in enumerate(ids)})
  print('wrote', os.path.join(path, '..', 'r1jax_exported.npz'))


def check_exported(path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  ref = np.load(os.path.join(path, '..', 'r1jax_exported.npz'))
  # A converted SentencePiece model (the tiny base's) is read from its
  # tokenizer.json: transformers 5's AutoTokenizer maps model_type qwen2 to its
  # byte-level Qwen2Tokenizer whatever tokenizer_config.json says.
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(path, 'tokenizer_config.json')) as f:
    converted = json.load(f).get('tokenizer_class') == 'PreTrainedTokenizerFast'
  tok = (transformers.PreTrainedTokenizerFast.from_pretrained(path) if converted else
         transformers.AutoTokenizer.from_pretrained(path))
  for i, text in enumerate(TEXTS):
    ids = tok(text, add_special_tokens=True)['input_ids']
    assert ids == ref[f'ids{i}'].tolist(), (text, ids, ref[f'ids{i}'].tolist())
    assert tok.decode(ids) == text, (tok.decode(ids), text)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      path, attn_implementation='eager', dtype=torch.float32).eval()
  with torch.no_grad():
    logits = model(torch.tensor(ref['tokens'], dtype=torch.long)).logits.numpy()
  err = np.abs(logits - ref['logits']).max()
  print(f'{path}: {type(tok).__name__} ids equal r1jax\'s ({len(TEXTS)} texts, decode round-trips); '
        f'AutoModelForCausalLM max|dlogits| = {err:.2e}; generation_config: '
        f'{transformers.GenerationConfig.from_pretrained(path).to_diff_dict()}')
  assert err < 1e-4


if __name__ == '__main__':
  {'write': write, 'check': check, 'write_exported': write_exported,
   'check_exported': check_exported}[sys.argv[1]](sys.argv[2])

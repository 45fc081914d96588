"""The tiny base model that configs/zero.py starts from. It ships with r1jax
(r1jax/assets/base-tiny, r1jax.base.SHIPPED); this config rebuilds it:

  python -m r1jax.base --config=configs/base_tiny.py --config.dir=/tmp/base-tiny
  cp /tmp/base-tiny/* r1jax/assets/base-tiny/   # to ship it (a build skips a dir that has one)

(a training run rebuilds it into <workdir>/base with --config.base.rebuild=True).

Hardware: 2 CPU cores. Time: about 10 minutes (1,200 steps of 64 rows; stops
early if greedy accuracy on 128 held-out questions reaches 0.95). Result:
<dir>/{config.json, model.safetensors, tokenizer.model, base_report.json}; a
0.8M-parameter Qwen2-shaped decoder that answers chains like `7+5-3+9` either
at once (`<think> </think>`) or by reducing them step by step
(`7+5-3+9=12-3+9=9+9=18`) with occasional slips. The shipped base's figures
are in its base_report.json (see the README).
"""
from r1jax import base


def get_config(arg: str | None = None):
  """arg 'r1': the base configs/r1.py starts from (r1jax/assets/base-tiny-r1):
  chains joined by words, a third of them in Chinese, and general prompts;
  'student': configs/distill.py's smaller Llama-shaped student
  (r1jax/assets/base-tiny-student)."""
  c = base.default_config()
  c.dir = 'workdir/base-tiny'
  c.data_dir = 'workdir/tfds'
  if arg == 'r1':
    base.r1_variant(c)
    c.dir = 'workdir/base-tiny-r1'
  elif arg == 'student':
    base.student_variant(c)
    c.dir = 'workdir/base-tiny-student'
  elif arg:
    raise ValueError(f"config arg: '', 'r1' or 'student', got {arg!r}")
  return c

"""The tiny base model that configs/zero.py starts from (built automatically
by `python -m r1jax.launch --config=configs/zero.py` when missing).

  python -m r1jax.base --config=configs/base_tiny.py

Hardware: 2 CPU cores. Time: about 6 minutes (1,200 steps of 64 rows; stops
early if greedy accuracy on 128 held-out questions reaches 0.95). Result:
<dir>/{config.json, model.safetensors, tokenizer.model, base_report.json}; a
0.8M-parameter Qwen2-shaped decoder that answers chains like `7+5-3+9` either
at once (`<think> </think>`) or by reducing them step by step
(`7+5-3+9=12-3+9=9+9=18`) with occasional slips. Measured: greedy accuracy
0.625; forced without thinking 0.25 (see r1jax/base.py).
"""
from r1jax import base


def get_config(arg: str | None = None):
  del arg
  return base.default_config()

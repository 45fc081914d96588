"""The tiny base model that configs/zero.py starts from (built automatically
by `python -m r1jax.launch --config=configs/zero.py` when missing).

  python -m r1jax.base --config=configs/base_tiny.py

Hardware: 2 CPU cores. Time: a few minutes (stops when greedy accuracy on 128
held-out questions reaches 0.95, or after `max_minutes`). Result:
<dir>/{config.json, model.safetensors, tokenizer.model, base_report.json}; a
0.8M-parameter Qwen2-shaped decoder that writes `<think> a+b=.. </think>
<answer> .. </answer>` chains for sums of four 2-digit numbers, with carry
errors (see r1jax/base.py).
"""
from r1jax import base


def get_config(arg: str | None = None):
  del arg
  return base.default_config()

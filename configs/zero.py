"""R1-Zero: GRPO with rule-based rewards, straight from a base model.

Default (tiny model, built-in task, CPU):
  python -m r1jax.launch --config=configs/zero.py
A published model from a local HF directory:
  python -m r1jax.launch --config=configs/zero.py:model=qwen2.5-math-1.5b,ckpt=/data/Qwen2.5-Math-1.5B
Any field can be overridden: --config.steps=10 --config.mesh.fsdp=4

Arg keys: model (a preset name), ckpt (HF directory).
"""
from r1jax import config as rc


def get_config(arg: str | None = None):
  arg = rc.parse_arg(arg, model='tiny', ckpt='')
  c = rc.base_config()
  c.workdir = f'workdir/zero-{arg.model}'
  c.model.name = arg.model
  c.model.ckpt = arg.ckpt
  if arg.model != 'tiny':
    c.model.param_dtype = 'bfloat16'
    c.model.dtype = 'bfloat16'
    c.model.remat = True
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  return c

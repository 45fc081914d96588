"""A reward model (r1jax/reward_model.py): the decoder with a scalar head,
trained on preference pairs with the Bradley–Terry loss.

Default — the tiny R1 base shipped with r1jax (r1jax/assets/base-tiny-r1) on
rule-made pairs of the built-in general task (sort three or four numbers,
smallest or largest first: the right response chosen, a plausible wrong one
rejected), scoring the summary (after </think>), on a CPU:
  python -m r1jax.launch --config=configs/rm.py
  Hardware: 2 CPU cores. Time and result (measured 2026-12-07; configs/r1.py's
  rm stage is this run): 4.9 min (16,384 pairs, 512 steps), held-out
  pairwise accuracy 0.930 (256 pairs). On 500 test questions, one wrong
  form each: 0.902 (sort 0.90, largest first 0.90; by wrong form: the
  numbers as given 1.00, the other order 1.00, a neighbouring pair swapped
  0.98, one number changed in order 0.66); on training questions 0.89, so
  it does not memorise. 8,192 pairs gave 0.867. Without the changed-number
  pairs it reaches 0.977 with 8,192 pairs (0.961 with 3-5 numbers of
  1-99), but then cannot tell a
  sorted list of the wrong numbers from the right one, which stage 4 of
  configs/r1.py then learned to write (rule accuracy 0.107 -> 0.062 while
  its score rose). The task's earlier kinds (count, repeat, reverse) stayed
  at 0.688: they need the answer matched against the prompt's endpoints or
  positions.

Your pairs (JSONL or parquet with prompt, chosen, rejected) on a local HF model:
  python -m r1jax.launch --config=configs/rm.py:model=qwen2.5-1.5b,ckpt=/data/Qwen2.5-1.5B-Instruct \\
      --config.rm.data=/data/prefs.jsonl

Arg keys: model (preset name), ckpt (HF directory or r1jax workdir), data, smoke.
"""
from r1jax import base, config as rc


def get_config(arg: str | None = None):
  arg = rc.parse_arg(arg, model='tiny', ckpt='', data='', smoke=False)
  c = rc.base_config()
  for section in ('rl', 'eval', 'rewards', 'reward_fns'):
    del c[section]  # nothing is sampled or scored by rule
  c.workdir = f'workdir/rm-{arg.model}'
  c.model.name = arg.model
  c.model.ckpt = arg.ckpt
  c.steps = 0  # 0: rm.epochs over the pairs
  c.task = 'general'  # the built-in pairs' task
  c.rm = rc.ConfigDict(dict(
      data=arg.data,  # '': the built-in pairs of the general task
      eval_data='',
      held_out=256,  # '' eval_data: the last held_out pairs of data (built-in: its test split)
      builtin_pairs=16384,  # 8,192 gave 0.867 (the changed-number pairs learnt least)
      max_prompt_len=96,
      max_response_len=48,
      summary_only=True,  # R1's helpful RM: the response after its last </think>
      batch_size=32,  # pairs per update
      grad_accum=1,
      epochs=1.0,
  ))
  c.optim.update(lr=1e-3, warmup_steps=5, schedule='cosine', final_lr_ratio=0.1, grad_clip=1.0)
  c.eval_every = 64
  c.checkpoint_every = 64
  if arg.model == 'tiny' and not arg.ckpt:
    c.model.ckpt = base.SHIPPED_R1
  else:
    c.model.dtype = 'bfloat16'
    c.model.remat = True
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.rm.update(max_prompt_len=1024, max_response_len=2048, batch_size=64)
  if arg.smoke:
    c.workdir = 'workdir/rm-smoke'
    c.steps, c.eval_every, c.checkpoint_every = 4, 2, 2
    c.rm.update(builtin_pairs=64, held_out=16, batch_size=8)
  return c

"""A reward model (r1jax/reward_model.py): the decoder with a scalar head,
trained on preference pairs with the Bradley–Terry loss.

Default — the tiny R1 base shipped with r1jax (r1jax/assets/base-tiny-r1) on
rule-made pairs of the built-in general task (the right response chosen, a
plausible wrong one rejected), scoring the summary (after </think>), on a CPU:
  python -m r1jax.launch --config=configs/rm.py
  Hardware: 2 CPU cores. Time and result (measured 2026-12-03; configs/r1.py's
  rm stage is this run): 3.0 min (256 steps), held-out pairwise accuracy
  0.688 (count 0.45, repeat 0.77, reverse 0.82), training questions 0.83
  (count 0.65, repeat 1.00, reverse 0.85). From configs/r1.py's stage-3 SFT
  model instead (--config.model.ckpt=workdir/r1-tiny/sft): 0.602. The
  general task's train split has few distinct pairs for two kinds (count:
  245 questions x 2 wrong forms, repeat: 62 x 2) and the tiny model
  memorises them: trained on count pairs alone it reaches chance on held-out
  count questions; the base's own log-probs prefer the right response on
  only 0.48 of the held-out pairs.

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
      builtin_pairs=8192,  # 2,048 at lr 3e-4 gave held-out accuracy 0.535
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

"""Supervised fine-tuning (r1jax/sft.py): R1's cold start and stage-3 SFT,
and distillation into a student.

Default — the tiny base shipped with r1jax, fine-tuned on built-in
cold-start data (correct step-by-step reductions of the arithmetic task's
training questions, in R1's <think> … </think> <answer> … </answer> format), on a CPU:
  python -m r1jax.launch --config=configs/sft.py
  Hardware: 2 CPU cores. Time and result: not measured as a run of its own;
  the same trainer as R1's cold start and stage-3 SFT (configs/r1.py: 0.4
  and 1.7 min, pass@1 0.780 -> 0.850 and -> 0.930 on the R1 base; README).

Your own data, e.g. teacher traces, on a model from a local HF directory
(R1's stage-3 SFT settings with `paper`: 2 epochs, lr 5e-6 with a cosine
decay to 0.1x, 64 rows of 32,768 tokens a step):
  python -m r1jax.launch --config=configs/sft.py:model=qwen2.5-1.5b,ckpt=/data/Qwen2.5-1.5B,paper \\
      --config.sft.data=/data/traces.jsonl --config.sft.template=chat \\
      --config.task=local --config.data_dir=/data/math

Records (JSONL or parquet): {"prompt" or "question", "completion"} or
{"messages": [{"role": "user", …}, {"role": "assistant", …}]}; the loss is on
the completion and its EOS. sft.template: 'none' (the prompt as is),
'r1_zero' (the question in R1-Zero's template), 'chat' (the model's chat
template). Held out: sft.eval_data, or sft.held_out records drawn by the seed.

Arg keys: model (preset name), ckpt (HF directory or r1jax workdir), data
(a records file), paper, smoke (a seconds-long run for tests).
"""
from r1jax import base, config as rc


def get_config(arg: str | None = None):
  arg = rc.parse_arg(arg, model='tiny', ckpt='', data='', paper=False, smoke=False)
  c = rc.base_config()
  del c.rl  # no sampling during training; the evaluation's lengths are in c.eval
  c.workdir = f'workdir/sft-{arg.model}'
  c.model.name = arg.model
  c.model.ckpt = arg.ckpt
  c.steps = 0  # 0: sft.epochs over the data
  c.sft = rc.ConfigDict(dict(
      data=arg.data,  # '': the built-in cold-start data (arithmetic task); files: a,b
      eval_data='',  # held-out records; '': `held_out` of data's, drawn by the seed
      held_out=256,
      builtin_examples=4096,  # training records of the built-in data
      builtin_words=False,  # its chains closed by ' so <result>' (the r1 base's habit)
      template='none',
      max_len=512,  # tokens of prompt + completion + EOS; rows hold max_len - 1
      too_long='error',  # or 'drop' (counted)
      batch_size=8,  # packed rows per optimizer update
      grad_accum=1,  # micro-batches per update
      epochs=1.0,
  ))
  c.optim.update(lr=1e-4, warmup_steps=10, weight_decay=0.0, schedule='cosine',
                 final_lr_ratio=0.1, grad_clip=1.0)
  c.eval.update(max_new_tokens=32, max_prompt_len=64)
  if arg.model == 'tiny' and not arg.ckpt:
    c.base = base.default_config()  # the shipped base (r1jax.base.SHIPPED)
    c.task = 'arithmetic'
    c.rewards = {'exact_match': 1.0, 'format': 0.2}  # scores the held-out samples
    c.eval.update(num_questions=256, k=4, batch_size=64)
    c.eval_every = 25
    c.checkpoint_every = 25
  else:
    c.model.param_dtype = 'float32'
    c.model.dtype = 'bfloat16'
    c.model.remat = True
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.rewards = {'accuracy': 1.0, 'format': 1.0}
    c.sft.update(max_len=4096, template='chat')
    c.eval.update(max_new_tokens=4096, max_prompt_len=512)
  if arg.paper:
    # DeepSeek-R1 (arXiv 2501.12948 v2, supplement: the SFT of stage 3 and of
    # the distilled models): 2 epochs, lr 5e-6 with cosine decay to 0.1x,
    # batch 64, context 32,768 (rows of packed sequences here).
    c.sft.update(epochs=2.0, batch_size=64, max_len=32768)
    c.optim.update(lr=5e-6, schedule='cosine', final_lr_ratio=0.1, warmup_steps=0)
    c.eval_every = 200
    c.checkpoint_every = 200
    c.eval.update(k=16, num_questions=500, max_new_tokens=32768, temperature=0.6, top_p=0.95)
  if arg.smoke:
    c.workdir = 'workdir/sft-smoke'
    c.steps, c.eval_every, c.checkpoint_every = 4, 2, 2
    c.sft.update(builtin_examples=64, held_out=16, batch_size=8, max_len=128)
    c.eval.update(num_questions=8, k=2, batch_size=8)
  return c

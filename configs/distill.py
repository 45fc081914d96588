"""Distillation (DeepSeek-R1 §4 / supplement: the distilled Qwen2.5 and Llama
students): a teacher's rejection-sampled traces fine-tune a student, and
the same student trained by R1-Zero RL alone is the comparison.

  python -m r1jax.launch --config=configs/distill.py

  stage     kind       from                     does
  rs        rejection  the teacher              its samples of training prompts, kept by rule
  student   sft        the student's base       SFT on the traces (re-tokenised: the student
                                                may have another tokenizer and architecture)
  rl_only   rl         the student's base       R1-Zero GRPO on the same prompts (the paper's
                                                comparison: distilling beats RL on small models)

Default — teacher: the final policy of configs/r1.py's default run
(workdir/r1-tiny/rl, pass@1 0.932; run that first); student: the smaller
base shipped for this (r1jax/assets/base-tiny-student: Llama-shaped, 3
layers of width 96, 0.32M parameters, its own 256-piece tokenizer,
pretrained on the R1-Zero corpus); the built-in arithmetic task; 2 CPU
cores. Time: 15.7 min measured 2026-12-07 (rs 1.0, student 5.6, rl_only
9.1 while it shared the cores with a test run; rl_only alone took 4.4 on
2026-12-04, README). Result (held-out pass@1, 256 questions x 4 at T 0.6):
the student 0.397 -> 0.902 on 10,888 traces of 12,288 prompts, 2 epochs
(97% of the teacher's 0.932); RL alone 0.397 -> 0.509 in about the same
time: distilling beats RL on the small model.

Arg keys: teacher (an r1jax workdir or HF directory), traces (an existing
traces JSONL: no sampling, the rs stage is skipped), student (the student's
base: HF directory or r1jax workdir; '' : the shipped tiny base), model (the
student's preset name), paper (the paper's SFT: 2 epochs... see configs/sft.py),
smoke (seconds-long stages for tests). 2 epochs with a cosine decay to
0.1x, as the paper's distillation.
"""
from r1jax import base, config as rc

ORDER = ('rs', 'student', 'rl_only')
KINDS = {'rs': 'rejection', 'student': 'sft', 'rl_only': 'rl'}
INPUTS = (
    ('rs', 'ckpt', 'teacher'),
    ('student', 'model.ckpt', 'base'),
    ('student', 'sft.data', 'rs'),
    ('rl_only', 'model.ckpt', 'base'),
)


def get_config(arg: str | None = None):
  arg = rc.parse_arg(arg, teacher='workdir/r1-tiny/rl', traces='', student='', model='tiny',
                     paper=False, smoke=False)
  tiny = arg.model == 'tiny'
  c = rc.ConfigDict()
  c.workdir = f'workdir/distill-{arg.model}'
  c.stages = 'student,rl_only' if arg.traces else ''
  c.pipeline = rc.ConfigDict(dict(
      name='distill', order=ORDER, kinds=KINDS, inputs=INPUTS,
      base=arg.student or (base.SHIPPED_STUDENT if tiny else ''),
      sources={'teacher': arg.teacher}))

  # The tiny teacher is nearly deterministic (4 samples of a prompt are
  # mostly one chain): more prompts, not more samples, give more traces.
  c.rs = rc.sibling_config(__file__, 'rejection', 'k=2,limit=12288' if tiny else 'k=4,limit=0,r1,chat')
  c.rs.max_new_tokens = 40 if tiny else 32768

  c.student = rc.sibling_config(__file__, 'sft', f'model={arg.model}')
  c.student.model.ckpt = ''
  c.student.sft.update(data=arg.traces, template='none', held_out=256, epochs=2.0)
  c.student.optim.update(schedule='cosine', final_lr_ratio=0.1)
  if tiny:
    del c.student.base
    c.student.eval.update(max_new_tokens=40, max_prompt_len=128)  # its 256-piece vocabulary
    # A tiny model learns the teacher's format at a tiny model's rate (1e-4
    # left a same-size student at pass@1 0.13 after 2 epochs). On 4,030
    # traces (4,096 prompts) 3 epochs reached 0.744; on 10,888-11,489 traces 2
    # epochs (the paper's) reach 0.902-0.909: the student was short of data.
    c.student.optim.update(lr=2e-3, warmup_steps=10)

  c.rl_only = rc.sibling_config(__file__, 'zero', f'model={arg.model}')
  c.rl_only.model.ckpt = ''
  if tiny:
    del c.rl_only.base
    c.rl_only.rl.update(max_new_tokens=40, max_prompt_len=128)
    c.rl_only.eval.max_prompt_len = 128
    c.rl_only.steps = 240  # about the student stage's wall time (the paper's comparison)

  if arg.paper:
    c.student.sft.update(epochs=2.0, batch_size=64, max_len=32768)
    c.student.optim.update(lr=5e-6, schedule='cosine', final_lr_ratio=0.1, warmup_steps=0)
  if arg.smoke:
    c.workdir = 'workdir/distill-smoke'
    c.student.steps, c.student.eval_every, c.student.checkpoint_every = 2, 2, 2
    c.student.sft.update(held_out=8, batch_size=8, max_len=128)
    c.student.eval.update(num_questions=8, k=2, batch_size=8)
    c.rl_only.steps, c.rl_only.eval_every, c.rl_only.checkpoint_every = 2, 2, 2
    c.rl_only.rl.update(prompts_per_step=8, group_size=4, max_new_tokens=32)
    c.rl_only.eval.update(num_questions=8, k=2, batch_size=8)
    c.rs.benchmarks.arithmetic.limit = 16
    c.rs.update(k=2, batch_size=8, max_new_tokens=32)
  return c

"""R1-Zero: GRPO with rule-based rewards, straight from a base model.

Default — tiny base + built-in arithmetic task, on a laptop CPU:
  python -m r1jax.launch --config=configs/zero.py
  Hardware: 2 CPU cores. Time: about 13 min (base build ~6 min: 1,200 steps;
  240 GRPO steps ~7 min: 32 prompts x 8 samples, up to 32 new tokens).
  Result (measured, see README): held-out pass@1 (256 questions, T 0.6,
  top-p 0.95, k 4) 0.43 at step 0 -> 0.67 (+24 points); format rate 1.0;
  completions grow from ~20 to 27 tokens as the policy learns to think (40%
  of the base's pretraining answers skip the thinking; forced to skip it,
  its pass@1 is 0.19).

A published model from a local HF directory (R1-Zero's settings with `paper`):
  python -m r1jax.launch --config=configs/zero.py:model=qwen2.5-1.5b,ckpt=/data/Qwen2.5-1.5B,paper \
      --config.task=local --config.data_dir=/data/math
  Hardware: a TPU pod slice (e.g. v5p-64). Time and result: R1-Zero trained for
  thousands of steps; expect AIME-style accuracy to rise over hundreds of steps.

Arg keys: model (preset name), ckpt (HF directory), paper (R1-Zero's published
GRPO schedule: 512 questions x 16 samples per rollout in 16 minibatches, one
inner epoch; one launcher step = 16 policy updates = 16 of the paper's
training steps), smoke (a seconds-long run for tests). Override any field with
--config.a.b=value.
"""
from r1jax import base, config as rc


def get_config(arg: str | None = None):
  arg = rc.parse_arg(arg, model='tiny', ckpt='', paper=False, smoke=False)
  c = rc.base_config()
  c.workdir = f'workdir/zero-{arg.model}'
  c.model.name = arg.model
  c.model.ckpt = arg.ckpt
  if arg.model == 'tiny' and not arg.ckpt:
    # The tiny base is built on first use (configs/base_tiny.py).
    c.base = base.default_config()
    c.model.ckpt = c.base.dir
    c.task = 'arithmetic'
    c.data_dir = c.base.data_dir
    c.steps = 240
    c.eval_every = 40
    c.checkpoint_every = 20
    c.rewards = {'exact_match': 1.0, 'format': 0.2}  # integer answers: exact match
    c.rl.update(prompts_per_step=32, group_size=8, max_prompt_len=64, max_new_tokens=32,
                temperature=1.0, beta=0.01, reference_reset_every=0)
    c.optim.update(lr=1e-4, grad_clip=1.0)
    c.eval.update(num_questions=256, k=4, batch_size=64, no_thinking=True)
  else:
    c.model.param_dtype = 'float32'  # master weights; matmuls in bf16
    c.model.dtype = 'bfloat16'
    c.model.remat = True
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.rewards = {'accuracy': 1.0, 'format': 1.0}
    c.rl.max_prompt_len = 512
  if arg.paper:
    # DeepSeek-R1 (arXiv 2501.12948 / Nature 2025) R1-Zero: lr 3e-6, β 0.001
    # (k3), G 16, temperature 1, 32,768 new tokens. Each rollout samples
    # 8,192 outputs (512 questions x 16) and splits them into 16 minibatches
    # trained for one inner epoch: 32 questions x 16 = 512 completions per
    # policy update. One launcher step is that rollout, i.e. 16 of the
    # paper's training steps (its curves count policy updates), so the
    # reference reset "every 400 steps" is every 25 launcher steps; 650
    # launcher steps are 10,400 policy updates (R1-Zero's run length as we
    # read the Nature paper's training details).
    c.optim.lr = 3e-6
    c.rl.update(beta=0.001, kl_estimator='k3', group_size=16, prompts_per_step=512,
                minibatches=16, num_iterations=1, temperature=1.0, max_new_tokens=32768,
                reference_reset_every=25)
    c.steps = 650
    c.eval_every = 25
    c.eval.update(k=16, num_questions=500, temperature=0.6, top_p=0.95)
  if arg.smoke:
    c.workdir = 'workdir/zero-smoke'
    c.steps, c.eval_every, c.checkpoint_every = 3, 2, 2
    c.rl.update(prompts_per_step=4, group_size=4, max_new_tokens=24)
    c.eval.update(num_questions=8, k=2, batch_size=8)
    if 'base' in c:
      c.base.update(dir='workdir/base-smoke', max_steps=30, eval_every=30, eval_questions=16)
      c.model.ckpt = c.base.dir
  return c

"""R1-Zero: GRPO with rule-based rewards, straight from a base model.

Default — the tiny base shipped with r1jax + the built-in arithmetic task, on a CPU:
  python -m r1jax.launch --config=configs/zero.py
  Hardware: 2 CPU cores. Time: about 2 min (60 GRPO steps: 32 prompts x 8
  samples, up to 32 new tokens; no base build: r1jax/assets/base-tiny ships).
  Result (measured, see README): held-out pass@1 (256 questions, T 0.6,
  top-p 0.95, k 4) 0.585 at step 0 -> 0.826 at step 60 (0.83 by step 20);
  format rate 1.0; completions grow from ~20 to 27 tokens as the policy learns
  to think (40% of the base's pretraining answers skip the thinking; forced to
  skip it, its pass@1 is 0.21).

A published model from a local HF directory (R1-Zero's settings with `paper`):
  python -m r1jax.launch --config=configs/zero.py:model=qwen2.5-1.5b,ckpt=/data/Qwen2.5-1.5B,paper \
      --config.task=local --config.data_dir=/data/math
  Hardware: a TPU pod slice (e.g. v5p-64). Time and result: R1-Zero trained for
  thousands of steps; expect AIME-style accuracy to rise over hundreds of steps.

Arg keys: model (preset name), ckpt (HF directory or r1jax workdir), paper (R1-Zero's published
GRPO schedule: 512 questions x 16 samples per rollout in 16 minibatches, one
inner epoch; one launcher step = 16 policy updates = 16 of the paper's
training steps), smoke (a seconds-long run for tests), and one recipe of
dapo, drgrpo, gspo (the papers' values; see the functions below). Override
any field with --config.a.b=value.
"""
from r1jax import base, config as rc


def get_config(arg: str | None = None):
  arg = rc.parse_arg(arg, model='tiny', ckpt='', paper=False, smoke=False,
                     **{name: False for name in RECIPES})
  c = rc.base_config()
  c.workdir = f'workdir/zero-{arg.model}'
  c.model.name = arg.model
  c.model.ckpt = arg.ckpt
  if arg.model == 'tiny' and not arg.ckpt:
    # The tiny base shipped with r1jax (r1jax.base.SHIPPED); rebuilt into
    # <workdir>/base with --config.base.rebuild=True (configs/base_tiny.py).
    c.base = base.default_config()
    c.task = 'arithmetic'
    # Held-out pass@1 flattens by step 20-30 (README); 60 steps leave room.
    c.steps = 60
    c.eval_every = 20
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
                reference_reset_every=25,
                # 8,192 samples x 33k tokens: the KV cache of all of them
                # (7.8 TB in bf16 for Qwen2.5-1.5B) does not fit a v5p-64's
                # HBM, an eighth at a time (31 GB a chip) does; each update's
                # 512 completions in 2 micro-batches. Qwen2.5-1.5B on v5p-64
                # (r1jax.tools.aot): 46.20 GiB a chip of 95 (47.57 with
                # decode_slots=512, pack=True; README).
                rollout_chunks=8, grad_accum=2)
    c.steps = 650
    c.eval_every = 25
    c.eval.update(k=16, num_questions=500, temperature=0.6, top_p=0.95)
  if arg.smoke:
    c.workdir = 'workdir/zero-smoke'
    c.steps, c.eval_every, c.checkpoint_every = 3, 2, 2
    c.rl.update(prompts_per_step=4, group_size=4, max_new_tokens=24)
    c.eval.update(num_questions=8, k=2, batch_size=8)
    if 'base' in c:  # when rebuilt: a 30-step base (it answers nothing right)
      c.base.update(max_steps=30, eval_every=30, eval_questions=16)
  chosen = [name for name in RECIPES if arg[name]]
  if len(chosen) > 1:
    raise ValueError(f'config arg: one recipe at a time, got {chosen}')
  for name in chosen:  # last: lengths follow the schedule chosen above
    RECIPES[name](c)
  return c


def dapo(c):
  """DAPO (Yu et al. 2025, arXiv 2503.14476, §3 and §5.1): clip-higher
  ε_low 0.2 / ε_high 0.28, token-level loss, dynamic sampling (groups whose
  rewards are all equal are dropped and refilled; DAPO samples until the batch
  is full, r1jax tries at most 3 draws of the batch), overlong reward shaping
  with a soft cache of 4,096 of 20,480 tokens (here max_new_tokens and a fifth
  of it), no KL term."""
  c.rl.update(epsilon_low=0.2, epsilon_high=0.28, loss_agg='token_mean',
              dynamic_sampling_attempts=3, overlong_max_len=c.rl.max_new_tokens,
              overlong_cache_len=c.rl.max_new_tokens // 5, overlong_weight=1.0, beta=0.0)


def drgrpo(c):
  """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training",
  arXiv 2503.20783, §3.1): advantages without the std division, the loss
  summed over tokens and divided by a constant (batch x max_new_tokens)
  instead of each completion's length, β 0."""
  c.rl.update(advantage='drgrpo', loss_agg='constant', beta=0.0)


def gspo(c):
  """GSPO (Zheng et al. 2025, arXiv 2507.18071, §4 and §5.1): one
  length-normalised importance ratio per sequence, clipped to
  [1 - 3e-4, 1 + 4e-4], the loss averaged per sequence; each rollout split
  into 4 minibatches (the paper's setting; the ratio is 1 without them),
  no KL term."""
  c.rl.update(ratio='sequence', epsilon_low=3e-4, epsilon_high=4e-4, loss_agg='seq_mean',
              beta=0.0)
  if c.rl.minibatches == 1:
    c.rl.minibatches = 4


RECIPES = {'dapo': dapo, 'drgrpo': drgrpo, 'gspo': gspo}

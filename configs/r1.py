"""DeepSeek-R1's multi-stage recipe (arXiv 2501.12948 v2 and its supplement),
one command: python -m r1jax.launch --config=configs/r1.py

  stage          kind       from                       does
  cold_start     sft        the base                   SFT on readable chains of thought
  reasoning_rl   rl         cold_start                 GRPO, rule rewards + language consistency
  rs             rejection  reasoning_rl               samples of training prompts, kept by rule
  sft            sft        the base (not the policy)  SFT on rs's traces + non-reasoning data
  rm             rm         the base                   a reward model on preference pairs
  rl             rl         sft (+ rm)                 GRPO for all scenarios: rules on reasoning
                                                       prompts, the reward model on general ones
                                                       (only in the last part of the stage)

Each stage writes <workdir>/<stage>/ and is skipped when done (stage.json);
a killed run resumes inside its stage; --config.stages=rs,sft runs a subset
from the outputs already there. <workdir>/summary.json has every stage's
final metrics. Any stage's setting: --config.<stage>.<key>=value (each
stage's section is a whole config of its kind: configs/sft.py, zero.py,
rejection.py, rm.py).

Default — the tiny R1 base shipped with r1jax (r1jax/assets/base-tiny-r1:
its chains end in a word that is Chinese a third of the time, and it answers
general prompts, badly), the built-in arithmetic and general tasks, 2 CPU
cores. Time: 11.0 min (measured 2026-12-07, README). Results (256 held-out
questions x 4, T 0.6): cold start pass@1 0.780 -> 0.850; reasoning RL 0.850
-> 0.938 with the language share 0.841 -> 0.994; rejection sampling keeps
24 % of samples (97 % of prompts); SFT of the base 0.780 -> 0.930; the
reward model's held-out pairwise accuracy 0.930; stage 4 keeps reasoning
(0.930 -> 0.932) and raises the reward model's score on general prompts
(1.281 -> 1.401) but not their rule accuracy (0.107 -> 0.091 +- 0.012): the
reward model checks the order of a sorted list better than its numbers
(configs/rm.py), and the policy learns what it checks.

Arg keys: model (preset), ckpt (the base: HF directory or r1jax workdir),
paper (the paper's settings, below), smoke (seconds-long stages for tests).

Departures from the paper, on the tiny recipe: the cold-start data are
rule-made correct chains (the paper's come from R1-Zero samples, rewritten);
the non-reasoning data and the preference pairs come from the built-in
general task (the paper's from DeepSeek-V3's SFT data and human-made pairs).
The reward model is trained from the base (as the paper's from DeepSeek-V3).
With `paper` the schedules are the paper's; the data are
yours (set each stage's data, e.g. --config.rl.task=local).
"""
from r1jax import base, config as rc
from r1jax.rewards import MODEL_REWARD

ORDER = ('cold_start', 'reasoning_rl', 'rs', 'sft', 'rm', 'rl')
KINDS = {'cold_start': 'sft', 'reasoning_rl': 'rl', 'rs': 'rejection', 'sft': 'sft',
         'rm': 'rm', 'rl': 'rl'}
# (stage, key in its config, the stage whose output fills it; 'base': the recipe's base)
INPUTS = (
    ('cold_start', 'model.ckpt', 'base'),
    ('reasoning_rl', 'model.ckpt', 'cold_start'),
    ('rs', 'ckpt', 'reasoning_rl'),
    ('sft', 'model.ckpt', 'base'),
    ('sft', 'sft.data', 'rs'),
    ('rm', 'model.ckpt', 'base'),
    ('rl', 'model.ckpt', 'sft'),
    ('rl', 'reward_model.ckpt', 'rm'),
)


def get_config(arg: str | None = None):
  arg = rc.parse_arg(arg, model='tiny', ckpt='', paper=False, smoke=False)
  tiny = arg.model == 'tiny'  # the tiny recipe (on the shipped R1 base unless ckpt says)
  model_arg = f'model={arg.model}'  # each stage's model.ckpt is wired by the pipeline
  c = rc.ConfigDict()
  c.workdir = f'workdir/r1-{arg.model}'
  c.stages = ''  # '' : all, in order; or a comma list, e.g. 'rs,sft'
  c.pipeline = rc.ConfigDict(dict(
      name='r1', order=ORDER, kinds=KINDS, inputs=INPUTS,
      base=arg.ckpt or (base.SHIPPED_R1 if tiny else ''),
      prepare={'sft': 'non_reasoning'},  # the stage-3 SFT's non-reasoning data
      non_reasoning_examples=1024))

  rewards = {'exact_match': 1.0, 'format': 0.2, 'language_consistency': 0.5} if tiny else {
      'accuracy': 1.0, 'format': 1.0, 'language_consistency': 1.0}

  # 1. Cold start: SFT of the base on readable (English-only) chains.
  c.cold_start = rc.sibling_config(__file__, 'sft', model_arg)
  c.cold_start.model.ckpt = ''
  if tiny:
    del c.cold_start.base  # the recipe's base, not configs/sft.py's
    c.cold_start.sft.update(builtin_examples=512, builtin_words=True, epochs=1.0, batch_size=8)
    c.cold_start.optim.update(lr=5e-5)
    c.cold_start.eval.update(max_new_tokens=40)

  # 2. Reasoning RL: R1-Zero's GRPO plus the language-consistency reward.
  # With `paper`, R1-Zero's paper preset (32,768 new tokens, 512 x 16 samples
  # a rollout in 16 minibatches, the rollout in 8 chunks) is both RL stages' start.
  rl_arg = model_arg + (',paper' if arg.paper else '')
  c.reasoning_rl = rc.sibling_config(__file__, 'zero', rl_arg)
  c.reasoning_rl.model.ckpt = ''
  c.reasoning_rl.rewards = dict(rewards)
  if tiny:
    del c.reasoning_rl.base
    c.reasoning_rl.rl.update(max_new_tokens=40)
    c.reasoning_rl.steps = 40

  # 3a. Rejection sampling from the stage-2 policy on training prompts.
  c.rs = rc.sibling_config(__file__, 'rejection', 'k=4,limit=2048' if tiny else 'k=16,limit=0,r1,chat')
  c.rs.max_new_tokens = 40 if tiny else 32768
  # 3b. SFT of the base on the kept traces and the non-reasoning data (2 epochs).
  c.sft = rc.sibling_config(__file__, 'sft', model_arg)
  c.sft.model.ckpt = ''
  c.sft.sft.update(template='none', held_out=256, epochs=2.0)
  if tiny:
    del c.sft.base
    c.sft.optim.update(lr=1e-4)
    c.sft.eval.update(max_new_tokens=40)

  # 4a. The reward model (Bradley–Terry on preference pairs).
  c.rm = rc.sibling_config(__file__, 'rm', model_arg)
  c.rm.model.ckpt = ''
  # 4b. RL for all scenarios: rules on reasoning prompts, the reward model
  # (on the summary) on general ones, the language reward on both; general
  # prompts only in the last part of the stage.
  c.rl = rc.sibling_config(__file__, 'zero', rl_arg)
  c.rl.model.ckpt = ''
  c.rl.rewards = {**rewards, MODEL_REWARD: 1.0}
  c.rl.rl.temperature = 0.7
  if tiny:
    del c.rl.base
    c.rl.rl.update(max_new_tokens=40)
    c.rl.steps = 40
    c.rl.general.update(task='general', fraction=0.25, from_step=20)
  else:
    c.rl.general.update(task='', fraction=0.25, from_step=0)

  if arg.paper:
    _paper(c)
  if arg.smoke:
    _smoke(c)
  return c


def _paper(c):
  """The paper's settings (v2 §3 and supplement B)."""
  # Stage 2: lr 3e-6, β 0.001, G 16, clip ε 10, temperature 1, 32 questions x
  # 16 samples a step in 16 minibatches, π_ref reset every 400 steps (one
  # launcher step here is one rollout = 16 policy updates: 400 -> 25).
  c.reasoning_rl.optim.lr = 3e-6
  # The stage's length is the R1-Zero preset's (c.reasoning_rl.steps, 650
  # rollouts of 16 updates), a choice of this preset: set it to your budget.
  c.reasoning_rl.rl.update(beta=0.001, group_size=16, epsilon_low=10.0, epsilon_high=10.0,
                           temperature=1.0, prompts_per_step=512, minibatches=16,
                           reference_reset_every=25)
  # Stage 3: SFT of the base for 2 epochs, lr 5e-6 with cosine decay to 0.1x,
  # batch 64, context 32,768.
  c.sft.sft.update(epochs=2.0, batch_size=64, max_len=32768)
  c.sft.optim.update(lr=5e-6, schedule='cosine', final_lr_ratio=0.1)
  # Stage 4: temperature 0.7, 1,700 steps with general data in the last 400
  # (more caused reward hacking), launcher steps of 16 updates as in stage 2.
  c.rl.optim.lr = 3e-6
  c.rl.rl.update(beta=0.001, group_size=16, temperature=0.7, prompts_per_step=512,
                 minibatches=16, reference_reset_every=25)
  c.rl.steps = 1700 // 16
  c.rl.general.from_step = (1700 - 400) // 16


def _smoke(c):
  """Seconds-long stages (tests)."""
  c.workdir = 'workdir/r1-smoke'
  for s in ('cold_start', 'sft'):
    c[s].steps, c[s].eval_every, c[s].checkpoint_every = 2, 2, 1
    c[s].sft.update(builtin_examples=32, held_out=8, batch_size=8, max_len=128)
    c[s].eval.update(num_questions=8, k=2, batch_size=8)
  for s in ('reasoning_rl', 'rl'):
    c[s].steps, c[s].eval_every, c[s].checkpoint_every = 2, 2, 2
    c[s].rl.update(prompts_per_step=8, group_size=4, max_new_tokens=32)
    c[s].eval.update(num_questions=8, k=2, batch_size=8)
  c.rl.general.update(fraction=0.25, from_step=1)
  c.rs.benchmarks.arithmetic.limit = 16
  c.rs.update(k=2, batch_size=8, max_new_tokens=32)
  c.rs.filters.min_language = 0.0
  c.pipeline.non_reasoning_examples = 32
  c.rm.steps, c.rm.eval_every, c.rm.checkpoint_every = 2, 2, 2
  c.rm.rm.update(builtin_pairs=32, held_out=8, batch_size=8)

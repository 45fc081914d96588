"""R1-Zero training: `python -m r1jax.launch --config=configs/zero.py` (a config
with an `sft` section, configs/sft.py, runs r1jax/sft.py's loop instead, one
with an `rm` section, configs/rm.py, r1jax/reward_model.py's; one with a
`pipeline`, configs/r1.py or distill.py, its stages: r1jax/pipeline.py).

One loop, top to bottom: config → mesh → base model → tokenizer and policy →
data → rewards and the compiled GRPO step → restore → evaluate at step 0 →
train (evaluate every `eval_every`, checkpoint every `checkpoint_every`) →
final evaluation, checkpoint and summary. Re-running the same command resumes
from the last checkpoint in `workdir`; SIGTERM / Ctrl-C save at the next step
boundary and exit. One run holds the workdir at a time (`r1jax/workdir.py`);
on every exit path (the end, a signal, an exception) the save in flight is
finished, with a bounded wait, and everything is closed.
"""
import contextlib
import json
import os
import sys
import time
import traceback

import jax
import numpy as np
from absl import app, flags
from etils import epath
from flax import nnx
from ml_collections import config_flags

from r1jax import config as rc, export, metrics, policy, sharding as shd, train_step as ts
from r1jax import loop, workdir as wd
from r1jax.loop import eta
from r1jax.checkpoint import Checkpointer, Mismatch, SaveError, config_diff
from r1jax.data import check_prompt_lengths, make_prompt
from r1jax.data.iterator import Mixture
from r1jax.data.tasks import VERIFIERS
from r1jax.rewards import programs
from r1jax.data.templates import NO_THINKING
from r1jax.rewards import CORRECTNESS, MODEL_REWARD, RewardScorer, load_reward

config_flags.DEFINE_config_file('config', None, 'a configs/*.py file', lock_config=True)

# Config keys whose change on resume matters most (shown first).
_WEIGHTY = ('task', 'rewards', 'reward_fns', 'reward_model', 'rl.', 'model.', 'general.',
            'data_dir', 'optim.', 'lora.')

# Errors that end a run with one FATAL line (they say what to do), not a traceback.
FATAL = (rc.ConfigError, Mismatch, SaveError, wd.Busy)


def main(argv):
  del argv
  run_or_exit(flags.FLAGS.config)


def run_or_exit(config) -> dict:
  """`run`, with the errors a user acts on as one FATAL line and exit code 1."""
  try:
    return run(config)
  except FATAL as e:
    print(f'FATAL: {e}', file=sys.stderr, flush=True)
    if loop.STUCK or getattr(e, 'dirty', False):
      # A save thread would keep the interpreter alive, or orbax's failed
      # writers would print hundreds of lines while it shuts down.
      sys.stdout.flush()
      os._exit(1)
    sys.exit(1)
  except BaseException:
    if loop.STUCK:  # the traceback, then out: orbax's thread would block the exit
      traceback.print_exc()
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(1)
    raise


def init_distributed(config) -> None:
  """Joins the multi-host job when asked (config.distributed or
  R1JAX_DISTRIBUTED=1). The coordinator, process count and id come from the
  cluster (TPU VM metadata, SLURM, Kubernetes) unless R1JAX_COORDINATOR,
  R1JAX_NUM_PROCESSES and R1JAX_PROCESS_ID give them (e.g. localhost tests)."""
  if not (config.distributed or os.environ.get('R1JAX_DISTRIBUTED') == '1'):
    return
  if jax.distributed.is_initialized():
    return
  env = os.environ.get
  kwargs = {}
  if env('R1JAX_COORDINATOR'):
    kwargs = dict(coordinator_address=env('R1JAX_COORDINATOR'),
                  num_processes=int(env('R1JAX_NUM_PROCESSES', '1')),
                  process_id=int(env('R1JAX_PROCESS_ID', '0')))
  jax.distributed.initialize(**kwargs)
  print(f'[r1jax] process {jax.process_index()} of {jax.process_count()}: '
        f'{jax.local_device_count()} local devices, {jax.device_count()} in all', flush=True)


def shown_changes(changed: list[str], limit: int = 10) -> str:
  """The first `limit` config differences, those that change what the run
  computes (task, rewards, the loss) first and the tiny base's build
  settings last, and how many more."""
  rank = lambda d: 0 if d.startswith(_WEIGHTY) else 2 if d.startswith('base.') else 1  # noqa: E731
  ordered = sorted(changed, key=rank)
  more = f'; and {len(ordered) - limit} more' if len(ordered) > limit else ''
  return '; '.join(ordered[:limit]) + more


def run(config) -> dict:
  """Runs the config; returns the final evaluation metrics."""
  if 'benchmarks' in config:  # configs/eval.py, configs/rejection.py: commands of their own
    command = 'r1jax.rejection' if 'keep' in config else 'r1jax.evaluate'
    raise rc.ConfigError('benchmarks', f'this is a config of python -m {command}, not of '
                         f'r1jax.launch: run python -m {command} --config=...')
  if 'pipeline' in config:  # configs/r1.py, configs/distill.py: stages of these runs
    from r1jax import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.run(config, run)
  # ------------------------------------------------------------------ config
  rc.validate(config)
  rc.check_inputs(config)
  with contextlib.ExitStack() as closing:  # runs on every way out, in reverse
    log = metrics.LibraryLog()  # library INFO to <workdir>/log.txt, not the console
    closing.callback(log.close)
    init_distributed(config)
    workdir = epath.Path(config.workdir)
    try:  # a file in the way, a read-only disk: said before anything loads
      if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
      log_path = log.to(workdir)
      lock = wd.Lock(workdir)
    except OSError as e:
      raise rc.ConfigError('workdir', f'{workdir}: {e.strerror or e}') from None
    if not wd.is_local(workdir):
      print(f'[r1jax] library log: {log_path}', flush=True)
    closing.callback(lock.release)
    if 'sft' in config:  # configs/sft.py: supervised fine-tuning
      from r1jax import sft  # pylint: disable=g-import-not-at-top
      return sft.run(config, workdir, lock, closing)
    if 'rm' in config:  # configs/rm.py: a reward model
      from r1jax import reward_model  # pylint: disable=g-import-not-at-top
      return reward_model.run(config, workdir, lock, closing)
    return _run(config, workdir, lock, closing)


def _run(config, workdir: epath.Path, lock: wd.Lock, closing: contextlib.ExitStack) -> dict:
  # -------------------------------------------------------------------- mesh
  mesh = rc.make_mesh(config)
  rc.validate_for_mesh(config, mesh)

  # ---------------------------------------------------------------- policy
  pinned = epath.Path(workdir) / wd.MODEL / export.LORA_FILE
  if config.lora.rank and pinned.exists():  # resuming LoRA: the base its adapters are for
    base = json.loads(pinned.read_text())['base']
    if os.fspath(base) != os.fspath(wd.absolute(rc.model_ckpt(config))):
      print(f'[r1jax] LoRA: the adapters in {workdir} are for the base {base} '
            f'(model.ckpt {config.model.ckpt!r} is read as that)', flush=True)
      with config.unlocked() if hasattr(config, 'unlocked') else contextlib.nullcontext():
        config.model.ckpt = base
  pol = policy.load(config, mesh)
  model, tok, tok_path, eos_ids = pol.model, pol.tok, pol.tok_path, pol.eos_ids
  graphdef = nnx.graphdef(model)
  # LoRA: the state trains the adapters; the frozen base is a step argument
  # and joins them for sampling and evaluation.
  frozen = nnx.state(model, nnx.Not(nnx.LoRAParam)) if model.cfg.lora_rank else None
  policy_params = (lambda p: nnx.merge_state(frozen, p)) if frozen is not None else (  # noqa: E731
      lambda p: p)

  # -------------------------------------------------------------------- data
  data_dir = rc.data_dir(config)
  data_key = 'data_dir' if config.task == 'local' or config.get('data_dir') else 'task'
  train = rc.load_data(data_key, config.task, 'train', data_dir)
  test = rc.load_data(data_key, config.task, 'test', data_dir)
  evaluated = [dict(test[i]) for i in range(min(config.eval.num_questions, len(test)))]
  try:  # once here, rather than when a batch draws the prompt
    for split, source in (('train', train), ('test', evaluated)):
      check_prompt_lengths(source, tok, config.rl.max_prompt_len, split)
  except ValueError as e:
    raise rc.ConfigError('rl.max_prompt_len', str(e)) from None
  attempts = config.rl.dynamic_sampling_attempts
  g = config.general
  general_train = rc.load_data('general.task', g.task, 'train', data_dir) if g.task else None
  if general_train is not None:
    try:
      check_prompt_lengths(general_train, tok, config.rl.max_prompt_len, f'{g.task} train')
    except ValueError as e:
      raise rc.ConfigError('rl.max_prompt_len', str(e)) from None
  B = config.rl.prompts_per_step
  data = Mixture(train, general_train, B * attempts, round(B * g.fraction) * attempts,
                 g.from_step, seed=config.seed, process_index=jax.process_index(),
                 process_count=jax.process_count())

  def train_example(i: int) -> dict:
    ex = data.example(i)
    return {**ex, 'prompt': make_prompt(ex)}

  # ----------------------------------------------------------------- restore
  step_cfg = ts.step_config(config, eos_ids=eos_ids, pad_id=tok.pad_id)
  optimizer = ts.make_optimizer(config.optim, config.steps * ts.updates_per_step(config))
  state = ts.init_state(model, optimizer, step_cfg, seed=config.seed)
  model_cfg = model.cfg
  del model
  ckpt = Checkpointer(workdir, keep=config.checkpoint_keep)
  closing.push(loop.closer(ckpt, config.checkpoint_wait_s))
  start = 0
  # A checkpoint of another run (its state does not fit) stops here, before
  # anything is compiled or written.
  if ckpt.latest_step() is not None:
    print(f'[r1jax] restoring the newest checkpoint in {ckpt.directory} (checking its digest)',
          flush=True)
  restored = ckpt.restore_latest(state, config.to_dict())
  export.write_model_dir(workdir, model_cfg, tok_path, tok, export.generation_config(
      tok, eos_ids, config.eval.temperature, config.eval.top_p),
      lora_base=rc.model_ckpt(config) if frozen is not None else None)
  counters = metrics.Counters()
  if restored is not None:
    start, state, meta = restored
    changed = [d for d in config_diff(meta.get('config'), config.to_dict())
               if not d.startswith(('workdir:', 'steps:'))]
    try:
      data.restore(meta['data'])
    except ValueError as e:  # another seed or data set: the order would not continue
      raise Mismatch(f'checkpoint {ckpt.directory}/{start} is of another run: {e}; the saved '
                     'config differs in: ' + shown_changes(changed)) from None
    counters = metrics.Counters(meta.get('counters'))
    print(f'[r1jax] resumed from {ckpt.directory}/{start}', flush=True)
    if changed:
      print('[r1jax] WARNING: the config differs from the checkpoint\'s in: ' +
            shown_changes(changed), flush=True)
  if restored is not None and start >= config.steps:  # rerunning a finished run
    print(f'[r1jax] {workdir} holds a finished run ({start} of {config.steps} steps); nothing '
          'to do (raise --config.steps to train on)', flush=True)
    path = workdir / 'metrics.jsonl'
    rows = [r for r in metrics.read_jsonl(path) if 'eval/pass@1' in r] if path.exists() else []
    return rows[-1] if rows else {}
  writer = metrics.Writer(workdir, resume_step=start if restored else None)
  closing.callback(writer.close)

  # ------------------------------------------------------ rewards and step
  rules = {n: w for n, w in config.rewards.items() if n != MODEL_REWARD}
  scorer = RewardScorer(rules, timeout_s=config.reward_timeout_s,
                        workers=config.reward_workers,
                        extra={**{n: load_reward(f) for n, f in config.get('reward_fns', {}).items()},
                               **programs.configured(config, rules)})
  closing.callback(scorer.close)
  rm = None
  if MODEL_REWARD in config.rewards:
    from r1jax import reward_model  # pylint: disable=g-import-not-at-top
    rm = reward_model.load(config.reward_model.ckpt, tok, mesh, config.model.param_dtype,
                           config.model.dtype)
    print(f'[r1jax] reward model: {config.reward_model.ckpt} (weight '
          f'{config.rewards[MODEL_REWARD]}, on general prompts'
          f'{", the summary only" if rm.summary_only else ""})', flush=True)
  reward_fn = ts.make_reward_fn(ts.host_reward_fn(tok, scorer, train_example, rm is not None),
                                mesh, len(scorer.names) + (rm is not None))
  train_step = ts.make_train_step(graphdef, step_cfg, optimizer, reward_fn, mesh,
                                  ts.shardings_of(state), reward_model=rm)
  rm_args = ((rm.params,) if rm is not None else ()) + ((frozen,) if frozen is not None else ())

  write = loop.safe_write(writer, workdir, ckpt)

  # -------------------------------------------------------------- evaluation
  e = config.eval
  acc_name = next((n for n in CORRECTNESS if n in config.rewards),
                  VERIFIERS[config.task][0])
  task_eval = policy.TaskEval(config, graphdef, tok, eos_ids, mesh, scorer, evaluated, acc_name,
                              config.rl.max_new_tokens, config.rl.max_prompt_len)

  general_eval = rm_scorer = None
  if g.task:  # the general prompts' own evaluation: the rule, and the reward model's score
    g_test = rc.load_data('general.task', g.task, 'test', data_dir)
    general_eval = policy.TaskEval(
        config, graphdef, tok, eos_ids, mesh, scorer,
        [dict(g_test[i]) for i in range(min(e.num_questions, len(g_test)))],
        VERIFIERS[g.task][0], config.rl.max_new_tokens, config.rl.max_prompt_len, task=g.task)
    if rm is not None:
      rm_scorer = reward_model.HostScorer(rm, tok, mesh, config.rl.max_prompt_len,
                                          config.rl.max_new_tokens, e.batch_size)

  def run_eval(step: int, forced: str = '', tag: str = '') -> dict:
    m, questions = task_eval(policy_params(state.params), forced)
    m = {k + tag: v for k, v in m.items()}
    if general_eval is not None and not forced:
      gm, g_questions = general_eval(policy_params(state.params))
      m.update({f'{k}_general': v for k, v in gm.items()})
      if rm_scorer is not None:
        flat = [x for q in g_questions for x in q]
        m['eval/rm_score_general'] = float(np.mean(rm_scorer(
            [make_prompt(general_eval.examples[x['index']]) for x in flat],
            [x['completion'] for x in flat])))
    write(step, m)
    writer.samples(step, 'eval' + tag, task_eval.samples(questions))
    print('[r1jax] ' + task_eval.line(step, m, tag), flush=True)
    if general_eval is not None and not forced:
      print(f'[r1jax] eval @ step {step}, general prompts: {g.task} pass@1 '
            f'{m["eval/pass@1_general"]:.3f}' + (f'  reward model score '
                                                  f'{m["eval/rm_score_general"]:.3f}'
                                                  if rm_scorer is not None else ''), flush=True)
    return m

  def save(step: int) -> None:
    if ckpt.latest_step() != step:
      ckpt.save(step, state, {'data': data.state(), 'step': step, 'config': config.to_dict(),
                              'counters': counters.state()})

  # -------------------------------------------------------------------- loop
  if start == 0:
    print(f'[r1jax] evaluating step 0 ({len(evaluated)} questions x {e.k}; the sampler '
          'compiles first)', flush=True)
  first_eval = run_eval(0) if start == 0 else None
  if first_eval and e.no_thinking:
    first_eval.update(run_eval(0, forced=NO_THINKING, tag='_no_thinking'))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ts.BATCH_AXES))
  stop = loop.Stop()  # from here on a signal saves at the next step boundary
  closing.callback(stop.restore)
  last_eval = first_eval
  t_start = first_done = time.time()
  step = start
  if start < config.steps:
    print(f'[r1jax] training from step {start + 1}; the first step compiles the whole GRPO step '
          '(rollout, rewards, update) and takes longest', flush=True)
  for step in range(start + 1, config.steps + 1):
    ckpt.check()  # a failed background save stops the run now
    lock.check()  # another run took the workdir: stop
    examples = data.next(step)
    ids, mask = tok.encode_batch([make_prompt(x) for x in examples],
                                 max_len=config.rl.max_prompt_len)
    # Global arrays from each host's own prompts (hosts read disjoint slices).
    batch = ts.Batch(*(jax.make_array_from_process_local_data(rows, x) for x in (
        ids, mask, np.asarray([x['index'] for x in examples], np.int32))))
    t0 = time.time()
    state, m = train_step(state, batch, *rm_args)
    m = metrics.scalars(m)
    dt = time.time() - t0
    m.update(step_seconds=dt, tokens_per_s=m['tokens'] / dt)
    m.update(counters.step(_summed({**scorer.counters(),
                                    'reward/callback_failures': reward_fn.failures[0]})))
    write(step, m)
    now = time.time()
    first_done = now if step == start + 1 else first_done
    print('[r1jax] ' + metrics.console_line(step, config.steps, m, now - t_start,
                                            eta(start, step, config.steps, first_done, now)),
          flush=True)
    what = ''
    if m['nonfinite_skipped']:
      # The step did not apply those updates (the state is the last finite
      # one), so stopping here keeps every checkpoint finite.
      what = (f'step {step}: {int(m["nonfinite_skipped"])} of '
              f'{config.rl.num_iterations * config.rl.minibatches} updates had a non-finite '
              f'loss, gradient or result (loss {m["loss"]:.4g}, grad norm {m["grad_norm"]:.4g})')
    stopped, evaluated = loop.end_of_step(config, step, config.steps, what, ckpt, save, run_eval,
                                          stop)
    last_eval = evaluated or last_eval
    if stopped:
      return last_eval or {}

  # --------------------------------------------------------------- summary
  if step > start or last_eval is None:
    last_eval = run_eval(step)
  if step > start:
    save(step)
  ckpt.finish(config.checkpoint_wait_s)
  summary = {'steps': step, 'minutes': (time.time() - t_start) / 60, **(last_eval or {})}
  if first_eval:
    summary['eval/pass@1 at step 0'] = first_eval['eval/pass@1']
    if 'eval/pass@1_no_thinking' in first_eval:
      summary['eval/pass@1 at step 0, no thinking'] = first_eval['eval/pass@1_no_thinking']
  # The console line: the headline figures (metrics.jsonl has every one).
  shown = [k for k in summary if not k.startswith('eval/') or k in (
      'eval/pass@1', 'eval/pass@1_stderr', f'eval/cons@{e.k}', 'eval/format_rate',
      'eval/length', 'eval/truncated') or ' at step 0' in k]
  print('[r1jax] done: ' + '  '.join(
      f'{k} {summary[k]:.3f}' if isinstance(summary[k], float) else f'{k} {summary[k]}'
      for k in shown), flush=True)
  return summary


def _summed(counts: dict[str, float]) -> dict[str, float]:
  """Each host's counters summed over hosts (each scores its own rows)."""
  if jax.process_count() == 1:
    return counts
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  keys = sorted(counts)
  total = multihost_utils.process_allgather(np.asarray([counts[k] for k in keys], np.int32))
  return dict(zip(keys, np.asarray(total).sum(0).tolist()))


if __name__ == '__main__':
  app.run(main, flags_parser=rc.parse_flags)

"""The plumbing every training loop shares (r1jax/launch.py's RL loop and
r1jax/sft.py's): stopping at a step boundary on a signal, finishing the save
in flight on the way out, and the time left."""
import errno
import signal
import sys
import time
from typing import Any, Callable

from r1jax.checkpoint import Checkpointer, SaveError

STUCK = []  # Checkpointers whose save did not finish in config.checkpoint_wait_s


class Stop:
  """SIGTERM/SIGINT set a flag; the loop saves and exits at the next step."""

  def __init__(self):
    self.requested = False
    self.previous = {sig: signal.signal(sig, self._handle)
                     for sig in (signal.SIGTERM, signal.SIGINT)}

  def restore(self):
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    if self.requested:  # a second signal: stop now
      raise KeyboardInterrupt
    self.requested = True
    print(f'\n[r1jax] signal {signum}: saving at the end of this step, then exiting', flush=True)


def eta(start: int, step: int, total: int, first_done: float, now: float) -> float | None:
  """Seconds left at the pace of the steps after this process's first
  (which compiles); None on the first."""
  if step <= start + 1:
    return None
  return (now - first_done) / (step - start - 1) * (total - step)


def closer(ckpt: Checkpointer, timeout_s: float):
  """Exit callback: finish the save in flight (bounded) and close orbax. When
  the run is already failing, a failed save is a warning, not a second error."""

  def close(exc_type, exc, tb):
    del exc, tb
    try:
      ckpt.close(timeout_s)
    except SaveError as e:
      if ckpt.stuck:
        STUCK.append(ckpt)
      if exc_type is None:
        raise
      print(f'[r1jax] WARNING: {e}', file=sys.stderr, flush=True)
    return False

  return close


def end_of_step(config, step: int, total: int, nonfinite: str, ckpt: Checkpointer,
                save: Callable[[int], None], run_eval: Callable[[int], dict], stop: Stop
                ) -> tuple[bool, dict | None]:
  """What a loop does after step `step` of `total`: a non-finite update
  (`nonfinite` says what it was; '' when none) stops the run, nothing saved
  (or is a warning with skip_nonfinite); evaluation every eval_every steps
  (the last step's comes after the loop); a checkpoint every
  checkpoint_every steps or when a signal asked to stop. Returns (stopped,
  the evaluation's metrics or None)."""
  if nonfinite:
    if not config.skip_nonfinite:
      ckpt.finish(config.checkpoint_wait_s)
      raise FloatingPointError(
          f'{nonfinite}; they were not applied and nothing was saved (last checkpoint: '
          f'{ckpt.latest_step()}). Lower optim.lr, or set skip_nonfinite=True to skip such '
          'updates and go on.')
    print(f'[r1jax] WARNING: {nonfinite}; skipped (skip_nonfinite=True)', flush=True)
  evaluated = None
  if config.eval_every and step % config.eval_every == 0 and step != total:
    evaluated = run_eval(step)
  if (config.checkpoint_every and step % config.checkpoint_every == 0) or stop.requested:
    save(step)
  if stop.requested:
    ckpt.finish(config.checkpoint_wait_s)
    print(f'[r1jax] stopped at step {step}; run the same command to resume', flush=True)
  return stop.requested, evaluated


def safe_write(writer, workdir, ckpt: Checkpointer) -> Callable[[int, dict], None]:
  """`writer.write`, with a full disk as a SaveError that says the last
  checkpoint is intact."""
  def write(step: int, m: dict) -> None:
    try:
      writer.write(step, m)
    except OSError as e:
      if e.errno != errno.ENOSPC:
        raise
      raise SaveError(f'no space left on {workdir} while writing the metrics of step {step}; '
                      f'checkpoint {ckpt.latest_step()} is intact') from e
  return write


def supervised(config, workdir, lock, closing, *, state, order, steps: int,
               batch: Callable[[list[dict]], dict], step_fn: Callable,
               evaluate: Callable[[Any, int], tuple[dict, list[dict]]], finish: Callable[[Any, int], dict],
               finished: Callable[[], bool], shown: tuple[str, ...]) -> dict:
  """The loop of a supervised trainer (r1jax/sft.py, r1jax/reward_model.py):
  restore the newest checkpoint (the state and the data order: a resumed run
  sees the same batches), evaluate at step 0, then `steps` steps of
  `step_fn(state, batch(order.next()))`, evaluating, checkpointing and
  stopping on a signal as the RL loop does, and at the end evaluate, save
  and `finish` (e.g. export; its dict joins the summary). `evaluate(state,
  step)` returns the metrics it printed ({} for none); `finished()` says
  whether a finished run's outputs exist (then nothing runs). Returns the
  summary (the last evaluation, with the step-0 values of `shown` keys)."""
  from r1jax import metrics  # pylint: disable=g-import-not-at-top
  from r1jax.checkpoint import Mismatch, config_diff  # pylint: disable=g-import-not-at-top
  ckpt = Checkpointer(workdir, keep=config.checkpoint_keep)
  closing.push(closer(ckpt, config.checkpoint_wait_s))
  if ckpt.latest_step() is not None:
    print(f'[r1jax] restoring the newest checkpoint in {ckpt.directory} (checking its digest)',
          flush=True)
  restored = ckpt.restore_latest(state, config.to_dict())
  start = 0
  if restored is not None:
    start, state, meta = restored
    try:
      order.restore(meta['data'])
    except ValueError as e:
      changed = [d for d in config_diff(meta.get('config'), config.to_dict())
                 if not d.startswith(('workdir:', 'steps:'))]
      raise Mismatch(f'checkpoint {ckpt.directory}/{start} is of another run: {e}; the saved '
                     'config differs in: ' + '; '.join(changed[:10])) from None
    print(f'[r1jax] resumed from {ckpt.directory}/{start}', flush=True)
  if restored is not None and start >= steps and finished():
    print(f'[r1jax] {workdir} holds a finished run ({start} of {steps} steps); nothing to do',
          flush=True)
    path = workdir / 'metrics.jsonl'
    rows = [r for r in metrics.read_jsonl(path) if shown[0] in r] if path.exists() else []
    return rows[-1] if rows else {}
  writer = metrics.Writer(workdir, resume_step=start if restored else None)
  closing.callback(writer.close)
  write = safe_write(writer, workdir, ckpt)
  current = [state]

  def run_eval(step: int) -> dict:
    m, samples = evaluate(current[0], step)
    if m:
      write(step, m)
    if samples:
      writer.samples(step, 'eval', samples)
    return m

  def save(step: int) -> None:
    if ckpt.latest_step() != step:
      ckpt.save(step, current[0], {'data': order.state(), 'step': step,
                                   'config': config.to_dict()})

  stop = Stop()
  closing.callback(stop.restore)
  first_eval = run_eval(0) if start == 0 else None
  last_eval = first_eval
  t_start = first_done = time.time()
  step = start
  if start < steps:
    print(f'[r1jax] training from step {start + 1} of {steps}; the first step compiles',
          flush=True)
  for step in range(start + 1, steps + 1):
    ckpt.check()
    lock.check()
    data = batch(order.next())
    t0 = time.time()
    state, m = step_fn(state, data)
    current[0] = state
    m = metrics.scalars(m)
    dt = time.time() - t0
    m.update(step_seconds=dt, tokens_per_s=m['tokens'] / dt,
             epoch=order.position / len(order.source))
    write(step, m)
    now = time.time()
    first_done = now if step == start + 1 else first_done
    print('[r1jax] ' + metrics.console_line(step, steps, m, now - t_start,
                                            eta(start, step, steps, first_done, now)),
          flush=True)
    what = (f'step {step}: the update had a non-finite loss, gradient or result (grad norm '
            f'{m["grad_norm"]:.4g})' if m.get('nonfinite') else '')
    stopped, evaluated = end_of_step(config, step, steps, what, ckpt, save, run_eval, stop)
    last_eval = evaluated or last_eval
    if stopped:
      return last_eval or {}
  if step > start or last_eval is None:
    last_eval = run_eval(step)
  save(step)
  ckpt.finish(config.checkpoint_wait_s)
  summary = {'steps': step, 'minutes': (time.time() - t_start) / 60, **finish(state, step),
             **(last_eval or {})}
  for k in shown:
    if first_eval and k in first_eval:
      summary[f'{k} at step 0'] = first_eval[k]
  listed = [k for k in summary if not k.startswith('eval/') or k in shown or ' at step 0' in k]
  print('[r1jax] done: ' + '  '.join(
      f'{k} {summary[k]:.3f}' if isinstance(summary[k], float) else f'{k} {summary[k]}'
      for k in listed), flush=True)
  return summary

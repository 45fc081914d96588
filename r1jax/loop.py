"""The plumbing every training loop shares (r1jax/launch.py's RL loop and
r1jax/sft.py's): stopping at a step boundary on a signal, finishing the save
in flight on the way out, and the time left."""
import errno
import signal
import sys
from typing import Callable

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

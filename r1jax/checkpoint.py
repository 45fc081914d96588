"""Orbax checkpoints of the train state plus a JSON item (data position,
config, anything small), in `<workdir>/checkpoints/<step>/`.

Orbax writes each step into a temporary directory and renames it only when
complete, so a crash or kill during a save leaves the previous checkpoint as
the latest good one; a finished checkpoint that cannot be read back (a file
lost or damaged later) is skipped by `restore_latest` with a warning, moved
aside to `<step>.unreadable-<time>` (so that the retrained step is saved
again), and the one before it is used. Restoring takes an abstract state whose leaves carry the
target shardings, so a checkpoint restores onto any mesh or process count.
"""
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from absl import logging


class Checkpointer:
  """Keeps the last `keep` checkpoints; saves asynchronously."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    """Restores `step` into the structure, shapes and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def restore_latest(self, like: Any) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of the newest checkpoint that restores, or None
    when there is none; unreadable ones are reported and skipped."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return (step, *self.restore(step, like))
      except Exception as e:  # pylint: disable=broad-except
        aside = self._move_aside(step)
        message = (f'checkpoint {self.directory}/{step} cannot be restored '
                   f'({type(e).__name__}: {str(e)[:300]}); moved to {aside}, trying the '
                   'previous one')
        logging.warning(message)
        print(f'[r1jax] WARNING: {message}', flush=True)
    return None

  def _move_aside(self, step: int) -> str:
    """Renames an unreadable checkpoint out of the manager's view, so that
    the retrained step can be saved again (it was never replaced), keeping
    its files for a look."""
    aside = os.path.join(self.directory, f'{step}.unreadable-{time.strftime("%Y%m%d-%H%M%S")}')
    if jax.process_index() == 0:
      os.replace(os.path.join(self.directory, str(step)), aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'r1jax checkpoint {step} moved aside')
    self.manager.reload()
    return aside

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

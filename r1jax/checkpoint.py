"""Orbax checkpoints of the train state plus a JSON item (data position,
config, running counters), in `<workdir>/checkpoints/<step>/`; paths are
`etils.epath`, so a `gs://` workdir stays one.

What a checkpoint directory promises, and how each promise is kept:
- *A kill or crash during a save leaves the previous checkpoint the latest.*
  Orbax writes each step into a temporary directory and renames it (or, on
  GCS, writes `commit_success.txt`) only when complete.
- *Bit-rot is found.* Once a save has finished, each process records a
  SHA-256 digest of the files it wrote (`r1jax-digest.<process>.json`); a
  restore first checks them. A digest mismatch, a lost file or any read
  error makes the checkpoint unreadable: it is moved aside to
  `<step>.unreadable-<time>` (kept for a look, and out of the way so that
  the retrained step is saved again) and the one before it is used.
- *A changed run is refused, never restarted.* A checkpoint whose state has
  other leaves, shapes or dtypes than this run's state (another model,
  `rl.beta` 0 ↔ > 0, a different optimizer chain) raises `Mismatch`, naming
  the leaves and the saved config keys that differ, before anything is
  compiled or overwritten.
- *A failed save says why and which checkpoint is intact* (`SaveError`):
  "no space left on <dir> while saving step N; checkpoint K is intact".

Restoring takes an abstract state whose leaves carry the target shardings,
so a checkpoint restores onto any mesh or process count.
"""
import contextlib
import errno
import hashlib
import json
import shutil
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from r1jax import workdir as wd

DIGEST = 'r1jax-digest'
_HANDLER_SET = False  # our jax.Array handler is registered with orbax


class Mismatch(Exception):
  """The newest checkpoint is of another run: its state does not fit."""


class SaveError(Exception):
  """A save failed; the message names the cause and the intact checkpoint."""
  stuck = False  # the save's thread is still running
  dirty = False  # orbax's background writers failed


def _any(flag: bool) -> bool:
  """True on every process when `flag` is on any (a decision all must share,
  so that none goes on alone into a collective)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(multihost_utils.process_allgather(np.int32(bool(flag))).any())


def _warn(message: str) -> None:
  logging.warning(message)
  print(f'[r1jax] WARNING: {message}', flush=True)


def _flat(tree) -> dict[tuple, Any]:
  return ocp.tree.to_flat_dict(tree)


def _leaf_spec(x) -> tuple:
  return tuple(x.shape), str(np.dtype(x.dtype))


def describe_mismatch(saved: dict[tuple, tuple], wanted: dict[tuple, tuple],
                      limit: int = 8) -> list[str]:
  """Lines naming the leaves (`a/b/c`) that differ between a saved state and
  this run's: missing on either side, or another shape or dtype."""
  name = '/'.join
  lines = []
  for only, other, where in ((saved, wanted, 'in the checkpoint, not in this run\'s state'),
                             (wanted, saved, 'in this run\'s state, not in the checkpoint')):
    missing = sorted(only.keys() - other.keys())
    whole = {k[0] for k in missing} - {k[0] for k in other}  # subtrees missing whole
    whole = {top for top in whole if sum(k[0] == top for k in missing) > 1}
    for top in sorted(whole):
      count = sum(k[0] == top for k in missing)
      lines.append(f'{top}/ ({count} leaves): {where}')
    lines += [f'{name(k)}: {where}' for k in missing if k[0] not in whole]
  for k in sorted(saved.keys() & wanted.keys()):
    if saved[k] != wanted[k]:
      (s_shape, s_dtype), (w_shape, w_dtype) = saved[k], wanted[k]
      lines.append(f'{name(k)}: {s_dtype}{list(s_shape)} in the checkpoint, '
                   f'{w_dtype}{list(w_shape)} in this run')
  if len(lines) > limit:
    lines = lines[:limit] + [f'... and {len(lines) - limit} more']
  return lines


def config_diff(saved: dict | None, current: dict | None) -> list[str]:
  """`key: saved -> current` for every config key that differs."""
  if saved is None or current is None:
    return []

  def flat(d, prefix=''):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f'{prefix}{k}.'))
      else:
        out[prefix + k] = v
    return out

  a, b = flat(saved), flat(json.loads(json.dumps(current)))  # tuples as lists, as saved
  show = lambda d, k: repr(d[k]) if k in d else '(absent)'  # noqa: E731
  return [f'{k}: {show(a, k)} -> {show(b, k)}' for k in sorted(a.keys() | b.keys())
          if k not in a or k not in b or a[k] != b[k]]


def _is_no_space(e: BaseException) -> bool:
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if getattr(e, 'errno', None) == errno.ENOSPC or 'No space left' in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def _size(root: epath.Path) -> int:
  return sum(path.stat().length for _, path in _walk(root))


def _digest_file(path: epath.Path) -> str:
  h = hashlib.sha256()
  with path.open('rb') as f:
    while chunk := f.read(1 << 22):
      h.update(chunk)
  return h.hexdigest()


def _owner(relative: str) -> int:
  """The process whose files these are: orbax's OCDBT and array metadata
  files are per process (`ocdbt.process_3/`, `array_metadatas/process_3`),
  the rest are process 0's."""
  for part in relative.split('/'):
    if part.startswith(('ocdbt.process_', 'process_')) and part.rpartition('_')[2].isdigit():
      return int(part.rpartition('_')[2])
  return 0


def _walk(root: epath.Path, prefix: str = ''):
  """(relative path, path) of every file under `root` but the digests. By
  `iterdir` rather than `walk`/`glob`, whose results lose the `gs://` scheme
  on fsspec backends."""
  for path in root.iterdir():
    relative = prefix + path.name
    if path.is_dir():
      yield from _walk(path, relative + '/')
    elif not relative.startswith(DIGEST):
      yield relative, path


@contextlib.contextmanager
def _errors_only():
  """absl logging at ERROR inside (orbax's expected warnings)."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


class Checkpointer:
  """Keeps the last `keep` checkpoints; saves asynchronously."""

  def __init__(self, workdir: epath.PathLike, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    """read_only: a reader (evaluation, export, a reward model's load) that
    neither creates the directory nor sweeps its temporary directories,
    which may be the saves in flight of a run training there."""
    # Orbax's tensorstore writes need absolute local paths (a relative one,
    # like the default workdir, fails the first save).
    self.directory = wd.absolute(workdir) / 'checkpoints'
    # Replica-parallel saving splits each replicated shard over its replicas
    # with eager slices (one compile per leaf and shape: 9 s of a tiny model's
    # first save here). It pays only across hosts, and only for big arrays.
    global _HANDLER_SET
    if not _HANDLER_SET:
      with _errors_only():  # orbax warns that it overrides its default
        ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
            use_replica_parallel=jax.process_count() > 1,
            min_slice_bytes_for_replica_parallel=1 << 20), override=True)
      _HANDLER_SET = True
    # A reader: orbax warns that it is one, and what it set for it.
    with _errors_only() if read_only else contextlib.nullcontext():
      self.manager = ocp.CheckpointManager(
          self.directory,
          item_handlers={'state': ocp.StandardCheckpointHandler(),
                         'meta': ocp.JsonCheckpointHandler()},  # known before a save
          options=ocp.CheckpointManagerOptions(
              max_to_keep=None if read_only else keep, enable_async_checkpointing=async_save,
              create=not read_only, cleanup_tmp_directories=not read_only,
              save_interval_steps=0 if read_only else 1, read_only=read_only))
    self.pending = None  # the step being saved in the background
    self.stuck = False  # a save did not finish in its time: exit without waiting

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _error(self, step: int, e: BaseException) -> SaveError:
    """A SaveError for orbax's exception `e`; `dirty`: orbax's background
    tasks are left failing (the process should exit without tearing them
    down, which prints hundreds of lines)."""
    intact = self._intact()
    if _is_no_space(e):
      error = SaveError(f'no space left on {self.directory} while saving step {step}; {intact}. '
                        'Free space (or set checkpoint_keep lower) and rerun the same command.')
    else:
      error = SaveError(f'saving step {step} to {self.directory} failed '
                        f'({type(e).__name__}: {str(e)[:500]}); {intact}')
    error.dirty = True
    return error

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Starts saving `step` in the background (after the previous save has
    finished and its digest is written)."""
    self.finish()
    self._check_space(step, state)
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._error(step, e) from e
    self.pending = step

  def _check_space(self, step: int, state: Any) -> None:
    """A local disk without room for another checkpoint (the size of the
    newest, or of the raw state before the first) is refused before anything
    is written: orbax's writers fail noisily and a step late."""
    if '://' in str(self.directory):
      return
    latest = self.manager.latest_step()
    need = (_size(self.directory / str(latest)) if latest is not None else
            sum(x.nbytes for x in jax.tree.leaves(state)))
    free = shutil.disk_usage(self.directory).free
    if jax.process_count() > 1:  # one decision, process 0's (in MiB: int32 without x64)
      mib = np.int32(min(free >> 20, 2**31 - 1))
      free = int(multihost_utils.broadcast_one_to_all(mib)) << 20
    if free < need:
      raise SaveError(f'no space left on {self.directory} while saving step {step} '
                      f'({need / 2**20:.0f} MiB needed, {free / 2**20:.0f} MiB free); '
                      f'{self._intact()}. Free space (or set checkpoint_keep lower) and '
                      'rerun the same command.')

  def _intact(self) -> str:
    self.manager.reload()
    intact = self.manager.latest_step()
    return f'checkpoint {intact} is intact' if intact is not None else 'no checkpoint is on disk'

  def check(self) -> None:
    """Between steps: once the background save is done, finishes it (its
    digest is written, and a failure, e.g. a full disk, raises SaveError now
    rather than at the next save). All processes decide together."""
    if self.pending is not None and not _any(self.manager.is_saving_in_progress()):
      self.finish()

  def finish(self, timeout_s: float | None = None) -> None:
    """Waits (at most `timeout_s`) for the background save, then records its
    digest. Raises SaveError if the save failed or did not finish in time."""
    if self.pending is None:
      return
    step = self.pending
    failure = []

    def wait():
      try:
        self.manager.wait_until_finished()
      except BaseException as e:  # pylint: disable=broad-except
        failure.append(e)

    waiter = threading.Thread(target=wait, daemon=True, name='r1jax-checkpoint-wait')
    waiter.start()
    waiter.join(timeout_s)
    if waiter.is_alive():
      error = SaveError(f'the save of step {step} to {self.directory} did not finish within '
                        f'{timeout_s:.0f} s; the checkpoint before it is the last good one')
      error.stuck = self.stuck = True  # its thread cannot be stopped
      raise error
    self.pending = None
    if not failure:
      try:
        self._write_digest(step)
      except Exception as e:  # pylint: disable=broad-except
        failure.append(e)
    if _any(failure):
      e = failure[0] if failure else RuntimeError('the save failed on another process')
      raise self._error(step, e) from e

  def _write_digest(self, step: int) -> None:
    root = self.directory / str(step)
    if not root.exists():  # already dropped (keep=...) by a later save
      return
    me = jax.process_index()
    files = {rel: _digest_file(p) for rel, p in _walk(root) if _owner(rel) == me}
    record = {'step': step, 'process': me, 'processes': jax.process_count(), 'sha256': files}
    tmp = root / f'{DIGEST}.{me}.json.tmp'
    tmp.write_text(json.dumps(record, indent=0))
    tmp.rename(root / f'{DIGEST}.{me}.json')

  def verify(self, step: int) -> tuple[str | None, bool]:
    """(problem, verified): problem is None when the digests of `step` match
    its files, else what is wrong; verified is False when there is no
    complete digest (the run stopped between the commit and the digest), in
    which case the checkpoint is accepted unverified, with a warning."""
    root = self.directory / str(step)
    problem, verified = None, True
    try:
      records = sorted((p for p in root.iterdir()
                        if p.name.startswith(DIGEST) and p.name.endswith('.json')), key=str)
      parsed = [json.loads(p.read_text()) for p in records]
      verified = bool(parsed) and len(parsed) >= parsed[0]['processes']
      me, count = jax.process_index(), jax.process_count()
      for i, record in enumerate(parsed):
        if i % count != me or problem:
          continue
        for rel, want in record['sha256'].items():
          file = root / rel
          if not file.exists():
            problem = f'{rel} is missing'
          elif _digest_file(file) != want:
            problem = f'{rel} does not match its digest (damaged after it was written)'
          if problem:
            break
    except Exception as e:  # pylint: disable=broad-except
      problem = f'its digest cannot be read ({type(e).__name__}: {str(e)[:200]})'
    if _any(problem is not None) and problem is None:
      problem = 'a file does not match its digest (found by another process)'
    if not problem and not verified:
      _warn(f'checkpoint {root} has no complete digest (the run stopped before recording '
            'it); restoring it unverified')
    return problem, verified

  def saved_config(self, step: int) -> dict | None:
    out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return out.meta.get('config')

  def check_fits(self, step: int, like: Any, config: dict | None = None) -> None:
    """Raises Mismatch if checkpoint `step` has other leaves, shapes or
    dtypes than `like`, naming them and the saved config keys that differ."""
    saved = {k: _leaf_spec(v) for k, v in
             _flat(self.manager.item_metadata(step)['state'].tree).items()
             if v is not None and hasattr(v, 'shape')}
    wanted = {k: _leaf_spec(v) for k, v in
              _flat(ocp.tree.serialize_tree(like, keep_empty_nodes=True)).items()
              if v is not None and hasattr(v, 'shape')}
    leaves = describe_mismatch(saved, wanted)
    if not leaves:
      return
    try:
      diff = config_diff(self.saved_config(step), config) if config is not None else []
    except Exception as e:  # pylint: disable=broad-except
      diff = [f'(the saved config could not be read: {type(e).__name__}: {e})']
    diff = [d for d in diff if not d.startswith('workdir:')]
    raise Mismatch(
        f'checkpoint {self.directory / str(step)} is of another run; its state does not fit '
        f'this config:\n  ' + '\n  '.join(leaves) +
        ('\nthe saved config differs in:\n  ' + '\n  '.join(diff[:20]) if diff else '') +
        '\nTo continue that run, rerun it with its own config (saved in the checkpoint\'s '
        '`meta` item); to start another run, use another workdir. Nothing was changed.')

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    """Restores `step` into the structure, shapes and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def restore_params(self, step: int, target: Any) -> Any:
    """The policy's `params` of checkpoint `step` alone (the optimizer state
    and the reference are not read), into the shapes, dtypes and shardings
    of `target` (a tree of jax.ShapeDtypeStruct)."""
    args = ocp.checkpoint_utils.construct_restore_args(target)
    out = ocp.PyTreeCheckpointer().restore(
        self.directory / str(step) / 'state', args=ocp.args.PyTreeRestore(
            item={'params': target}, restore_args={'params': args}, partial_restore=True))
    return out['params']

  def restore_latest(self, like: Any, config: dict | None = None
                     ) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of the newest checkpoint that restores, or None
    when there is none. Unreadable ones (a file damaged or lost: the digest
    says so; or, without a digest, reading fails) are reported, moved aside
    and skipped. One of another run raises Mismatch; an error restoring a
    checkpoint whose files match their digest (out of memory, a bad mesh) is
    raised, not taken for damage."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      problem, verified = self.verify(step)
      if problem is None:
        self.check_fits(step, like, config)
        restored = error = None
        try:
          restored = (step, *self.restore(step, like))
        except Exception as e:  # pylint: disable=broad-except
          error = e
        if not _any(error is not None):
          return restored
        if verified:  # the files are intact: not damage, a real error
          raise error or RuntimeError(f'restoring {self.directory / str(step)} failed on '
                                      'another process')
        problem = (f'{type(error).__name__}: {str(error)[:300]}' if error else
                   'reading it failed on another process')
      aside = self._move_aside(step)
      _warn(f'checkpoint {self.directory / str(step)} cannot be restored ({problem}); moved '
            f'to {aside}, trying the previous one')
    return None

  def _move_aside(self, step: int) -> epath.Path:
    """Renames an unreadable checkpoint out of the manager's view, so that
    the retrained step can be saved again (it was never replaced), keeping
    its files for a look."""
    aside = self.directory / f'{step}.unreadable-{time.strftime("%Y%m%d-%H%M%S")}'
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'r1jax checkpoint {step} moved aside')
    self.manager.reload()
    return aside

  def wait(self) -> None:
    self.finish()

  def close(self, timeout_s: float | None = None) -> None:
    """Finishes the background save (bounded by `timeout_s`) and closes the
    manager; the manager is closed even when the save failed."""
    try:
      self.finish(timeout_s)
    finally:
      if self.pending is None:  # a save still running would block close()
        try:
          # The manager's start-up sweep of temporary directories runs on a
          # thread that close() does not wait for: a run that stops before
          # its first save would leave it to fail at interpreter exit (orbax
          # logs its traceback). Awaited first; no public API does.
          sweep = getattr(self.manager, '_cleanup_tmp_directory_future', None)
          if sweep is not None:
            sweep.result(timeout=timeout_s)
        except Exception as e:  # pylint: disable=broad-except
          logging.warning('the sweep of temporary checkpoint directories: %s', e)
        try:
          self.manager.close()
        except Exception as e:  # pylint: disable=broad-except
          logging.warning('closing the checkpoint manager: %s', e)  # reported by finish()

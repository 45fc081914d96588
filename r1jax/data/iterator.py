"""Deterministic, resumable, host-sharded batches of examples.

The data order is a function of (seed, position) only. Epoch e visits the
source in the order `np.random.default_rng((seed, e)).permutation(n)`; global
position p is example perm_{p // n}[p % n]. Step s takes the global batch of
positions [s*B, (s+1)*B), running on into the next epoch when one ends, so
every batch is full. Host h of H gets the contiguous slice
[h*B/H, (h+1)*B/H) of that global batch and reads only those examples.

The state is the number of global examples consumed. It is the same on every
host, so a checkpoint restores on any number of hosts, and restoring it with
the same seed and source gives the same batches as an uninterrupted run.
"""
import numpy as np

__all__ = ['ArraySource', 'Mixture', 'PromptIterator']


class PromptIterator:
  """`next()` gives this host's batch_size // process_count examples, each a
  copy of the source's dict with 'index' (its index in the source) added."""

  def __init__(self, source, batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    if len(source) == 0:
      raise ValueError('the source has no examples')
    if batch_size <= 0 or batch_size % process_count:
      raise ValueError(f'batch_size={batch_size} must be a positive multiple of '
                       f'process_count={process_count}')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} not in [0, {process_count})')
    self.source = source
    self.batch_size = batch_size
    self.seed = seed
    self.process_index, self.process_count = process_index, process_count
    self.per_host = batch_size // process_count
    self.position = 0
    self._epoch, self._perm = -1, None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      self._epoch = epoch
      self._perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.source))
    return self._perm

  def indices(self, count: int | None = None) -> list[int]:
    """Source indices of this host's slice of the next global batch (of
    `count` examples; default batch_size)."""
    count = self.batch_size if count is None else count
    per_host = count // self.process_count
    start = self.position + self.process_index * per_host
    n = len(self.source)
    return [int(self._permutation(p // n)[p % n]) for p in range(start, start + per_host)]

  def next(self, count: int | None = None) -> list[dict]:
    """This host's examples of the next global batch (of `count`, a multiple
    of the process count; default batch_size)."""
    count = self.batch_size if count is None else count
    if count % self.process_count:
      raise ValueError(f'count={count} is not a multiple of process_count={self.process_count}')
    batch = [{**self.source[i], 'index': i} for i in self.indices(count)]
    self.position += count
    return batch

  __next__ = next

  def __iter__(self):
    return self

  def state(self) -> dict:
    return {'position': self.position, 'seed': int(self.seed),
            'num_examples': len(self.source)}

  def restore(self, state: dict):
    """Continues from `state()`; a seed or source size in it must match ours."""
    for key, ours in (('seed', self.seed), ('num_examples', len(self.source))):
      if key in state and int(state[key]) != ours:
        raise ValueError(f'data state has {key}={int(state[key])}, this iterator {ours}: '
                         'the restored order would not continue the saved one')
    self.position = int(state['position'])


class Mixture:
  """A step's prompts: `batch_size` from the task's source; from step
  `from_step` + 1 on, `second_size` of them come from a second source (R1's
  stage 4: general prompts only in the last part of the stage). Each example
  gets 'kind' ('general' for the second source's) and 'index', its id: the
  second source's follow the first's (len(first) + i). Each source keeps its
  own resumable order (data/iterator.py's); state() holds both."""

  def __init__(self, first, second, batch_size: int, second_size: int, from_step: int,
               seed: int, process_index: int = 0, process_count: int = 1):
    kw = dict(seed=seed, process_index=process_index, process_count=process_count)
    self.first = PromptIterator(first, batch_size, **kw)
    self.second = (PromptIterator(second, second_size, **kw)
                   if second is not None and second_size else None)
    self.batch_size, self.from_step = batch_size, from_step

  def next(self, step: int) -> list[dict]:
    if self.second is None or step <= self.from_step:
      return [{**x, 'kind': x.get('kind', 'task')} for x in self.first.next()]
    offset = len(self.first.source)
    general = [{**x, 'index': x['index'] + offset, 'kind': 'general'}
               for x in self.second.next()]
    return [{**x, 'kind': x.get('kind', 'task')}
            for x in self.first.next(self.batch_size - self.second.batch_size)] + general

  def example(self, i: int) -> dict:
    """The example with id i (as `next` gave it)."""
    offset = len(self.first.source)
    if i < offset:
      return {**self.first.source[i], 'index': i}
    return {**self.second.source[i - offset], 'index': i, 'kind': 'general'}

  def state(self) -> dict:
    state = self.first.state()
    if self.second is not None:
      state['general'] = self.second.state()
    return state

  def restore(self, state: dict):
    self.first.restore(state)
    if self.second is not None and 'general' in state:
      self.second.restore(state['general'])


class ArraySource:
  """Rows of host arrays (a NamedTuple of [n, ...] arrays: packed SFT rows,
  preference pairs) as a PromptIterator source: `source[i]` is row i, and
  `take` gathers the rows of a batch."""

  def __init__(self, arrays):
    self.arrays = arrays

  def __len__(self) -> int:
    return len(self.arrays[0])

  def __getitem__(self, i: int) -> dict:
    return {'row': i}

  def take(self, examples: list[dict]):
    idx = np.asarray([x['index'] for x in examples], np.int64)
    return type(self.arrays)(*(x[idx] for x in self.arrays))

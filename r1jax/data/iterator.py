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

__all__ = ['PromptIterator']


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
    self.per_host = batch_size // process_count
    self.offset = process_index * self.per_host
    self.position = 0
    self._epoch, self._perm = -1, None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      self._epoch = epoch
      self._perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.source))
    return self._perm

  def indices(self) -> list[int]:
    """Source indices of this host's slice of the next global batch."""
    n = len(self.source)
    return [int(self._permutation(p // n)[p % n])
            for p in range(self.position + self.offset,
                           self.position + self.offset + self.per_host)]

  def next(self) -> list[dict]:
    batch = [{**self.source[i], 'index': i} for i in self.indices()]
    self.position += self.batch_size
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

"""Built-in reasoning tasks, generated locally as TFDS builders, and `load_split`.

  arithmetic  chains of four one-digit numbers with + and -, "7+5-3+9" -> "18",
              with the worked reduction "7+5-3+9=12-3+9=9+9=18" as `solution`
              (three dependent steps)
  countdown   reach a target from 3 or 4 numbers in 1..25 with + - * / and
              parentheses, each number at most once; `solution` is one
              expression that does it (checked by rewards.countdown)
  general     short instructions ("sort 42 7 19" -> "7 19 42"), non-reasoning
              (data/general.py): R1's general data on the tiny model
  code        small stdin/stdout programs ("read a line of numbers and print their
              sum") with 5 generated tests each and a reference solution
              (data/code.py), scored by running the program (rewards.code)
  local       question/answer files on disk (local.py), e.g. GSM8K, MATH-500, or
              code problems (tests; APPS / CodeContests / LiveCodeBench fields)

Nothing downloads. The splits are fixed: problems come from Python's
`random.Random(...).random()` seeded by a string, the one stream Python
promises to keep across versions, so every host and every machine prepares
the same examples. The test split is drawn first from its own stream and the
train split skips any problem whose canonical key (the sorted numbers, plus
the target for countdown) is in test, so a reordering of a test problem is not
a train problem either. Records are stored in generation order
(`disable_shuffling`): source index i is the example with id i.

Each host prepares its own copy under `data_dir` on first use (about a
second); with a data_dir shared between hosts, prepare once before launching
(`load_split` on one machine) so that hosts do not race to write it. A
prepared copy is reused by VERSION: a change to a generator must bump it.

Questions carry no final period: the R1-Zero template adds ". Assistant:".
"""
import contextlib
import io
import random
import re
import time
from typing import Callable

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from r1jax.data import local

__all__ = ['Arithmetic', 'Countdown', 'Source', 'TASKS', 'VERIFIERS', 'arithmetic_problem',
           'countdown_problem', 'load_split', 'reduction']

ARITHMETIC_TERMS = 4
_MAX_TARGET = 999  # countdown targets; above it a product of big numbers is the whole trick


def _randint(rng: random.Random, lo: int, hi: int) -> int:
  """Uniform in [lo, hi] from `rng.random()` alone (randrange's algorithm may change)."""
  return lo + int(rng.random() * (hi - lo + 1))


def arithmetic_problem(rng: random.Random) -> dict:
  """A chain of one-digit numbers joined by + and -, evaluated left to
  right; a '-' that would take the running total below zero becomes '+'. The
  solution reduces the expression one operation at a time."""
  terms = [str(_randint(rng, 1, 9))]
  total = int(terms[0])
  for _ in range(ARITHMETIC_TERMS - 1):
    x = _randint(rng, 1, 9)
    op = '-' if _randint(rng, 0, 1) and x <= total else '+'
    total = total + x if op == '+' else total - x
    terms.append(f'{op}{x}')
  question = ''.join(terms)
  return {'question': question, 'answer': str(total), 'solution': reduction(question)[0]}


def reduction(question: str, wrong: Callable[[int], int] = lambda value: value
              ) -> tuple[str, int]:
  """'7+5-3+9-6' -> ('7+5-3+9-6=12-3+9-6=9+9-6=18-6=12', 12): each step
  evaluates the leading operation and copies the rest. `wrong(value)` may
  replace a step's result (a plausible mistake); later steps follow it."""
  head, *rest = re.findall(r'[+-]?\d+', question)
  total, line = int(head), [question]
  while rest:
    total = wrong(total + int(rest.pop(0)))
    line.append(str(total) + ''.join(rest))
  return '='.join(line), total


# An expression node is (value, text, precedence): 2 leaf, 1 for * and /, 0 for + and -.
def _combine(a: tuple, b: tuple, op: str) -> tuple | None:
  """a op b, or None when the result would leave the positive integers.
  Parentheses only where precedence needs them."""
  (va, ta, pa), (vb, tb, pb) = a, b
  if op == '+':
    return va + vb, f'{ta}+{tb}', 0
  if op == '-':
    return (va - vb, f'{ta}-({tb})' if pb == 0 else f'{ta}-{tb}', 0) if va > vb else None
  ta = f'({ta})' if pa == 0 else ta
  if op == '*':
    return va * vb, f'{ta}*({tb})' if pb == 0 else f'{ta}*{tb}', 1
  return (va // vb, f'{ta}/({tb})' if pb < 2 else f'{ta}/{tb}', 1) if va % vb == 0 else None


def countdown_problem(rng: random.Random) -> dict:
  """Draws numbers, then a random expression tree over a random subset of
  two or more of them (so a solution exists); its value is the target. Every
  intermediate value is a positive integer, and the target is none of the
  numbers (that would make the bare target an answer)."""
  while True:
    numbers = [_randint(rng, 1, 25) for _ in range(_randint(rng, 3, 4))]
    pool = list(numbers)  # a random subset, drawn by pops (shuffle's algorithm may change)
    nodes = [(x, str(x), 2) for x in (pool.pop(_randint(rng, 0, len(pool) - 1))
                                      for _ in range(_randint(rng, 2, len(numbers))))]
    while len(nodes) > 1:
      a = nodes.pop(_randint(rng, 0, len(nodes) - 1))
      b = nodes.pop(_randint(rng, 0, len(nodes) - 1))
      a, b = (a, b) if a[0] >= b[0] else (b, a)  # larger first: a-b > 0 unless equal
      node = _combine(a, b, '+-*/'[_randint(rng, 0, 3)])
      if node is None:
        break
      nodes.append(node)
    if len(nodes) == 1 and 1 <= nodes[0][0] <= _MAX_TARGET and nodes[0][0] not in numbers:
      target, expression = nodes[0][0], nodes[0][1]
      break
  listed = ', '.join(map(str, numbers))
  return {'question': f'Using the numbers {listed}, write an expression that equals '
                      f'{target}. Each number may be used at most once; use + - * / '
                      'and parentheses',
          'answer': str(target), 'numbers': ','.join(map(str, numbers)),
          'solution': expression}


def _fixed_splits(name: str, problem: Callable[[random.Random], dict],
                  key: Callable[[dict], tuple], train_size: int,
                  test_size: int) -> dict[str, list[dict]]:
  """Test first from its own stream, then train without any test key; no
  duplicate keys within a split either."""
  splits, seen = {}, set()
  for split, size in (('test', test_size), ('train', train_size)):
    rng, examples = random.Random(f'r1jax/{name}/{split}'), []
    while len(examples) < size:
      ex = problem(rng)
      if key(ex) not in seen:
        seen.add(key(ex))
        examples.append(ex)
    splits[split] = examples
  return splits


def _features(*text_fields: str) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'id': tfds.features.Scalar(np.int64),
      **{f: tfds.features.Text() for f in text_fields}})


class Arithmetic(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Chains of + and - over one-digit numbers with a worked chain of partial results."""
  VERSION = tfds.core.Version('2.0.0')
  TRAIN_SIZE, TEST_SIZE = 20_000, 500
  # TFDS looks for a checksums file next to a builder's code; for a builder in
  # a package that lookup imports `importlib_resources`, which TFDS declares
  # only for Python < 3.9 (so: ModuleNotFoundError). Nothing downloads here.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=_features('question', 'answer', 'solution'),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    splits = _fixed_splits(
        self.name, arithmetic_problem,
        lambda ex: ex['question'],  # order matters: it fixes the chain
        self.TRAIN_SIZE, self.TEST_SIZE)
    return {s: self._generate_examples(exs) for s, exs in splits.items()}

  def _generate_examples(self, examples):
    for i, ex in enumerate(examples):
      yield i, {'id': i, **ex}


class Countdown(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Reach a target from given numbers; `numbers` is comma-separated."""
  VERSION = tfds.core.Version('1.0.0')
  TRAIN_SIZE, TEST_SIZE = 20_000, 500
  code_path = None  # as in Arithmetic

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=_features('question', 'answer', 'numbers', 'solution'),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    splits = _fixed_splits(
        self.name, countdown_problem,
        lambda ex: (tuple(sorted(map(int, ex['numbers'].split(',')))), ex['answer']),
        self.TRAIN_SIZE, self.TEST_SIZE)
    return {s: self._generate_examples(exs) for s, exs in splits.items()}

  def _generate_examples(self, examples):
    for i, ex in enumerate(examples):
      yield i, {'id': i, **ex}


class General(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Short instructions with one right response (data/general.py): sort
  three to five numbers, smallest or largest first."""
  VERSION = tfds.core.Version('2.0.0')
  TRAIN_SIZE, TEST_SIZE = 20_000, 500
  code_path = None  # as in Arithmetic

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=_features('question', 'answer', 'instruction'),
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    from r1jax.data import general  # pylint: disable=g-import-not-at-top
    splits = _fixed_splits(self.name, general.general_problem, lambda ex: ex['question'],
                           self.TRAIN_SIZE, self.TEST_SIZE)
    return {s: self._generate_examples(exs) for s, exs in splits.items()}

  def _generate_examples(self, examples):
    for i, ex in enumerate(examples):
      yield i, {'id': i, **ex}


class Code(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Small stdin/stdout programs with generated tests (data/code.py);
  `tests` is JSON text, `answer` a reference solution."""
  VERSION = tfds.core.Version('1.0.0')
  TRAIN_SIZE, TEST_SIZE = 2_000, 100
  code_path = None  # as in Arithmetic

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=_features('question', 'tests', 'answer',
                                                                  'kind'),
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    from r1jax.data import code  # pylint: disable=g-import-not-at-top
    splits = _fixed_splits(self.name, code.code_problem, lambda ex: ex['tests'],
                           self.TRAIN_SIZE, self.TEST_SIZE)
    return {s: self._generate_examples(exs) for s, exs in splits.items()}

  def _generate_examples(self, examples):
    for i, ex in enumerate(examples):
      yield i, {'id': i, **ex}


TASKS = {'arithmetic': Arithmetic, 'countdown': Countdown, 'general': General, 'code': Code}
# The correctness rewards that can score each task. Countdown's answer is an
# expression: `accuracy` or `exact_match` would take the bare target as
# correct. Local files hold whatever the user brings.
VERIFIERS = {'arithmetic': ('exact_match', 'accuracy'),
             'countdown': ('countdown', 'countdown_all'),
             'general': ('answer_match',),
             'code': ('code', 'code_fraction'),
             'local': ('accuracy', 'exact_match', 'countdown', 'countdown_all', 'code',
                       'code_fraction')}


class Source:
  """Random access to a prepared split as dicts of python str/int values."""

  def __init__(self, data_source):
    self.data_source = data_source  # tfds ArrayRecordDataSource: bytes and numpy ints

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, i: int) -> dict:
    return {k: v.decode('utf-8') if isinstance(v, bytes) else int(v)
            for k, v in self.data_source[i].items()}


def load_split(name: str, split: str, data_dir: str) -> Source | list[dict]:
  """The `split` of task `name`, with random access by index.

  'arithmetic' / 'countdown': prepared under `data_dir` on first use.
  'local': `data_dir` holds `<split>.jsonl` or `<split>.parquet`; a split
  ending in .jsonl/.parquet is a file path (relative to data_dir, or absolute).
  """
  if name == 'local':
    return local.read_split(data_dir, split)
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known: {sorted(TASKS) + ["local"]}')
  builder = TASKS[name](data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    print(f'[r1jax] preparing task {name!r} (first use) into {builder.data_dir}', flush=True)
    start = time.perf_counter()
    # TFDS prints its own banner and progress bars; they go to the log.
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
      builder.download_and_prepare()
    logging.info('TFDS while preparing %r:\n%s', name, chatter.getvalue()[-4000:])
    print(f'[r1jax] prepared task {name!r} in {time.perf_counter() - start:.1f}s', flush=True)
  if split not in builder.info.splits:
    raise ValueError(f'task {name!r} has splits {list(builder.info.splits)}, not {split!r}')
  return Source(builder.as_data_source(split))

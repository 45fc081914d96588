"""Built-in tasks (prepared once into a temporary data_dir), local files, and
the prompt iterator."""
import itertools
import json
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1jax import data
from r1jax.rewards.countdown import countdown


@pytest.fixture(scope='module')
def splits(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  return {(name, split): data.load_split(name, split, data_dir)
          for name in data.TASKS for split in ('train', 'test')}


def _all(source, n=None):
  return [source[i] for i in range(len(source) if n is None else n)]


def test_builders_prepare_and_read(splits):
  sizes = {'arithmetic': (20_000, 500), 'countdown': (20_000, 500), 'general': (20_000, 500),
           'code': (2_000, 100)}
  assert set(sizes) == set(data.TASKS)
  for name in data.TASKS:
    train, test = splits[name, 'train'], splits[name, 'test']
    assert (len(train), len(test)) == sizes[name]
    ex = test[7]
    assert ex['id'] == 7  # stored in generation order: index i is id i
    assert all(type(v) is str for k, v in ex.items() if k != 'id')
    extra = {'general': 'instruction', 'code': 'tests'}.get(name, 'solution')
    assert {'question', 'answer', extra} <= set(ex)


def test_splits_fixed_unique_and_disjoint(splits):
  # The fixed splits are part of the contract: a generator change must show here.
  assert splits['arithmetic', 'test'][0]['question'] == '5+8-4-4'
  assert splits['arithmetic', 'train'][0]['question'] == '9+7-8-2'
  assert splits['countdown', 'test'][0]['numbers'] == '9,14,18,16'
  assert splits['countdown', 'test'][0]['answer'] == '126'
  assert splits['countdown', 'train'][0]['solution'] == '15*15-15-16'
  assert splits['code', 'test'][0]['question'] == ('write a python program: read a line of '
                                                   'numbers and print the largest')
  assert splits['code', 'test'][0]['tests'].startswith('[{"input": "24\\n", "output": "24\\n"}')
  assert splits['general', 'test'][0]['question'] == 'sort 34 49 32 23'
  assert splits['general', 'test'][0]['answer'] == '23 32 34 49'
  keys = {  # what makes two examples the same question
      'arithmetic': lambda ex: ex['question'],
      'countdown': lambda ex: (tuple(sorted(ex['numbers'].split(','))), ex['answer']),
      'general': lambda ex: ex['question'],
      'code': lambda ex: ex['tests']}
  for name, key in keys.items():
    train = {key(ex) for ex in _all(splits[name, 'train'])}
    test = {key(ex) for ex in _all(splits[name, 'test'])}
    assert (len(train), len(test)) == (len(splits[name, 'train']),
                                       len(splits[name, 'test'])), name  # no repeats
    assert not train & test, name


def test_arithmetic_answers(splits):
  for ex in _all(splits['arithmetic', 'test']) + _all(splits['arithmetic', 'train'], 2000):
    terms = re.findall(r'[+-]?\d+', ex['question'])
    n = data.tasks.ARITHMETIC_TERMS
    assert len(terms) == n and all(1 <= abs(int(x)) <= 9 for x in terms)
    partial = list(itertools.accumulate(int(x) for x in terms))
    assert min(partial) >= 0 and int(ex['answer']) == partial[-1]
    # The reduction: n expressions, each step evaluating the leading operation.
    lines = ex['solution'].split('=')
    assert lines[0] == ex['question'] and lines[-1] == ex['answer'] and len(lines) == n
    for line, total, k in zip(lines, partial, range(n)):
      assert line == str(total) + ''.join(terms[k + 1:])
      assert eval(line) == partial[-1]  # noqa: S307 (digits and +/- only)


def test_reduction_follows_a_mistake():
  chain, total = data.tasks.reduction('7+5-3+9-6', wrong=lambda v: v + 10 if v == 12 else v)
  assert (chain, total) == ('7+5-3+9-6=22-3+9-6=19+9-6=28-6=22', 22)


def test_countdown_solutions_score_one(splits):
  train = splits['countdown', 'train']
  sample = [train[i] for i in random.Random(0).sample(range(len(train)), 200)]
  for ex in sample + _all(splits['countdown', 'test'], 50):
    numbers = [int(x) for x in ex['numbers'].split(',')]
    assert len(numbers) in (3, 4) and all(1 <= x <= 25 for x in numbers)
    assert int(ex['answer']) not in numbers
    assert f'{ex["numbers"].replace(",", ", ")}, write' in ex['question']
    completion = f' <think> </think> <answer> {ex["solution"]} </answer>'
    assert countdown('', completion, ex) == 1.0, ex


def test_make_prompt(splits):
  ex = splits['arithmetic', 'test'][0]
  prompt = data.make_prompt(ex)
  assert prompt.startswith('A conversation between User and Assistant.')
  assert prompt.endswith('User: 5+8-4-4. Assistant:')


def test_load_split_unknown_name(tmp_path):
  with pytest.raises(ValueError, match='unknown task'):
    data.load_split('gsm9k', 'train', str(tmp_path))


# Local files.

RECORDS = [
    {'question': 'Natalia sold 48 clips in April and half as many in May. Total?',
     'answer': 'In May she sold 48/2 = 24 clips.\n48+24 = 72\n#### 72'},
    {'question': 'What is 1/2 + 1/4?', 'answer': '\\frac{3}{4}',
     'solution': 'Add: 2/4 + 1/4 = 3/4.', 'level': 'Level 1'},
    {'question': 'How many legs do 3 cats have?', 'answer': 12},
]


def _write_jsonl(path, records):
  path.write_text('\n'.join(json.dumps(r) for r in records) + '\n')


def test_local_jsonl_and_parquet(tmp_path):
  _write_jsonl(tmp_path / 'test.jsonl', RECORDS)
  pq.write_table(pa.Table.from_pylist(
      [{'question': r['question'], 'answer': str(r['answer'])} for r in RECORDS]),
      tmp_path / 'train.parquet')
  test = data.load_split('local', 'test', str(tmp_path))
  train = data.load_split('local', 'train', str(tmp_path))
  assert [ex['id'] for ex in test] == [0, 1, 2]
  gsm, math_, cats = test
  assert gsm['answer'] == '72' and gsm['solution'] == RECORDS[0]['answer']
  assert math_.pop('source').endswith('test.jsonl:2')  # file and line, for errors
  assert math_ == {'id': 1, 'question': 'What is 1/2 + 1/4?', 'answer': '\\frac{3}{4}',
                   'solution': 'Add: 2/4 + 1/4 = 3/4.'}  # other fields dropped
  assert cats['answer'] == '12' and 'solution' not in cats
  assert [ex['answer'] for ex in train] == ['72', '\\frac{3}{4}', '12']
  assert train[0]['solution'] == RECORDS[0]['answer']
  # A file path as the split; blank lines are skipped and do not take an id.
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'x.jsonl').write_text('\n' + json.dumps(RECORDS[2]) + '\n\n')
  assert data.load_split('local', 'sub/x.jsonl', str(tmp_path))[0]['id'] == 0


def test_local_errors_name_the_file_and_line(tmp_path):
  path = tmp_path / 'test.jsonl'
  _write_jsonl(path, [RECORDS[0], {'question': 'no answer here'}])
  with pytest.raises(ValueError, match=r"test\.jsonl:2: record has no 'answer' field"):
    data.load_split('local', 'test', str(tmp_path))
  path.write_text(json.dumps(RECORDS[0]) + '\n{"question": \n')
  with pytest.raises(ValueError, match=r'test\.jsonl:2: not valid JSON'):
    data.read_examples(str(path))
  pq.write_table(pa.Table.from_pylist([{'problem': 'x', 'answer': '1'}]),
                 tmp_path / 'train.parquet')
  with pytest.raises(ValueError, match=r"train\.parquet row 0: record has no 'question'"):
    data.load_split('local', 'train', str(tmp_path))
  with pytest.raises(FileNotFoundError, match='validation'):
    data.load_split('local', 'validation', str(tmp_path))
  # Issue 11.10: a non-UTF-8 byte gave `UnicodeDecodeError ... position 725`.
  path.write_bytes(json.dumps(RECORDS[0]).encode() + b'\n{"question": "caf\xe9", "answer": 1}\n')
  with pytest.raises(ValueError, match=r'test\.jsonl:2: not UTF-8'):
    data.read_examples(str(path))


class _CharTokenizer:
  def encode(self, text):
    return list(text)


def test_long_prompts_are_found_at_load_naming_the_example(tmp_path):
  """Issue 11.10: a prompt over max_prompt_len was found only when a batch
  drew it (at the same step on every resume)."""
  records = [RECORDS[2], {'question': 'x' * 600, 'answer': '1'}, RECORDS[1]]
  _write_jsonl(tmp_path / 'train.jsonl', records)
  train = data.load_split('local', 'train', str(tmp_path))
  longest = data.check_prompt_lengths(train, _CharTokenizer(), 2000, 'train')
  assert longest > 600
  with pytest.raises(ValueError, match=r'1 of 3 train prompts .* \(.*train\.jsonl:2\) has'):
    data.check_prompt_lengths(train, _CharTokenizer(), 500, 'train')


# The iterator.

SOURCE = [{'question': f'q{i}', 'answer': str(i)} for i in range(10)]


def _batches(it, n):
  return [[ex['index'] for ex in it.next()] for _ in range(n)]


def test_iterator_epochs_are_permutations_and_batches_full():
  it = data.PromptIterator(SOURCE, batch_size=4, seed=0)
  flat = sum(_batches(it, 5), [])  # 20 positions: two epochs, batch 3 spans both
  assert sorted(flat[:10]) == sorted(flat[10:]) == list(range(10))
  assert flat[:10] != flat[10:]  # a fresh permutation each epoch
  assert it.state()['position'] == 20
  ex = data.PromptIterator(SOURCE, batch_size=4, seed=0).next()[0]
  assert ex['question'] == f'q{ex["index"]}' and 'index' not in SOURCE[ex['index']]


def test_iterator_deterministic_and_resumable():
  a = data.PromptIterator(SOURCE, batch_size=4, seed=3)
  assert _batches(a, 4) == _batches(data.PromptIterator(SOURCE, batch_size=4, seed=3), 4)
  assert _batches(data.PromptIterator(SOURCE, 4, seed=4), 4) != _batches(
      data.PromptIterator(SOURCE, 4, seed=3), 4)
  state = a.state()
  expected = _batches(a, 6)
  b = data.PromptIterator(SOURCE, batch_size=4, seed=3)
  b.restore(state)
  assert _batches(b, 6) == expected
  with pytest.raises(ValueError, match='seed=3'):
    data.PromptIterator(SOURCE, batch_size=4, seed=5).restore(state)
  c = data.PromptIterator(SOURCE, batch_size=4, seed=3)
  c.restore({'position': state['position']})  # a bare position is enough
  assert _batches(c, 6) == expected


def test_iterator_host_sharding(splits):
  source = splits['countdown', 'test']
  one = data.PromptIterator(source, batch_size=8, seed=1)
  hosts = [data.PromptIterator(source, batch_size=8, seed=1, process_index=h,
                               process_count=2) for h in range(2)]
  for _ in range(3):
    full = one.next()
    h0, h1 = (h.next() for h in hosts)
    assert len(h0) == len(h1) == 4
    assert not {ex['index'] for ex in h0} & {ex['index'] for ex in h1}
    assert h0 + h1 == full
  assert hosts[0].state() == hosts[1].state() == one.state()
  with pytest.raises(ValueError, match='multiple of process_count=3'):
    data.PromptIterator(source, batch_size=8, seed=1, process_count=3)


def test_the_general_task_has_one_right_answer_and_wrong_ones_that_differ():
  import random  # pylint: disable=g-import-not-at-top
  from r1jax.data import general  # pylint: disable=g-import-not-at-top
  from r1jax.rewards import answer_match  # pylint: disable=g-import-not-at-top
  rng = random.Random(0)
  for _ in range(300):
    ex = general.general_problem(rng)
    right = general.response_text(ex['answer'])
    wrong = general.response_text(general.wrong_answer(ex, rng))
    assert answer_match('', right, ex) == 1.0 and answer_match('', wrong, ex) == 0.0
  assert general.general_problem(random.Random(1)) == general.general_problem(random.Random(1))
  ex = {'question': 'sort 42 7 19', 'answer': '7 19 42', 'instruction': 'sort'}
  assert answer_match('', ' <think> </think> <answer> 7  19 42 </answer>', ex) == 1.0
  # Three wrong forms break the order of a pair of neighbours; the fourth
  # keeps the order with one number that the question does not hold.
  wrong = {general.wrong_answer(ex, random.Random(i)) for i in range(200)}
  assert {'42 7 19', '19 7 42', '7 42 19', '42 19 7'} < wrong
  for w in wrong - {'42 7 19', '19 7 42', '7 42 19', '42 19 7'}:
    xs = list(map(int, w.split()))
    assert xs == sorted(xs) and len(set(xs) - {7, 19, 42}) == 1 and max(xs) <= 50, w
  desc = general.general_problem(random.Random(3))
  while desc['instruction'] != 'sort_desc':
    desc = general.general_problem(rng)
  xs = list(map(int, desc['answer'].split()))
  assert desc['question'].endswith(' largest first') and xs == sorted(xs, reverse=True)


def test_a_mixture_adds_the_second_source_from_its_step_on_and_resumes():
  from r1jax.data.iterator import Mixture  # pylint: disable=g-import-not-at-top
  first = [{'question': f'q{i}'} for i in range(10)]
  second = [{'question': f'g{i}'} for i in range(5)]
  m = Mixture(first, second, 4, 1, from_step=2, seed=0)
  b1, b2, b3 = m.next(1), m.next(2), m.next(3)
  assert all(x['kind'] == 'task' for x in b1 + b2) and len(b3) == 4
  assert [x['kind'] for x in b3] == ['task'] * 3 + ['general']
  assert b3[-1]['index'] >= 10 and m.example(b3[-1]['index'])['question'] == b3[-1]['question']
  state = m.state()
  after = [m.next(4), m.next(5)]
  again = Mixture(first, second, 4, 1, from_step=2, seed=0)
  again.restore(state)
  assert [again.next(4), again.next(5)] == after
  # Two hosts: each reads half of every global batch, the halves disjoint.
  hosts = [Mixture(first, second, 4, 2, from_step=0, seed=0, process_index=i, process_count=2)
           for i in range(2)]
  one, two = (h.next(1) for h in hosts)
  assert len(one) == len(two) == 2 and {x['index'] for x in one}.isdisjoint(
      {x['index'] for x in two})

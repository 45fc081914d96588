"""Code problems: the built-in task's generator and the common file shapes.

An example is {'question': str, 'tests': JSON text of a list of tests,
'answer': a reference program ('' when the file has none)}; a test is
{'input', 'output'} (stdin/stdout) or {'call', 'expected'} (a call
expression and its JSON value); rewards/programs.py runs them.

Built-in task `code` (tasks.py): small stdin/stdout programs over a line of
numbers or words, each with 5 generated tests and a reference solution:

  print the sum of the numbers      "3 9 4" -> "16"
  print the numbers above K         "3 9 4" -> "9 4"       (K in the question)
  print every number times K
  print the words in reverse order  "a b c" -> "c b a"
  print each word K times           "a b" -> "a a b b"
  print the largest number / the count of numbers

File shapes (`normalise`, detected by their fields; JSONL or parquet through
data/local.py):
  r1jax           question, tests (list or JSON text)[, answer]
  APPS            question, input_output (JSON text: inputs, outputs[, fn_name])
  CodeContests    description, public_tests / private_tests / generated_tests
                  ({input: [...], output: [...]})
  LiveCodeBench   question_content, public_test_cases (JSON text of
                  {input, output, testtype}); functional tests call
                  Solution().<func_name> from `metadata` (its private cases
                  are pickled, which a loader must never unpickle: not read)
"""
import json
import random


WORDS = ('sun', 'cat', 'dog', 'tree', 'red', 'blue', 'fish', 'star', 'moon', 'bird', 'rain',
         'rock', 'leaf', 'milk', 'ship', 'bell')
_NUMBER_KINDS = ('sum', 'above', 'times', 'max', 'count')
_WORD_KINDS = ('reverse', 'repeat')
KINDS = _NUMBER_KINDS + _WORD_KINDS


def _randint(rng: random.Random, lo: int, hi: int) -> int:
  return lo + int(rng.random() * (hi - lo + 1))


def _line(rng: random.Random, words: bool) -> list[str]:
  n = _randint(rng, 1, 6)
  if words:
    return [WORDS[_randint(rng, 0, len(WORDS) - 1)] for _ in range(n)]
  return [str(_randint(rng, 0, 99)) for _ in range(n)]


def code_problem(rng: random.Random) -> dict:
  kind = KINDS[_randint(rng, 0, len(KINDS) - 1)]
  k = _randint(rng, 2, 5) if kind in ('times', 'repeat') else _randint(rng, 10, 90)
  question, solution, fn = {
      'sum': ('read a line of numbers and print their sum',
              'print(sum(map(int, input().split())))',
              lambda xs: str(sum(map(int, xs)))),
      'above': (f'read a line of numbers and print those above {k}, in order',
                f'print(*[x for x in input().split() if int(x) > {k}])',
                lambda xs: ' '.join(x for x in xs if int(x) > k)),
      'times': (f'read a line of numbers and print each times {k}',
                f'print(*[int(x) * {k} for x in input().split()])',
                lambda xs: ' '.join(str(int(x) * k) for x in xs)),
      'max': ('read a line of numbers and print the largest',
              'print(max(map(int, input().split())))',
              lambda xs: str(max(map(int, xs)))),
      'count': ('read a line of numbers and print how many there are',
                'print(len(input().split()))',
                lambda xs: str(len(xs))),
      'reverse': ('read a line of words and print them in reverse order',
                  'print(*input().split()[::-1])',
                  lambda xs: ' '.join(xs[::-1])),
      'repeat': (f'read a line of words and print each word {k} times',
                 f'print(*[w for w in input().split() for _ in range({k})])',
                 lambda xs: ' '.join(w for w in xs for _ in range(k))),
  }[kind]
  tests = []
  for _ in range(5):
    xs = _line(rng, kind in _WORD_KINDS)
    tests.append({'input': ' '.join(xs) + '\n', 'output': fn(xs) + '\n'})
  return {'question': f'write a python program: {question}', 'tests': json.dumps(tests),
          'answer': solution, 'kind': kind}


# ------------------------------------------------------------------ shapes


def _json(value):
  return json.loads(value) if isinstance(value, (str, bytes)) else value


def _apps(r: dict) -> tuple[str, list[dict], str]:
  io = _json(r['input_output']) or {}
  inputs, outputs, fn = io.get('inputs', []), io.get('outputs', []), io.get('fn_name')
  if fn:
    tests = [{'call': f'{fn}(*{_json_args(i)!r})', 'expected': o[0] if isinstance(o, list)
              and len(o) == 1 else o} for i, o in zip(inputs, outputs)]
  else:
    tests = [{'input': _text(i), 'output': _text(o)} for i, o in zip(inputs, outputs)]
  solutions = _json(r.get('solutions') or '[]') or []
  return r['question'], tests, solutions[0] if solutions else ''


def _json_args(value):
  return list(value) if isinstance(value, (list, tuple)) else [value]


def _text(value) -> str:
  return '\n'.join(map(str, value)) if isinstance(value, list) else str(value)


def _code_contests(r: dict) -> tuple[str, list[dict], str]:
  tests = []
  for field in ('public_tests', 'private_tests', 'generated_tests'):
    t = _json(r.get(field)) or {}
    tests += [{'input': i, 'output': o} for i, o in zip(t.get('input', []), t.get('output', []))]
  sols = _json(r.get('solutions')) or {}
  python = [s for lang, s in zip(sols.get('language', []), sols.get('solution', []))
            if lang in (3, 'PYTHON3')]  # its language enum: 3 is Python 3
  return r['description'], tests, python[0] if python else ''


def _livecodebench(r: dict) -> tuple[str, list[dict], str]:
  fn = (_json(r.get('metadata')) or {}).get('func_name')
  tests = []
  for t in _json(r['public_test_cases']):
    if t.get('testtype') == 'functional':
      if not fn:
        raise ValueError('a functional test without metadata.func_name')
      args = [json.loads(a) for a in t['input'].split('\n') if a.strip()]
      tests.append({'call': f'Solution().{fn}(*{args!r})', 'expected': json.loads(t['output'])})
    else:
      tests.append({'input': t['input'], 'output': t['output']})
  question = r['question_content']
  if r.get('starter_code'):
    question += f'\n\n{r["starter_code"]}'
  return question, tests, ''


def normalise(record: dict, where: str) -> dict:
  """{'question', 'tests' (JSON text), 'answer'} from any shape above."""
  if 'tests' in record:
    shape, out = 'r1jax', (record.get('question'), _json(record['tests']),
                           record.get('answer') or '')
  elif 'input_output' in record:
    shape, out = 'APPS', _apps(record)
  elif 'public_tests' in record:
    shape, out = 'CodeContests', _code_contests(record)
  elif 'public_test_cases' in record:
    shape, out = 'LiveCodeBench', _livecodebench(record)
  else:
    raise ValueError(f'{where}: not a code record (needs tests, input_output, public_tests or '
                     f'public_test_cases; fields: {sorted(record)})')
  question, tests, answer = out
  if not question or not isinstance(tests, list) or not tests:
    raise ValueError(f'{where}: a {shape} record without a question or tests')
  return {'question': str(question), 'tests': json.dumps(tests), 'answer': str(answer)}

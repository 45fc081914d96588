"""The `code` reward (r1jax/rewards/programs.py): which program is run, how its
output is judged, function-call tests, the built-in code task, file shapes,
and a sandbox failure that gives no verdict instead of 0."""
import json

import numpy as np
import pytest

from r1jax import rewards
from r1jax.data import code as code_data, local, tasks
from r1jax.rewards import programs, sandbox as sb
from r1jax.rewards import programs as code

IO = json.dumps([{'input': '1 2\n', 'output': '3\n'}, {'input': '5 5\n', 'output': '10\n'}])


def ans(program: str, fence: str = '```python') -> str:
  return f'<think>easy</think> <answer>{fence}\n{program}\n```</answer>'


def test_the_last_fenced_block_of_the_answer_is_the_program():
  text = ('<think>```\nprint("in the thinking")\n```</think> <answer>first:\n```python\nprint(1)\n'
          '```\nthen:\n```\nprint(2)\n```</answer>')
  assert code.extract_program(text) == 'print(2)\n'
  assert code.extract_program('<think>x</think> <answer>print(3)</answer>') == 'print(3)'
  assert code.extract_program('<think>x</think> no answer block, no fence') is None
  assert code.extract_program('<think>never closed ```\nprint(1)\n```') is None
  assert code.extract_program('<think>x</think> ```py\nprint(4)\n```') == 'print(4)\n'


def test_scores_all_tests_or_the_share():
  ex = {'tests': IO}
  good = ans('print(sum(map(int, input().split())))')
  assert code.code('', good, ex) == 1.0
  half = ans('a, b = map(int, input().split())\nprint(3 if a == 1 else a * b)')
  assert code.code('', half, ex) == 0.0
  assert code.code_fraction('', half, ex) == 0.5
  assert code.code('', '<think>x</think> <answer></answer>', ex) == 0.0


def test_outputs_are_compared_whole_never_zipped():
  ex = {'tests': json.dumps([{'input': '', 'output': 'a\nb\nc\n'}])}
  assert code.code('', ans('print("a")'), ex) == 0.0  # the first line only
  assert code.code('', ans('print("a\\nb\\nc\\nd")'), ex) == 0.0  # one too many
  assert code.code('', ans('print("a  \\nb\\nc\\n\\n")'), ex) == 1.0  # trailing whitespace


def test_judged_on_outputs_not_exit_status():
  ex = {'tests': IO}
  assert code.code('', ans('import os\nos._exit(0)'), ex) == 0.0
  # A right answer that then crashes still printed the right output... and
  # exited non-zero: a runtime error does not pass.
  assert code.code('', ans('print(sum(map(int, input().split())))\nraise SystemExit(1)'), ex) == 0.0


def test_function_call_tests_without_the_expected_values_in_the_sandbox(monkeypatch):
  ex = {'tests': json.dumps([{'call': 'add(1, 2)', 'expected': 3},
                             {'call': 'add([1], [2])', 'expected': [1, 2]}])}
  assert code.code('', ans('def add(a, b):\n  return a + b'), ex) == 1.0
  assert code.code_fraction('', ans('def add(a, b):\n  return 3'), ex) == 0.5
  # A forged results line printed by the program does not count: the
  # harness's own line comes last.
  forged = ans('print("\\x00r1jax-results:" + \'[["ok", 3], ["ok", [1, 2]]]\')\n'
               'def add(a, b):\n  return 0')
  assert code.code_fraction('', forged, ex) == 0.0
  sent = []
  real = sb.Sandbox.run
  monkeypatch.setattr(sb.Sandbox, 'run', lambda self, src, *a, **k: (sent.append(src),
                                                                     real(self, src, *a, **k))[1])
  code._cache.clear()  # pylint: disable=protected-access
  code.code('', ans('def add(a, b):\n  return a - b'), ex)
  assert sent and all('[1, 2]' not in s and 'expected' not in s for s in sent)


def test_results_are_cached_by_program_and_tests(monkeypatch):
  ex = {'tests': IO}
  calls = []
  real = sb.Sandbox.run
  monkeypatch.setattr(sb.Sandbox, 'run', lambda self, *a, **k: (calls.append(1),
                                                                real(self, *a, **k))[1])
  program = ans('print(sum(map(int, input().split())) + 0)')
  assert code.code('', program, ex) == 1.0
  n = len(calls)
  assert code.code('', program, ex) == 1.0 and len(calls) == n == 2


def test_a_sandbox_failure_gives_no_verdict(monkeypatch):
  class Broken:
    def run(self, *a, **k):
      return sb.RunResult('sandbox_error', '', 'server died', None, 0.0, 0.0)

  assert code.run_tests('print(1)', json.loads(IO), 1.0, 256, box=Broken()) is None
  monkeypatch.setattr(sb, 'default', lambda *a: Broken())
  code._cache.clear()  # pylint: disable=protected-access
  assert code.code('', ans('print(3)'), {'tests': IO}) is None
  # The scorer turns None into NaN (masked by the step) and counts it.
  from tests import hostile  # pylint: disable=g-import-not-at-top
  scorer = rewards.RewardScorer({'nv': 1.0}, workers=1, extra={'nv': hostile.no_verdict})
  try:
    s = scorer([''] * 2, ['none', 'x'], [{}, {}])
    assert np.isnan(s[0, 0]) and s[1, 0] == 1.0
    assert scorer.counters()['reward/unavailable'] == 1
  finally:
    scorer.close()


def test_the_builtin_code_task_is_solved_by_its_reference(tmp_path):
  test = tasks.load_split('code', 'test', str(tmp_path))
  assert len(test) == tasks.Code.TEST_SIZE
  kinds = set()
  for i in range(0, len(test), 7):
    ex = test[i]
    kinds.add(ex['kind'])
    assert code.code('', ans(ex['answer']), ex) == 1.0, ex
    assert code.code('', ans('print(input())'), ex) == 0.0, ex
  assert len(kinds) >= 5


def test_code_files_in_the_common_shapes(tmp_path):
  records = [
      {'question': 'sum', 'tests': [{'input': '1 2\n', 'output': '3\n'}]},
      {'question': 'apps', 'input_output': json.dumps({'inputs': ['1 2\n'], 'outputs': ['3\n']}),
       'solutions': json.dumps(['print(sum(map(int, input().split())))'])},
      {'question': 'apps fn', 'input_output': json.dumps(
          {'fn_name': 'add', 'inputs': [[1, 2]], 'outputs': [[3]]})},
      {'description': 'cc', 'public_tests': {'input': ['1 2\n'], 'output': ['3\n']},
       'private_tests': {'input': ['2 2\n'], 'output': ['4\n']}},
      {'question_content': 'lcb', 'starter_code': 'class Solution:\n  def add(self, a, b):',
       'metadata': json.dumps({'func_name': 'add'}),
       'public_test_cases': json.dumps([{'input': '1\n2', 'output': '3', 'testtype': 'functional'}])},
  ]
  path = tmp_path / 'train.jsonl'
  path.write_text('\n'.join(json.dumps(r) for r in records))
  exs = local.read_split(str(tmp_path), 'train')
  tests = [json.loads(e['tests']) for e in exs]
  assert tests[0] == tests[1] == [{'input': '1 2\n', 'output': '3\n'}]
  assert tests[2] == [{'call': 'add(*[1, 2])', 'expected': 3}]
  assert len(tests[3]) == 2 and tests[4] == [{'call': 'Solution().add(*[1, 2])', 'expected': 3}]
  assert exs[1]['answer'].startswith('print(sum') and 'class Solution' in exs[4]['question']
  assert code.code('', ans('def add(a, b):\n  return a + b'), exs[2]) == 1.0
  lcb = ans('class Solution:\n  def add(self, a, b):\n    return a + b')
  assert code.code('', lcb, exs[4]) == 1.0
  with pytest.raises(ValueError, match='not a code record'):
    code_data.normalise({'question': 'q'}, 'x:1')


def test_the_reward_workers_run_code_in_their_own_sandbox():
  scorer = rewards.RewardScorer({'code': 1.0, 'code_fraction': 1.0}, workers=2)
  try:
    ex = {'tests': IO}
    comps = [ans('print(sum(map(int, input().split())))'), ans('print(3)'), 'no program']
    s = scorer([''] * 3, comps, [ex] * 3)
    np.testing.assert_array_equal(s, [[1.0, 1.0], [0.0, 0.5], [0.0, 0.0]])
    assert scorer.counters()['reward/errors'] == 0
  finally:
    scorer.close()


def test_sandbox_settings_are_validated_before_anything_runs():
  from r1jax import config as rc  # pylint: disable=g-import-not-at-top
  c = rc.base_config()
  c.task, c.rewards = 'code', {'code': 1.0, 'format': 0.1}
  c.sandbox.require_isolation = 'chroot'
  with pytest.raises(rc.ConfigError, match='sandbox.require_isolation'):
    rc.validate(c)
  c.sandbox.require_isolation = ''
  c.reward_timeout_s = 3.0
  with pytest.raises(rc.ConfigError, match='reward_timeout_s'):
    rc.validate(c)
  c.reward_timeout_s = 30.0
  rc.validate(c)
  fns = programs.configured(c, c.rewards)
  assert set(fns) == {'code'} and fns['code'].keywords == {'time_limit_s': 2.0, 'memory_mb': 512}

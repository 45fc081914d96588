"""The `code` reward: the completion's final program run on the example's
tests in the sandbox (sandbox.py), judged on its outputs only.

  program   the last fenced code block (```python … ``` or ``` … ```) of the
            answer (the <answer> block, else the text after </think>); an
            answer block without a fence is the program itself
  tests     example['tests'] (a list, or its JSON text), either
              stdin/stdout  {'input': str, 'output': str}: the whole stdout
                            equals the whole expected output after trailing
                            whitespace is stripped from each line and trailing
                            blank lines are dropped (never a zip: printing
                            only the first line of three fails)
              function call {'call': 'f(1, [2, 3])', 'expected': <JSON value>}:
                            every call of the example in one run, each value
                            sent back as JSON and compared on the trainer's
                            side (expected values never enter the sandbox)
  score     1.0 when every test passes, else 0.0 (`code_fraction`: the share
            passed); None when the sandbox failed (status sandbox_error):
            the step masks that sample out and counts it, instead of a
            silent 0. Results are cached by hash(program, tests) per process.

Limits come from the example (`time_limit_s`, `memory_mb`), else
config.sandbox (`configured`), else the defaults below; a stdin test run
gets the limit each, function calls share one run of len(tests) x the limit.
"""
import collections
import functools
import hashlib
import json
import re

from r1jax.rewards import sandbox as sb
from r1jax.rewards.answers import _last_answer_block, final_part  # pylint: disable=protected-access

TIME_LIMIT_S = 2.0
MEMORY_MB = 512
OUTPUT_LIMIT_BYTES = 1 << 20
_FENCE = re.compile(r'```[^\n`]*\n(.*?)```', re.DOTALL)
_RESULTS = '\x00r1jax-results:'
_CACHE_SIZE = 4096


def extract_program(completion: str) -> str | None:
  """The program of a response (see the module doc), or None."""
  text = final_part(completion)
  if text is None:
    return None
  answer = _last_answer_block(text)
  scope = text if answer is None else answer
  blocks = _FENCE.findall(scope)
  if blocks:
    return blocks[-1]
  if answer is not None and answer.strip():
    return answer.strip('\n')
  return None


def normalise(output: str) -> str:
  lines = [line.rstrip() for line in output.replace('\r\n', '\n').split('\n')]
  while lines and not lines[-1]:
    lines.pop()
  return '\n'.join(lines)


def load_tests(example: dict) -> list[dict]:
  tests = example.get('tests')
  if isinstance(tests, (str, bytes)):
    tests = json.loads(tests)
  if not isinstance(tests, list) or not tests:
    raise ValueError("the example has no tests (example['tests']: a non-empty list)")
  for t in tests:
    if not (isinstance(t, dict) and ({'input', 'output'} <= t.keys()
                                     or {'call', 'expected'} <= t.keys())):
      raise ValueError(f"a test needs 'input'+'output' or 'call'+'expected', got {t!r:.200}")
  return tests


def _canonical(value) -> str:
  return json.dumps(value, sort_keys=True)


def _harness(program: str, calls: list[str]) -> str:
  """The program, then each call's value printed as JSON on one marked line
  (the last such line counts: a program cannot know the expected values)."""
  return (f'{program}\n\n'
          'def __r1jax_results():\n'
          '  import json as j\n'
          '  out = []\n'
          f'  for c in {calls!r}:\n'
          '    try:\n'
          '      try:\n'
          '        value = eval(c, globals())\n'
          '      except NameError:\n'  # LeetCode style: the function is a method
          '        if "Solution" not in globals():\n'
          '          raise\n'
          '        value = eval("Solution()." + c, globals())\n'
          '      out.append(["ok", value])\n'
          '    except BaseException as e:\n'
          '      out.append(["error", type(e).__name__])\n'
          '  return j.dumps(out, default=repr)\n'
          f'print({_RESULTS!r} + __r1jax_results(), flush=True)\n')


def run_tests(program: str, tests: list[dict], time_limit_s: float, memory_mb: int,
              box: sb.Sandbox | None = None, stop_on_failure: bool = True
              ) -> tuple[int, int] | None:
  """(passed, total), or None when the sandbox failed."""
  box = box or sb.default()
  limits = dict(memory_mb=memory_mb, output_limit_bytes=OUTPUT_LIMIT_BYTES)
  io = [t for t in tests if 'input' in t]
  calls = [t for t in tests if 'call' in t]
  passed = 0
  for t in io:
    r = box.run(program, str(t['input']), time_limit_s=time_limit_s, **limits)
    if r.status == 'sandbox_error':
      return None
    ok = r.status == 'ok' and normalise(r.stdout) == normalise(str(t['output']))
    passed += ok
    if not ok and stop_on_failure:
      return passed, len(tests)
  if calls:
    r = box.run(_harness(program, [str(t['call']) for t in calls]), '',
                time_limit_s=time_limit_s * len(calls), **limits)
    if r.status == 'sandbox_error':
      return None
    line = next((x for x in reversed(r.stdout.split('\n')) if x.startswith(_RESULTS)), None)
    try:
      values = json.loads(line[len(_RESULTS):]) if line and r.status == 'ok' else []
    except ValueError:
      values = []
    if len(values) == len(calls):  # compared as canonical JSON: 1, 1.0 and true differ
      same = lambda v, t: v[0] == 'ok' and _canonical(v[1]) == _canonical(t['expected'])  # noqa: E731
      passed += sum(same(v, t) for v, t in zip(values, calls))
  return passed, len(tests)


_cache: collections.OrderedDict = collections.OrderedDict()


def _score(completion: str, example: dict, fraction: bool, time_limit_s: float,
           memory_mb: int) -> float | None:
  program = extract_program(completion)
  if program is None:
    return 0.0
  tests = load_tests(example)
  time_limit_s = float(example.get('time_limit_s', time_limit_s))
  memory_mb = int(example.get('memory_mb', memory_mb))
  key = hashlib.sha256(json.dumps([program, tests, time_limit_s, memory_mb, fraction],
                                  sort_keys=True).encode()).hexdigest()
  if key in _cache:
    _cache.move_to_end(key)
    result = _cache[key]
  else:
    result = run_tests(program, tests, time_limit_s, memory_mb, stop_on_failure=not fraction)
    if result is None:  # the sandbox failed: not the program's result, not cached
      return None
    _cache[key] = result
    if len(_cache) > _CACHE_SIZE:
      _cache.popitem(last=False)
  passed, total = result
  return passed / total if fraction else float(passed == total)


def code(prompt: str, completion: str, example: dict, time_limit_s: float = TIME_LIMIT_S,
         memory_mb: int = MEMORY_MB) -> float | None:
  """1.0 iff the program passes every test (None: the sandbox failed)."""
  del prompt
  return _score(completion, example, False, time_limit_s, memory_mb)


def code_fraction(prompt: str, completion: str, example: dict,
                  time_limit_s: float = TIME_LIMIT_S, memory_mb: int = MEMORY_MB
                  ) -> float | None:
  """The share of tests the program passes (None: the sandbox failed)."""
  del prompt
  return _score(completion, example, True, time_limit_s, memory_mb)


NAMES = ('code', 'code_fraction')


def configured(config, names) -> dict:
  """The code rewards among `names` bound to config.sandbox's limits (a
  partial of a module-level function: the reward workers import it), after
  probing this host's sandbox once: its isolation level is printed, and a
  level below sandbox.require_isolation is an error before anything
  compiles."""
  used = [n for n in names if n in NAMES]
  if not used:
    return {}
  s = config.get('sandbox', {})
  box = sb.Sandbox(1, s.get('require_isolation', ''))
  box.close()
  print(f'[r1jax] sandbox isolation: {box.level} (code rewards: {", ".join(used)})', flush=True)
  fns = {'code': code, 'code_fraction': code_fraction}
  return {n: functools.partial(fns[n], time_limit_s=float(s.get('time_limit_s', TIME_LIMIT_S)),
                               memory_mb=int(s.get('memory_mb', MEMORY_MB))) for n in used}

"""Final-answer extraction and the two correctness rewards.

The answer is the content of the last `<answer>...</answer>` pair, else of the
last `\\boxed{...}`. `accuracy` compares it with the gold answer by
math-verify (so `0.5`, `1/2` and `\\frac{1}{2}` agree); `exact_match` is a
sympy-free numeric comparison for tasks whose answers are plain numbers.

Both sides are parsed as LaTeX math (`$...$`-wrapped) first, because raw text
parsing misreads answers: `parse('x^2 + 1')` is `[1]` (it extracts the last
number) and `parse('2\\sqrt{2}')` is `[2]`. Raw parsing is the fallback only
when the wrapped string yields no expression, and we never try several
readings and accept any match: that would let `x^2 + 1` match the gold `1`.
"""
import re

from math_verify import parse, verify

_ANSWER = re.compile(r'<answer>((?:(?!<answer>).)*?)</answer>', re.DOTALL)
_BOXED = '\\boxed'
_NUMBER = re.compile(r'[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+')


def _last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` whose braces balance, else None."""
  start = text.rfind(_BOXED)
  while start >= 0:
    i = start + len(_BOXED)
    if text.startswith('{', i):
      depth = 0
      for j in range(i, len(text)):
        depth += {'{': 1, '}': -1}.get(text[j], 0)
        if depth == 0:
          return text[i + 1:j].strip()
    start = text.rfind(_BOXED, 0, start)
  return None


def extract_answer(completion: str) -> str | None:
  """The stripped content of the last `<answer>` pair, else of the last
  `\\boxed{}`, else None. A `\\boxed{}` inside the answer block is unwrapped
  (`<answer> \\boxed{17} </answer>` gives '17'). An `<answer>` that holds
  another `<answer>` is skipped, so nested tags give the innermost pair."""
  found = _ANSWER.findall(completion)
  if found:
    answer = found[-1].strip()
    boxed = _last_boxed(answer)
    return answer if boxed is None else boxed
  return _last_boxed(completion)


def _parse_math(text: str) -> list:
  text = text.strip()
  if len(text) > 1 and text.startswith('$') and text.endswith('$'):
    text = text.strip('$').strip()
  if not text:
    return []
  # Timeouts off: math-verify's are SIGALRM-based and raise ValueError outside
  # the main thread. RewardScorer bounds the time instead.
  parsed = parse(f'${text}$', parsing_timeout=None)
  if not any(not isinstance(p, str) for p in parsed):
    parsed = parse(text, parsing_timeout=None)
  return parsed


def accuracy(prompt: str, completion: str, example: dict) -> float:
  """1.0 iff the extracted answer equals `example['answer']` by math-verify."""
  del prompt
  pred = extract_answer(completion)
  if pred is None:
    return 0.0
  gold, pred = _parse_math(str(example['answer'])), _parse_math(pred)
  if not gold or not pred:
    return 0.0
  return float(verify(gold, pred, timeout_seconds=None))


def parse_number(text: str) -> float | None:
  """'1,234' -> 1234.0, ' +5 ' -> 5.0, '-0.5' -> -0.5; anything else None."""
  text = text.strip()
  if not _NUMBER.fullmatch(text):
    return None
  return float(text.replace(',', ''))


def exact_match(prompt: str, completion: str, example: dict) -> float:
  """1.0 iff the extracted answer is a number equal to `example['answer']`.
  A gold answer that is not a number raises (RewardScorer counts it as an
  error): this reward is for numeric tasks only."""
  del prompt
  gold = parse_number(str(example['answer']))
  if gold is None:
    raise ValueError(f'exact_match needs a numeric gold answer, got {example["answer"]!r}')
  pred = extract_answer(completion)
  value = None if pred is None else parse_number(pred)
  return float(value is not None and value == gold)

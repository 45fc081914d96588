"""Final-answer extraction and the two correctness rewards.

The answer is judged only in the final part of the response: after the last
`</think>`, or the whole text when there is no think block at all; an
unclosed `<think>` has no final part, so an `<answer>` inside the thinking
never counts. There the answer is the content of the last closed
`<answer>...</answer>` pair, else of the last balanced `\\boxed{...}`. All
scanning is linear in the text length.

`accuracy` compares the answer with the gold by math-verify (so `0.5`, `1/2`
and `\\frac{1}{2}` agree), after two guards:
- `guards.too_hard`: inputs that would make sympy run for minutes or exhaust
  memory (numbers of more than 100k digits such as `9^{9^{9}}`, factorials of
  big numbers, thousands of nested braces, very long answers) are refused
  without parsing, on either side: `Rejected` is raised, which RewardScorer
  scores 0 and counts. LaTeX spacing (`10,\\!000`) is removed first.
- hedges: when the gold is one value, an answer that names several values,
  a relation or a set scores 0 (`17 \\lor 18`, `17 = 18`, `{17 \\atop 18}`,
  `17, 18`, `17 \\pm 1` — math-verify would accept some of them). An
  assignment `x = 18` (a left side with a letter and no bare number) is read
  as 18, on either side.
`exact_match` is a sympy-free numeric comparison for plain-number tasks.
`choice` compares the letter of a multiple-choice answer (`choice_letter`).

Both sides are parsed as LaTeX math (`$...$`-wrapped) first, because raw text
parsing misreads answers: `parse('x^2 + 1')` is `[1]` (it extracts the last
number) and `parse('2\\sqrt{2}')` is `[2]`. Raw parsing is the fallback only
when the wrapped string yields no expression, and we never try several
readings and accept any match: that would let `x^2 + 1` match the gold `1`.
"""
import re

from math_verify import parse, verify

from r1jax.rewards.guards import strip_spacing, too_hard
from r1jax.rewards.rules import Rejected, response

_BOXED = '\\boxed{'
_NUMBER = re.compile(r'[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+')

# Operators that join several values or state a relation.
_HEDGES = re.compile(r'\\(?:lor|land|vee|wedge|cup|cap|atop|pm|mp|setminus|le|ge|leq|geq|'
                     r'neq|ne|lt|gt|in|subset|subseteq|supset|approx|sim|equiv|implies|iff|'
                     r'Rightarrow|Leftrightarrow|to)(?![A-Za-z])|[<>;]|\\text\s*\{\s*(?:or|and)\s*\}'
                     r'|\b(?:or|and)\b')
# `x = 18`, `AB = 18`, `m+n = 18`, `\theta = 18`: a left side with a letter
# and no number standing alone, one '='.
_ASSIGNMENT = re.compile(r'\s*([^=]*[A-Za-z][^=]*?)\s*=\s*([^=]+)$')
_BARE_NUMBER = re.compile(r'(?<![A-Za-z0-9_^{\\])\d')


def final_part(completion: str) -> str | None:
  """The response after the last `</think>`; the whole text without think
  tags; None when a `<think>` is left open (also one opened again after the
  last `</think>`)."""
  end = completion.rfind('</think>')
  if end >= 0:
    rest = completion[end + len('</think>'):]
    return None if '<think>' in rest else rest
  return None if '<think>' in completion else completion


def _last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` whose braces balance, else None
  (one pass over the braces)."""
  starts, stack, close = set(), [], {}
  i = text.find(_BOXED)
  while i >= 0:
    starts.add(i + len(_BOXED) - 1)
    i = text.find(_BOXED, i + 1)
  if not starts:
    return None
  for j, ch in enumerate(text):
    if ch == '{':
      stack.append(j)
    elif ch == '}' and stack:
      close[stack.pop()] = j
  for s in sorted(starts, reverse=True):
    if s in close:
      return text[s + 1:close[s]].strip()
  return None


def _last_answer_block(text: str) -> str | None:
  """The innermost closed `<answer>…</answer>` pair that closes last."""
  end = text.rfind('</answer>')
  if end < 0:
    return None
  start = text.rfind('<answer>', 0, end)
  if start < 0:
    return None
  start += len('<answer>')
  return text[start:text.find('</answer>', start)]  # the pair's own closing tag


def extract_answer(completion: str) -> str | None:
  """The stripped content of the last `<answer>` pair of the final part,
  else of its last `\\boxed{}`, else None. A `\\boxed{}` inside the answer
  block is unwrapped (`<answer> \\boxed{17} </answer>` gives '17')."""
  text = final_part(completion)
  if text is None:
    return None
  answer = _last_answer_block(text)
  if answer is not None:
    answer = answer.strip()
    boxed = _last_boxed(answer)
    return answer if boxed is None else boxed
  return _last_boxed(text)


def _parse_math(text: str) -> list:
  text = text.strip()
  if len(text) > 1 and text.startswith('$') and text.endswith('$'):
    text = text.strip('$').strip()
  if not text:
    return []
  # Timeouts off: math-verify's are SIGALRM-based and raise ValueError outside
  # the main thread. The reward worker's time limit bounds the time instead.
  parsed = parse(f'${text}$', parsing_timeout=None)
  if not any(not isinstance(p, str) for p in parsed):
    parsed = parse(text, parsing_timeout=None)
  return parsed


def _is_single_value(parsed: list) -> bool:
  import sympy  # pylint: disable=g-import-not-at-top
  exprs = [p for p in parsed if not isinstance(p, str)]
  if not exprs:
    return False
  x = exprs[0]
  if isinstance(x, sympy.Symbol):  # sympy's Symbol is also a Boolean
    return True
  return not isinstance(x, (sympy.Set, sympy.core.relational.Relational,
                            sympy.logic.boolalg.Boolean, sympy.Tuple, sympy.MatrixBase,
                            tuple, list, set))


def _assigned(text: str) -> str:
  """The value of `NAME = value` (see _ASSIGNMENT), else the text."""
  m = _ASSIGNMENT.match(text)
  if m and not _BARE_NUMBER.search(m.group(1)):
    return m.group(2)
  return text


def _hedged(pred: str) -> bool:
  """The answer names several values or a relation (see module doc)."""
  pred = _assigned(pred)
  return bool(_HEDGES.search(pred)) or '=' in pred


def accuracy(prompt: str, completion: str, example: dict) -> float:
  """1.0 iff the final answer equals `example['answer']` by math-verify (with
  the guards of the module doc)."""
  pred = extract_answer(response(prompt, completion))
  gold_text = str(example['answer'])
  if pred is None:
    return 0.0
  for side, text in (('answer', pred), ('gold', gold_text)):
    if too_hard(text):
      raise Rejected(f'{side} {text[:60]!r}{"..." if len(text) > 60 else ""} is too costly '
                     'to parse (see guards.py)')
  pred, gold_text = strip_spacing(pred), _assigned(strip_spacing(gold_text))
  gold = _parse_math(gold_text)
  if not gold:
    return 0.0
  single = _is_single_value(gold)
  if single:
    if _hedged(pred):
      return 0.0
    pred = _assigned(pred)
  pred = _parse_math(pred)
  if not pred or (single and not _is_single_value(pred)):
    return 0.0
  return float(verify(gold, pred, timeout_seconds=None))


def parse_number(text: str) -> float | None:
  """'1,234' -> 1234.0, ' +5 ' -> 5.0, '-0.5' -> -0.5; anything else None."""
  text = text.strip()
  if not _NUMBER.fullmatch(text):
    return None
  return float(text.replace(',', ''))


def exact_match(prompt: str, completion: str, example: dict) -> float:
  """1.0 iff the final answer is a number equal to `example['answer']`.
  A gold answer that is not a number raises (RewardScorer counts it as an
  error): this reward is for numeric tasks only."""
  gold = parse_number(str(example['answer']))
  if gold is None:
    raise ValueError(f'exact_match needs a numeric gold answer, got {example["answer"]!r}')
  pred = extract_answer(response(prompt, completion))
  value = None if pred is None else parse_number(pred)
  return float(value is not None and value == gold)


# A letter standing alone at the start of the answer: 'B', '(B)', 'B)', 'B.',
# '\\text{B}', 'B) 42'; not the first letter of a word. A lone lowercase
# letter ('b') counts too.
_LETTER = re.compile(r'\s*(?:\\text\s*\{\s*|\\mathrm\s*\{\s*)?\(?([A-Z])(?![A-Za-z])')
_LONE_LETTER = re.compile(r'\s*\(?([a-z])\)?\s*$')
# simple-evals' 'Answer: X' (the word in any case, the letter a capital).
_ANSWER_LINE = re.compile(r'(?i:\banswer)\s*(?:(?i:is)\s*)?[:：]?\s*\(?([A-Z])(?![A-Za-z])')


def choice_letter(completion: str) -> str | None:
  """The letter a multiple-choice response picks: the start of its answer
  (`<answer>` block or `\\boxed{}`), else the last 'Answer: X' of its final
  part (simple-evals' format); None if neither names one."""
  answer = extract_answer(completion)
  if answer is not None:
    m = _LETTER.match(answer) or _LONE_LETTER.match(answer)
    return m.group(1).upper() if m else None
  text = final_part(completion)
  hits = _ANSWER_LINE.findall(text) if text is not None else []
  return hits[-1] if hits else None


def choice(prompt: str, completion: str, example: dict) -> float:
  """1.0 iff the response's letter (`choice_letter`) is `example['answer']`
  (and one of `example['letters']`, the options offered, when given)."""
  letter = choice_letter(response(prompt, completion))
  if letter is None or letter not in example.get('letters', letter):
    return 0.0
  return float(letter == str(example['answer']).strip().upper())


def answer_match(prompt: str, completion: str, example: dict) -> float:
  """The answer equals example['answer'] as text, up to whitespace (the
  built-in general task, data/general.py: lists of words and numbers)."""
  del prompt
  pred = extract_answer(completion)
  return float(pred is not None and pred.split() == str(example['answer']).split())

"""Final-answer extraction and the two correctness rewards.

The answer is judged only in the final part of the response: after the last
`</think>`, or the whole text when there is no think block at all; an
unclosed `<think>` has no final part, so an `<answer>` inside the thinking
never counts. There the answer is the content of the last closed
`<answer>...</answer>` pair, else of the last balanced `\\boxed{...}`. All
scanning is linear in the text length.

`accuracy` compares the answer with the gold by math-verify (so `0.5`, `1/2`
and `\\frac{1}{2}` agree), after two guards:
- `too_hard`: inputs that would make sympy run for minutes or exhaust memory
  (exponent towers `9^{9^{9}}`, huge exponents or factorials, thousands of
  nested braces, very long answers) are refused without parsing, on either
  side: `Rejected` is raised, which RewardScorer scores 0 and counts.
- hedges: when the gold is one value, an answer that names several values,
  a relation or a set scores 0 (`17 \\lor 18`, `17 = 18`, `{17 \\atop 18}`,
  `17, 18`, `17 \\pm 1` — math-verify would accept some of them). `x = 18`
  (one symbol assigned one value) is read as 18.
`exact_match` is a sympy-free numeric comparison for plain-number tasks.

Both sides are parsed as LaTeX math (`$...$`-wrapped) first, because raw text
parsing misreads answers: `parse('x^2 + 1')` is `[1]` (it extracts the last
number) and `parse('2\\sqrt{2}')` is `[2]`. Raw parsing is the fallback only
when the wrapped string yields no expression, and we never try several
readings and accept any match: that would let `x^2 + 1` match the gold `1`.
"""
import re

from math_verify import parse, verify

from r1jax.rewards.rules import Rejected, response

_BOXED = '\\boxed{'
_NUMBER = re.compile(r'[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+')

MAX_ANSWER_CHARS = 400
MAX_BRACE_DEPTH = 24
MAX_EXPONENT = 10_000  # |n| in a^n, and n in n!
# Operators that join several values or state a relation.
_HEDGES = re.compile(r'\\(?:lor|land|vee|wedge|cup|cap|atop|pm|mp|setminus|le|ge|leq|geq|'
                     r'neq|ne|lt|gt|in|subset|subseteq|supset|approx|sim|equiv|implies|iff|'
                     r'Rightarrow|Leftrightarrow|to)(?![A-Za-z])|[<>;]|\\text\s*\{\s*(?:or|and)\s*\}'
                     r'|\b(?:or|and)\b')
_ASSIGNMENT = re.compile(r'\s*[A-Za-z]\s*=\s*([^=]+)$')


def final_part(completion: str) -> str | None:
  """The response after the last `</think>`; the whole text without think
  tags; None when a `<think>` is left open."""
  end = completion.rfind('</think>')
  if end >= 0:
    return completion[end + len('</think>'):]
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


def _exponent_spans(text: str):
  """(start, end) of each superscript's argument: a braced group, or one
  token (a digit run, a letter, a command)."""
  for m in re.finditer(r'\^\s*', text):
    i = m.end()
    if i >= len(text):
      continue
    if text[i] == '{':
      depth = 0
      for j in range(i, len(text)):
        depth += {'{': 1, '}': -1}.get(text[j], 0)
        if depth == 0:
          yield i + 1, j
          break
      else:
        yield i + 1, len(text)
    else:
      tok = re.match(r'\d+|\\[A-Za-z]+|.', text[i:])
      yield i, i + tok.end()


def too_hard(text: str) -> bool:
  """True for answers whose parsing or evaluation is unbounded (module doc)."""
  if len(text) > MAX_ANSWER_CHARS:
    return True
  depth = 0
  for ch in text:
    depth += {'{': 1, '}': -1, '(': 1, ')': -1}.get(ch, 0)
    if depth > MAX_BRACE_DEPTH:
      return True
  for start, end in _exponent_spans(text):
    arg = text[start:end]
    if '^' in arg or text[end:end + 1].strip() == '^' or re.match(r'\}?\s*\^', text[end:]):
      return True  # a tower: a^{b^c} or a^b^c
    digits = re.sub(r'[\s,{}()+-]', '', arg)
    if digits.isdigit() and int(digits) > MAX_EXPONENT:
      return True
  for m in re.finditer(r'!', text):
    before = re.search(r'(\d+)\s*$', text[:m.start()])
    if before is None or int(before.group(1)) > MAX_EXPONENT:
      return True  # n! only of a small literal; (10^{10})! never
  if '\\Gamma' in text or '\\binom' in text and len(re.findall(r'\d{5,}', text)) > 0:
    return True
  return False


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
  return bool(exprs) and not isinstance(
      exprs[0], (sympy.Set, sympy.core.relational.Relational, sympy.logic.boolalg.Boolean,
                 sympy.Tuple, sympy.MatrixBase, tuple, list, set))


def _hedged(pred: str) -> bool:
  """The answer names several values or a relation (see module doc)."""
  m = _ASSIGNMENT.match(pred)
  if m:
    pred = m.group(1)
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
                     'to parse (see answers.too_hard)')
  gold = _parse_math(gold_text)
  if not gold:
    return 0.0
  single = _is_single_value(gold)
  if single and _hedged(pred):
    return 0.0
  m = _ASSIGNMENT.match(pred)
  pred = _parse_math(m.group(1) if m and single else pred)
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

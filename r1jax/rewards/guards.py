"""Cheap refusal of answers that sympy would evaluate for minutes.

math-verify hands LaTeX to sympy, which evaluates numbers exactly: `9^{9^{9}}`
has 369 million digits, `(10^{10})!` is out of reach, `\\frac{` ten thousand
times nested recurses for seconds. `too_hard(text)` is True for such input,
before any parsing:

- longer than MAX_ANSWER_CHARS, or braces/parentheses nested deeper than
  MAX_BRACE_DEPTH;
- a number whose size, bounded from above by a small recursive-descent pass
  over the LaTeX (numbers, + - * / \\cdot \\times, ^, !, \\frac, \\sqrt,
  groups; any other token is a symbol of size 1), would exceed MAX_DIGITS
  digits, or a factorial of a number above MAX_FACTORIAL.

Symbolic powers stay allowed (`e^{x^2}`, `(n+1)!`, `2^{2^{2}}` = 16): only
sizes are bounded. Input the pass cannot read is left to the worker's time
limit.
"""
import math
import re

MAX_ANSWER_CHARS = 400
MAX_BRACE_DEPTH = 24
MAX_DIGITS = 100_000  # log10 of the largest number allowed
MAX_FACTORIAL = 10_000
_LOG2 = math.log10(2)
_SPACING = re.compile(r'\\[!,;: ]|\\q?quad\b|~')
_TOKEN = re.compile(r'\d+(?:\.\d*)?|\.\d+|\\[A-Za-z]+|\S')
_OPEN = {'{': '}', '(': ')', '[': ']'}


def strip_spacing(text: str) -> str:
  """LaTeX spacing (`\\!` in `10,\\!000`, `\\;`, `\\quad`, `~`) removed."""
  return _SPACING.sub('', text)


class _TooBig(Exception):
  pass


class _Magnitude:
  """log10 upper bounds of the values of a LaTeX expression (see module doc).

  Each method returns (log10 |value| bound, exact value or None); exact
  values are kept for small integers so that exponents and factorials are
  bounded by what they are, not by their size bound."""

  def __init__(self, text: str):
    self.tokens = _TOKEN.findall(text)
    self.i = 0

  def peek(self):
    return self.tokens[self.i] if self.i < len(self.tokens) else None

  def take(self):
    tok = self.peek()
    self.i += 1
    return tok

  def expr(self):
    log, value = self.term()
    while self.peek() in ('+', '-'):
      op = self.take()
      l2, v2 = self.term()
      value = None if value is None or v2 is None else (value + v2 if op == '+' else value - v2)
      log = max(log, l2) + _LOG2
    return log, value

  def term(self):
    log, value = self.unary()
    while self.peek() not in (None, '+', '-', '}', ')', ']', '=', ',', '\\right'):
      op = self.peek()
      if op in ('*', '/', '\\cdot', '\\times', '\\div'):
        self.take()
      l2, v2 = self.unary()
      if op in ('/', '\\div'):
        value = None
      else:
        log, value = log + l2, (None if value is None or v2 is None else value * v2)
    return log, value

  def unary(self):
    return self.signed(self.power)

  def power(self):
    log, value = self.atom()
    while self.peek() in ('^', '!'):
      if self.take() == '!':
        if value is not None and value == int(value) and 0 <= value <= MAX_FACTORIAL:
          log, value = math.lgamma(value + 1) / math.log(10), math.factorial(int(value))
        elif value is not None or log > math.log10(MAX_FACTORIAL):
          raise _TooBig
        continue  # a symbol's factorial: sympy keeps it symbolic
      e_log, e_value = self.signed(self.power)  # right-associative: a^b^c = a^(b^c)
      if e_log > 6:
        raise _TooBig  # an exponent above a million
      exponent = abs(e_value) if e_value is not None else 10 ** e_log
      base = value
      log, value = log * exponent, None
      if (base is not None and e_value is not None and e_value == int(e_value)
          and e_value >= 0 and log < 18):
        value = base ** int(e_value)
    if log > MAX_DIGITS:
      raise _TooBig
    return log, value

  def signed(self, inner):
    if self.peek() in ('-', '+'):
      sign = -1 if self.take() == '-' else 1
      log, value = self.signed(inner)
      return log, None if value is None else sign * value
    return inner()

  def atom(self):
    tok = self.take()
    if tok is None:
      return 0.0, None
    if tok[0].isdigit() or tok[0] == '.':
      value = float(tok) if '.' in tok else int(tok)
      return math.log10(max(abs(value), 1)), value
    if tok in _OPEN:
      out = self.expr()
      while self.peek() not in (None, _OPEN[tok]):
        self.take()  # e.g. a comma-separated tuple: the first element bounds it
      self.take()
      return out
    if tok == '\\left':
      return self.atom()
    if tok in ('\\frac', '\\dfrac', '\\tfrac', '\\binom'):
      num, den = self.atom(), self.atom()
      if tok == '\\binom':
        if num[0] > 6:
          raise _TooBig
        return num[0] * (10 ** den[0] if den[1] is None else max(abs(den[1]), 1)), None
      return num[0], None
    if tok == '\\sqrt':
      if self.peek() == '[':
        self.atom()
      return self.atom()[0] / 2, None
    return 0.0, None  # a symbol, a constant, a command: size 1


def too_hard(text: str) -> bool:
  """True for answers whose parsing or evaluation is unbounded (module doc)."""
  if len(text) > MAX_ANSWER_CHARS:
    return True
  depth = 0
  for ch in text:
    depth += {'{': 1, '}': -1, '(': 1, ')': -1}.get(ch, 0)
    if depth > MAX_BRACE_DEPTH:
      return True
  parser = _Magnitude(strip_spacing(text))
  try:
    while parser.peek() is not None:
      parser.expr()
      parser.take()  # a separator the grammar stops at ('=', ',', a stray '}')
  except _TooBig:
    return True
  except (RecursionError, ValueError, OverflowError, IndexError):
    return False  # unreadable here: the worker's time limit bounds it
  return False

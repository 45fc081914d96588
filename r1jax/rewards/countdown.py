"""Countdown rewards: the answer must be an expression that reaches the target.

  countdown      each given number used at most once (the rule r1jax's
                 built-in task states in its questions, whose targets are
                 made from a subset of the numbers)
  countdown_all  each given number used exactly once (TinyZero's rule and
                 data set, Countdown-Tasks-3to4): `3+5` for target 8 from
                 {3, 5, 7} scores 1.0 under `countdown`, 0.0 here

Use the one that matches what the questions say. Either is 1.0 iff the final
answer (see answers.py) is an arithmetic expression of non-negative integer
literals, binary + - * / and parentheses, whose literals are a sub-multiset
(countdown_all: exactly the multiset) of example['numbers'] and whose exact
value (fractions, so 7/2*2 is 7) is int(example['answer']).
Anything else scores 0.0: a division by zero, a unary minus, a power, a
name, a float, "=" anywhere, or the bare target when the target is not
itself one of the numbers.

The text is parsed with `ast` and evaluated by walking a whitelist of node
types; nothing is ever passed to eval. Length and characters are checked
before parsing, and the numbers before evaluating, so the work is bounded.
"""
import ast
from collections import Counter
from fractions import Fraction
import operator
import re

from r1jax.rewards.answers import extract_answer
from r1jax.rewards.rules import response

_CHARS = re.compile(r'[\d\s+\-*/()]+')
_MAX_LEN = 200  # characters; a real answer over four numbers is ~20
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}


def _literals(node: ast.AST) -> list[int] | None:
  """The integer literals of a whitelisted expression tree, else None."""
  if isinstance(node, ast.Constant) and type(node.value) is int:  # not bool, not float
    return [node.value]
  if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
    left, right = _literals(node.left), _literals(node.right)
    return None if left is None or right is None else left + right
  return None


def _value(node: ast.AST) -> Fraction:
  if isinstance(node, ast.Constant):
    return Fraction(node.value)
  return _OPS[type(node.op)](_value(node.left), _value(node.right))


def _numbers(numbers) -> list[int]:
  if isinstance(numbers, str):
    return [int(x) for x in numbers.split(',') if x.strip()]
  return [int(x) for x in numbers]


def _score(prompt: str, completion: str, example: dict, use_all: bool) -> float:
  answer = extract_answer(response(prompt, completion))
  if answer is None or len(answer) > _MAX_LEN or not _CHARS.fullmatch(answer):
    return 0.0
  try:
    tree = ast.parse(answer.strip(), mode='eval')
  except (SyntaxError, ValueError, RecursionError):
    return 0.0
  used = _literals(tree.body)
  given = Counter(_numbers(example['numbers']))
  if used is None or Counter(used) - given or (use_all and Counter(used) != given):
    return 0.0
  try:
    return float(_value(tree.body) == int(example['answer']))
  except ZeroDivisionError:
    return 0.0


def countdown(prompt: str, completion: str, example: dict) -> float:
  """1.0 iff the answer is an expression over the given numbers (each at most
  once) equal to the target."""
  return _score(prompt, completion, example, use_all=False)


def countdown_all(prompt: str, completion: str, example: dict) -> float:
  """1.0 iff the answer is an expression using every given number exactly
  once and equal to the target (TinyZero)."""
  return _score(prompt, completion, example, use_all=True)

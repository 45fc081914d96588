"""Format and language rewards on plain strings (no sympy, linear time).

`response(prompt, completion)` is what the rewards judge: the completion,
with "<think>" in front when the prompt ends by opening the block for the
model.
"""
import re

class Rejected(ValueError):
  """Raised by a reward for an input it refuses to parse (e.g. an exponent
  tower that sympy would expand for minutes): scored 0 and counted as
  `reward/rejected`, not as an error."""


_TAG = re.compile(r'</?(?:think|answer)>')
_THINK = re.compile(r'<think>(.*?)(?:</think>|$)', re.DOTALL)
# CJK ideographs (basic, extension A, compatibility); each one is a word.
_HAN = re.compile(r'[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff]')
_WORD = re.compile(r'[^\W\d_]+')  # a maximal run of letters, any script
_ASCII_WORD = re.compile(r'[A-Za-z]+')
_FORMAT_TAGS = ['<think>', '</think>', '<answer>', '</answer>']


def response(prompt: str, completion: str) -> str:
  return '<think>' + completion if prompt.rstrip().endswith('<think>') else completion


def format_reward(prompt: str, completion: str, example: dict) -> float:
  """1.0 iff the response is `<think>…</think> <answer>…</answer>` and
  nothing else but whitespace: each tag once (so no nesting and no second
  block), the answer non-empty; the thinking may be empty.

  One scan for the tags, stopping at the fifth: linear in the length (a
  backtracking regex over thousands of tag groups took ~55 s)."""
  del example
  text = response(prompt, completion)
  tags = []
  for m in _TAG.finditer(text):
    tags.append(m)
    if len(tags) > 4:
      return 0.0
  if [m.group() for m in tags] != _FORMAT_TAGS:
    return 0.0
  think, end_think, answer, end_answer = tags
  outside = (text[:think.start()], text[end_think.end():answer.start()], text[end_answer.end():])
  if any(part.strip() for part in outside):
    return 0.0
  return float(bool(text[answer.end():end_answer.start()].strip()))


def language_consistency(prompt: str, completion: str, example: dict) -> float:
  """Share of words in the chain of thought that are in the target language
  (example['language'], 'en' or 'zh'; default 'en').

  The chain of thought is the first <think> block (to the end if unclosed),
  else the whole completion. Each Han character is one word; other words are
  maximal runs of letters, so digits, punctuation and math symbols count for
  nothing. 'en': ASCII-letter words are on target, everything else (Han,
  Cyrillic, accented words...) is not. 'zh': Han characters are on target,
  every other word is not. A chain with no words scores 1.0: there is no
  mixing to punish, and a pure-arithmetic chain should not lose reward.
  """
  language = example.get('language', 'en')
  if language not in ('en', 'zh'):
    raise ValueError(f"language_consistency supports 'en' and 'zh', got {language!r}")
  text = response(prompt, completion)
  m = _THINK.search(text)
  cot = m.group(1) if m else text
  han = len(_HAN.findall(cot))
  words = _WORD.findall(_HAN.sub(' ', cot))
  if language == 'en':
    target = sum(1 for w in words if _ASCII_WORD.fullmatch(w))
  else:
    target = han
  total = han + len(words)
  return 1.0 if total == 0 else target / total

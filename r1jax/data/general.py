"""A built-in general (non-reasoning) task: short instructions with one right
response, and the plausible wrong ones a weak model gives. It stands in for
R1's general data (writing, factual QA, …) on the tiny model: a stage-3 SFT
mixes it in without a chain of thought, rule-made preference pairs (the right
response vs a wrong one) train the reward model, and stage 4's RL raises the
reward model's score on its prompts. The rule verifier `answer_match`
(rewards) checks the response exactly, which a real general prompt has none
of: here it only measures whether the reward model's gains are real.

  count from 3 to 7          -> 3 4 5 6 7        (wrong: stops early or runs on)
  repeat sun 3 times         -> sun sun sun      (wrong: one too few or many)
  reverse 4 9 2              -> 2 9 4            (wrong: as given, or one pair swapped)

Every response is non-reasoning: `<think> </think> <answer>…</answer>`.
"""
import random

from r1jax.data.templates import NO_THINKING

WORDS = ('sun', 'cat', 'dog', 'tree', 'red', 'blue', 'fish', 'star', 'moon', 'bird', 'rain',
         'rock', 'leaf', 'milk', 'ship', 'bell')
KINDS = ('count', 'repeat', 'reverse')


def _randint(rng: random.Random, lo: int, hi: int) -> int:
  return lo + int(rng.random() * (hi - lo + 1))


def _numbers(rng: random.Random) -> list[int]:
  n = _randint(rng, 3, 4)
  out = []
  while len(out) < n:
    x = _randint(rng, 1, 9)
    if x not in out:
      out.append(x)
  return out


def general_problem(rng: random.Random) -> dict:
  kind = KINDS[_randint(rng, 0, len(KINDS) - 1)]
  if kind == 'count':
    a = _randint(rng, 1, 60)
    b = a + _randint(rng, 2, 6)
    return {'question': f'count from {a} to {b}', 'answer': ' '.join(map(str, range(a, b + 1))),
            'instruction': kind}
  if kind == 'repeat':
    w, n = WORDS[_randint(rng, 0, len(WORDS) - 1)], _randint(rng, 2, 7)
    return {'question': f'repeat {w} {n} times', 'answer': ' '.join([w] * n), 'instruction': kind}
  xs = _numbers(rng)  # distinct: reversed differs from the input
  ys = xs[::-1]
  return {'question': f'{kind} {" ".join(map(str, xs))}', 'answer': ' '.join(map(str, ys)),
          'instruction': kind}


def wrong_answer(example: dict, rng: random.Random) -> str:
  """A plausible wrong response to `example` (never the right one)."""
  kind, question, answer = example['instruction'], example['question'], example['answer']
  words = answer.split()
  if kind == 'count':
    last = int(words[-1])
    out = words[:-1] if rng.random() < 0.5 else words + [str(last + 1)]
  elif kind == 'repeat':
    out = words[:-1] if rng.random() < 0.5 else words + words[:1]
  else:
    given = question.split()[1:]
    if rng.random() < 0.5:
      out = given
    else:
      i = _randint(rng, 0, len(words) - 2)
      out = words[:i] + [words[i + 1], words[i]] + words[i + 2:]
  text = ' '.join(out)
  return text if text != answer else ' '.join(words + words[:1])


def response_text(answer: str) -> str:
  """The non-reasoning response: an empty think block, then the answer."""
  return f'{NO_THINKING}{answer}</answer>'

"""A built-in general (non-reasoning) task: short instructions with one right
response, and the plausible wrong ones a weak model gives. It stands in for
R1's general data (writing, factual QA, …) on the tiny model: a stage-3 SFT
mixes it in without a chain of thought, rule-made preference pairs (the right
response vs a wrong one) train the reward model, and stage 4's RL raises the
reward model's score on its prompts. The rule verifier `answer_match`
(rewards) checks the response exactly, which a real general prompt has none
of: here it only measures whether the reward model's gains are real.

  sort 42 7 19                 -> 7 19 42    wrong: as given, a neighbouring pair
  sort 42 7 19 largest first   -> 42 19 7     swapped, the other order, or in
                                              order with one number changed

Three or four distinct numbers of 1–50 (each one token of the tiny
tokenizer): about 11 million questions, so the reward model sees each once.
Three of the wrong forms break the order between two neighbours, a check a
tiny reward model learns (held-out accuracy 0.98–1.00 on them, configs/rm.py);
the fourth (a sorted list of the wrong numbers: what a weak sorter writes)
needs each number found in the question, and is learnt less (0.66). The
task's kinds before 2026-12-07 (count from a to b, repeat a word, reverse a
list) stayed near chance for the reward model: they need the answer matched
against the question's endpoints or positions.

Every response is non-reasoning: `<think> </think> <answer>…</answer>`.
"""
import random

from r1jax.data.templates import NO_THINKING

KINDS = ('sort', 'sort_desc')
LARGEST = 50  # numbers are 1..LARGEST


def _randint(rng: random.Random, lo: int, hi: int) -> int:
  return lo + int(rng.random() * (hi - lo + 1))


def general_problem(rng: random.Random) -> dict:
  kind = KINDS[_randint(rng, 0, len(KINDS) - 1)]
  n = _randint(rng, 3, 4)
  xs = []
  while len(xs) < n:  # distinct: one right order
    x = _randint(rng, 1, LARGEST)
    if x not in xs:
      xs.append(x)
  desc = kind == 'sort_desc'
  return {'question': f'sort {" ".join(map(str, xs))}' + (' largest first' if desc else ''),
          'answer': ' '.join(map(str, sorted(xs, reverse=desc))), 'instruction': kind}


def wrong_answer(example: dict, rng: random.Random) -> str:
  """A plausible wrong response to `example` (never the right one): the
  numbers as given, one neighbouring pair swapped, the other order, or in
  order with one number changed (to one between its neighbours that the
  question does not hold: what a weak sorter writes)."""
  words = example['answer'].split()
  given = example['question'].split()[1:1 + len(words)]
  i = _randint(rng, 0, len(words) - 2)
  swapped = words[:i] + [words[i + 1], words[i]] + words[i + 2:]
  forms = [f for f in (given, swapped, words[::-1]) if f != words]
  changed = _changed(words, rng)
  if changed is not None:
    forms.append(changed)
  return ' '.join(forms[_randint(rng, 0, len(forms) - 1)])


def _changed(words: list[str], rng: random.Random) -> list[str] | None:
  """`words` (sorted either way) with one number, at a position drawn first,
  replaced by another that keeps the order and is not among them; None if
  no position has such a number."""
  xs = [int(w) for w in words]
  up = xs[0] < xs[-1]
  ends = (0, LARGEST + 1) if up else (LARGEST + 1, 0)
  gaps = []
  for i in range(len(xs)):
    a = xs[i - 1] if i > 0 else ends[0]
    b = xs[i + 1] if i + 1 < len(xs) else ends[1]
    # The number's own value lies between its neighbours too: left out.
    values = [v for v in range(min(a, b) + 1, max(a, b)) if v not in xs]
    if values:
      gaps.append((i, values))
  if not gaps:
    return None
  i, values = gaps[_randint(rng, 0, len(gaps) - 1)]
  return words[:i] + [str(values[_randint(rng, 0, len(values) - 1)])] + words[i + 1:]


def response_text(answer: str) -> str:
  """The non-reasoning response: an empty think block, then the answer."""
  return f'{NO_THINKING}{answer}</answer>'

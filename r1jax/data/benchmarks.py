"""Evaluation benchmarks from local files, and their prompts (nothing downloads).

A benchmark is a JSONL or parquet file read in one of these formats; the
`fields` of its config map the format's names to the file's own, so a user's
file works without converting it:

  math             problem, answer         MATH-500, AIME 2024/2025; verifier `accuracy`
                                           (math-verify; `0.5` = `1/2`)
  gsm8k            question, answer        the answer ends in '#### n' (the text after
                                           the last '####'); verifier `accuracy`
  multiple_choice  question, options,      GPQA style. `options` is a list field, or
                   answer                  several fields named in `fields.options`
                                           (comma-separated, e.g. GPQA's 'Correct Answer,
                                           Incorrect Answer 1,…'); `answer` is the correct
                                           letter, the correct option's text, or (when
                                           absent) the first option. Options are shuffled
                                           with a fixed seed per question (simple-evals);
                                           verifier `choice` (the letter)
  arithmetic,      the built-in tasks'     their own verifiers (exact_match, countdown)
  countdown        fields

Every example gets an `id`: the `id` field mapped from the file (default: the
row), kept in samples.jsonl so a resumed evaluation knows what is done.

Prompts (`prompt`):
  r1_zero   R1-Zero's template (data/templates.py) around the question; the
            format reward (<think>…</think><answer>…</answer>) is measured
  chat      the model's own chat template (the tokenizer's `chat_template`,
            rendered with jinja2 in a sandbox, as transformers does) with
            R1's recommendation for reasoning models: no system prompt, the
            instruction "Please reason step by step, and put your final
            answer within \\boxed{}." after the question (multiple choice:
            simple-evals' instruction to end with 'Answer: X'), and the
            response forced to start with "<think>\\n"; the format measured
            is a closed think block
"""
import dataclasses
import hashlib
import json
import random
from typing import Any

from etils import epath

from r1jax.data import local, templates

R1_INSTRUCTION = 'Please reason step by step, and put your final answer within \\boxed{}.'
# simple-evals' multiple-choice template (QUERY_TEMPLATE_MULTICHOICE).
CHOICE_INSTRUCTION = ('Answer the following multiple choice question. The last line of your '
                      "response should be of the following format: 'Answer: $LETTER' (without "
                      'quotes) where LETTER is one of {letters}. Think step by step before '
                      'answering.')
THINK = '<think>\n'


@dataclasses.dataclass(frozen=True)
class Format:
  fields: dict[str, str]  # the format's names -> default file fields
  verifier: str  # the correctness reward
  extract: str  # how votes read an answer: 'answer' (extract_answer) or 'choice'
  equivalence: str  # 'verifier' (math-verify classes) or 'string'


FORMATS = {
    'math': Format({'question': 'problem', 'answer': 'answer', 'id': ''}, 'accuracy',
                   'answer', 'verifier'),
    'gsm8k': Format({'question': 'question', 'answer': 'answer', 'id': ''}, 'accuracy',
                    'answer', 'verifier'),
    'multiple_choice': Format({'question': 'question', 'options': 'options',
                               'answer': 'answer', 'id': ''}, 'choice', 'choice', 'string'),
    'arithmetic': Format({'question': 'question', 'answer': 'answer', 'id': ''},
                         'exact_match', 'answer', 'verifier'),
    'countdown': Format({'question': 'question', 'answer': 'answer', 'id': ''}, 'countdown',
                        'answer', 'string'),
    'general': Format({'question': 'question', 'answer': 'answer', 'id': ''}, 'answer_match',
                      'answer', 'string'),
    # Programs run on the tests (rewards.code); votes count identical answers.
    'code': Format({'question': 'question', 'tests': 'tests', 'id': ''}, 'code', 'answer',
                   'string'),
}


def _field(record: dict, name: str, where: str) -> Any:
  if name not in record or record[name] is None:
    raise ValueError(f'{where}: no field {name!r} (fields: {sorted(record)}); map it with '
                     f"the benchmark's fields")
  return record[name]


def shuffled_options(options: list[str], correct: int, seed: str) -> tuple[list[str], str]:
  """The options in an order fixed by `seed` (the question's own), and the
  correct one's letter."""
  order = list(range(len(options)))
  random.Random(hashlib.sha256(seed.encode()).hexdigest()).shuffle(order)
  return [options[i] for i in order], chr(ord('A') + order.index(correct))


def _choice_example(record: dict, fields: dict, where: str, qid: str, seed: int) -> dict:
  names = [n.strip() for n in fields['options'].split(',')]
  if len(names) == 1:
    options = _field(record, names[0], where)
    if isinstance(options, str):
      try:
        options = json.loads(options)
      except json.JSONDecodeError:
        options = None
    if not isinstance(options, list):
      raise ValueError(f'{where}: field {names[0]!r} is not a list of options')
    options = [str(o) for o in options]
  else:
    options = [str(_field(record, n, where)) for n in names]
  if not 2 <= len(options) <= 26:
    raise ValueError(f'{where}: {len(options)} options (2 to 26 allowed)')
  answer = record.get(fields['answer'])
  if answer is None and len(names) > 1:
    correct = 0  # GPQA: the first option field is the correct answer
  else:
    answer = str(_field(record, fields['answer'], where)).strip()
    if answer in options:
      correct = options.index(answer)
    elif len(answer) == 1 and answer.upper().isalpha() and ord(answer.upper()) - 65 < len(options):
      correct = ord(answer.upper()) - ord('A')
    else:
      raise ValueError(f'{where}: answer {answer[:40]!r} is neither a letter of the '
                       f'{len(options)} options nor one of them')
  options, letter = shuffled_options(options, correct, f'{seed}:{qid}')
  question = str(_field(record, fields['question'], where)).strip()
  lines = '\n'.join(f'{chr(65 + i)}) {o}' for i, o in enumerate(options))
  return {'id': qid, 'question': f'{question}\n\n{lines}', 'answer': letter,
          'letters': ''.join(chr(65 + i) for i in range(len(options)))}


def read_benchmark(path: str, fmt: str, fields: dict | None = None, limit: int = 0,
                   seed: int = 0) -> list[dict]:
  """The examples of one benchmark file: {'id', 'question', 'answer', …}."""
  if fmt not in FORMATS:
    raise ValueError(f'format {fmt!r}: expected one of {sorted(FORMATS)}')
  names = {**FORMATS[fmt].fields, **(fields or {})}
  unknown = set(fields or {}) - set(FORMATS[fmt].fields)
  if unknown:
    raise ValueError(f'fields {sorted(unknown)}: format {fmt!r} maps only '
                     f'{sorted(FORMATS[fmt].fields)}')
  examples, seen = [], set()
  for row, (record, where) in enumerate(local.read_records(path)):
    if limit and len(examples) >= limit:
      break
    qid = str(_field(record, names['id'], where)) if names['id'] else str(row)
    if qid in seen:
      raise ValueError(f'{where}: id {qid!r} appears twice')
    seen.add(qid)
    if fmt == 'multiple_choice':
      examples.append(_choice_example(record, names, where, qid, seed))
      continue
    if fmt == 'code':  # the shapes of data/code.py (r1jax, APPS, CodeContests, LiveCodeBench)
      from r1jax.data import code  # pylint: disable=g-import-not-at-top
      mapped = dict(record, question=record.get(names['question'], record.get('question')))
      if names['tests'] != 'tests' and names['tests'] in record:
        mapped['tests'] = record[names['tests']]
      examples.append({'id': qid, **code.normalise(mapped, where)})
      continue
    ex = {k: v for k, v in record.items() if isinstance(v, (str, int, float, list))}
    question = str(_field(record, names['question'], where))
    answer = str(_field(record, names['answer'], where))
    if fmt == 'gsm8k' and '####' in answer:
      answer = answer.rsplit('####', 1)[1].strip().replace(',', '')
    if not answer.strip():
      raise ValueError(f'{where}: empty answer')
    ex.update(id=qid, question=question, answer=answer.strip())
    examples.append(ex)
  return examples


# --------------------------------------------------------------------- prompts


def chat_template(model_dir: str) -> dict | None:
  """The tokenizer's chat template and its special tokens, from
  tokenizer_config.json or chat_template.jinja (None if it has none)."""
  d = epath.Path(model_dir)
  config = json.loads((d / 'tokenizer_config.json').read_text()) if (
      d / 'tokenizer_config.json').exists() else {}
  template = config.get('chat_template')
  if (d / 'chat_template.jinja').exists():
    template = (d / 'chat_template.jinja').read_text()
  if isinstance(template, list):  # [{'name': 'default', 'template': …}, …]
    template = next((t['template'] for t in template if t.get('name') == 'default'), None)
  if not template:
    return None
  token = lambda v: v.get('content') if isinstance(v, dict) else v  # noqa: E731
  return {'template': template, 'bos_token': token(config.get('bos_token')) or '',
          'eos_token': token(config.get('eos_token')) or ''}


class TemplateError(ValueError):
  """A chat template that does not render (syntax, an unsafe access)."""


def render_messages(chat: dict, messages: list[dict], add_generation_prompt: bool,
                    **variables) -> str:
  """`messages` rendered with the model's template (as transformers'
  apply_chat_template does), in jinja2's immutable sandbox with the globals
  transformers gives templates (raise_exception, strftime_now, the loop
  controls); `variables` are the template's own (Qwen3: enable_thinking)."""
  import datetime  # pylint: disable=g-import-not-at-top
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import sandbox  # pylint: disable=g-import-not-at-top

  def raise_exception(message):
    raise TemplateError(f'chat template: {message}')

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=['jinja2.ext.loopcontrols'])
  env.globals.update(raise_exception=raise_exception,
                     strftime_now=lambda f: datetime.datetime.now().strftime(f))
  try:
    return env.from_string(chat['template']).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        bos_token=chat['bos_token'], eos_token=chat['eos_token'], **variables)
  except jinja2.TemplateError as e:  # includes the sandbox's SecurityError
    raise TemplateError(f'chat template: {type(e).__name__}: {e}') from None


def render_chat(chat: dict, user: str, **variables) -> str:
  """One user turn rendered with the model's template, ready for the
  assistant (add_generation_prompt)."""
  return render_messages(chat, [{'role': 'user', 'content': user}], True, **variables)


def chat_completion(chat: dict, user: str, assistant: dict) -> tuple[str, str]:
  """(prompt, completion) of a user turn and the assistant's answer as the
  model's template lays them out, for SFT: the prompt is the generation
  prompt; the completion is what the whole conversation adds to it, up to
  its end-of-turn token (the trainer appends EOS), so reasoning in
  `reasoning_content` or inline <think>…</think> sits where the template puts
  it (Qwen3: '<think>\\n…\\n</think>\\n\\n' before the answer). A template
  that renders the last assistant turn otherwise than after its generation
  prompt (R1-distill templates drop the reasoning of past turns) gets the
  answer as R1 writes it: '<think>\\n' reasoning '\\n</think>\\n\\n' answer,
  without the think opening the prompt already has."""
  prompt = render_chat(chat, user)
  content, reasoning = assistant.get('content') or '', assistant.get('reasoning_content')
  full = render_messages(chat, [{'role': 'user', 'content': user}, assistant], False)
  eos = chat.get('eos_token') or ''
  if full.startswith(prompt):
    completion = full[len(prompt):]
    cut = completion.rfind(eos) if eos else -1
    if cut >= 0 and not completion[cut + len(eos):].strip():
      completion = completion[:cut]
    return prompt, completion
  if reasoning:
    content = f'{THINK}{reasoning.strip()}\n</think>\n\n{content.lstrip()}'
  if prompt.endswith(THINK) and content.startswith(THINK):
    content = content[len(THINK):]
  return prompt, content


def prompt_for(example: dict, fmt: str, style: str, chat: dict | None = None
               ) -> tuple[str, str]:
  """(prompt, forced): the text the model is given and what its response is
  made to start with (counted as the start of the completion)."""
  question = example['question']
  if fmt == 'multiple_choice':
    question = CHOICE_INSTRUCTION.format(letters=example['letters']) + '\n\n' + question
  if style == 'r1_zero':
    return templates.r1_zero_prompt(question), ''
  if style != 'chat':
    raise ValueError(f"prompt {style!r}: expected 'r1_zero' or 'chat'")
  if chat is None:
    raise ValueError("prompt 'chat': the model's tokenizer has no chat template")
  user = question if fmt == 'multiple_choice' else f'{question}\n{R1_INSTRUCTION}'
  text = render_chat(chat, user)
  # Templates of R1's distilled models open the think block themselves.
  return (text, '') if text.endswith(THINK) else (text, THINK)

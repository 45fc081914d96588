"""Benchmark files: formats, field mapping, option shuffling, prompts, and
the multiple-choice verifier."""
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FIXTURES
from r1jax import rewards
from r1jax.data import benchmarks as bm, templates


def _jsonl(path, records):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  return str(path)


def test_math_and_gsm8k_formats_with_the_files_own_field_names(tmp_path):
  f = _jsonl(tmp_path / 'aime.jsonl', [{'Problem': 'What is 1/2 + 0?', 'Answer': '\\frac12',
                                        'ID': '2024-I-1'},
                                       {'Problem': 'Two?', 'Answer': 2, 'ID': '2024-I-2'}])
  ex = bm.read_benchmark(f, 'math', {'question': 'Problem', 'answer': 'Answer', 'id': 'ID'})
  assert [(e['id'], e['question'], e['answer']) for e in ex] == [
      ('2024-I-1', 'What is 1/2 + 0?', '\\frac12'), ('2024-I-2', 'Two?', '2')]
  with pytest.raises(ValueError, match="no field 'problem'.*map it"):
    bm.read_benchmark(f, 'math')
  with pytest.raises(ValueError, match="fields \\['solution'\\]"):
    bm.read_benchmark(f, 'math', {'solution': 'x'})
  g = tmp_path / 'gsm8k.parquet'
  pq.write_table(pa.table({'question': ['Sum?'], 'answer': ['3 + 4 = 7 and then\n#### 1,007']}),
                 g)
  (e,) = bm.read_benchmark(str(g), 'gsm8k')
  assert e['answer'] == '1007' and e['id'] == '0'
  assert len(bm.read_benchmark(f, 'math', {'question': 'Problem', 'answer': 'Answer'},
                               limit=1)) == 1


def test_multiple_choice_shuffles_with_a_fixed_seed_per_question_and_keeps_the_answer(tmp_path):
  # GPQA's columns: the correct answer and three incorrect ones.
  rows = [{'Question': f'Q{i}?', 'Correct Answer': f'right{i}', 'Incorrect Answer 1': f'w{i}a',
           'Incorrect Answer 2': f'w{i}b', 'Incorrect Answer 3': f'w{i}c'} for i in range(20)]
  f = _jsonl(tmp_path / 'gpqa.jsonl', rows)
  fields = {'question': 'Question', 'answer': 'no such field',
            'options': 'Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3'}
  a = bm.read_benchmark(f, 'multiple_choice', fields)
  b = bm.read_benchmark(f, 'multiple_choice', fields)
  assert a == b  # deterministic
  letters = set()
  for i, e in enumerate(a):
    lines = e['question'].split('\n\n')[1].split('\n')
    assert len(lines) == 4 and lines[ord(e['answer']) - 65] == f'{e["answer"]}) right{i}'
    letters.add(e['answer'])
  assert len(letters) > 1  # the right answer is not always A
  assert bm.read_benchmark(f, 'multiple_choice', fields, seed=1) != a  # the seed matters
  # A list of options and the correct letter (or the correct text).
  g = _jsonl(tmp_path / 'mc.jsonl', [{'question': 'Pick', 'options': ['x', 'y', 'z'], 'answer': 'C'},
                                     {'question': 'Pick', 'options': ['x', 'y'], 'answer': 'y'}])
  e0, e1 = bm.read_benchmark(g, 'multiple_choice')
  assert f'{e0["answer"]}) z' in e0['question'] and f'{e1["answer"]}) y' in e1['question']
  assert e0['letters'] == 'ABC'
  bad = _jsonl(tmp_path / 'bad.jsonl', [{'question': 'Pick', 'options': ['x', 'y'], 'answer': 'q'}])
  with pytest.raises(ValueError, match='neither a letter'):
    bm.read_benchmark(bad, 'multiple_choice')


def test_choice_verifier_reads_the_letter():
  ex = {'answer': 'B'}
  for text, score in [('<think>.</think> <answer>B</answer>', 1.0),
                      ('<think>.</think> \\boxed{(B)}', 1.0),
                      ('<think>.</think> The answer is B) 42.\nAnswer: B', 1.0),
                      ('<think>.</think> <answer>Because</answer>', 0.0),
                      ('<think> Answer: B', 0.0),  # inside an unclosed think block
                      ('<think>.</think> Answer: C', 0.0),
                      ('<think>.</think> <answer>b</answer>', 1.0),
                      ('<think>.</think> Answer: B. So the answer is a bit unclear', 1.0),
                      ('<think>.</think> the answer is i guess B', 0.0)]:
    assert rewards.REWARDS['choice']('', text, ex) == score, text
  # A letter outside the options offered is wrong even when it is the gold.
  assert rewards.REWARDS['choice']('', '<answer>E</answer>', {'answer': 'E', 'letters': 'ABCD'}) == 0


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
R1_DISTILL = ("{{ bos_token }}{% for m in messages %}<｜User｜>{{ m['content'] }}{% endfor %}"
              "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}")


def test_qwen3s_template_renders_as_transformers_renders_it():
  """The published Qwen3 template (tests/fixtures/qwen3_chat, references
  written by transformers' apply_chat_template: tools/make_chat_fixture.py):
  generation prompts with thinking on and off, whole conversations."""
  d = os.path.join(FIXTURES, 'qwen3_chat')
  chat = bm.chat_template(d)
  assert chat['eos_token'] == '<|im_end|>'
  for case in json.load(open(os.path.join(d, 'expected.json')))['cases']:
    user = case['messages'][0]['content']
    assert bm.render_chat(chat, user) == case['prompt']
    assert bm.render_chat(chat, user, enable_thinking=False) == case['prompt_no_thinking']
    assert bm.render_messages(chat, case['messages'], False) == case['conversation']
  # Evaluation: Qwen3's generation prompt leaves the think block to the
  # model; the response is made to open it (as Qwen3 does in thinking mode).
  prompt, forced = bm.prompt_for({'question': 'What is 2+2?'}, 'math', 'chat', chat)
  assert prompt.endswith('<|im_end|>\n<|im_start|>assistant\n') and forced == '<think>\n'


def test_prompts_r1_zero_and_chat_with_r1s_recommendation(tmp_path):
  ex = {'question': 'What is 2+2?'}
  assert bm.prompt_for(ex, 'math', 'r1_zero') == (templates.r1_zero_prompt('What is 2+2?'), '')
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(
      {'chat_template': CHATML, 'bos_token': None, 'eos_token': '<|im_end|>'}))
  chat = bm.chat_template(str(tmp_path))
  prompt, forced = bm.prompt_for(ex, 'math', 'chat', chat)
  assert prompt == ('<|im_start|>user\nWhat is 2+2?\nPlease reason step by step, and put your '
                    'final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n')
  assert forced == '<think>\n'  # no system prompt; the response starts thinking
  (tmp_path / 'chat_template.jinja').write_text(R1_DISTILL)
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(
      {'bos_token': {'content': '<｜begin▁of▁sentence｜>'}}))
  prompt, forced = bm.prompt_for(ex, 'math', 'chat', bm.chat_template(str(tmp_path)))
  assert prompt.startswith('<｜begin▁of▁sentence｜><｜User｜>What is 2+2?\nPlease reason')
  assert prompt.endswith('<｜Assistant｜><think>\n') and forced == ''  # the template opens it
  # The template runs sandboxed: no attribute escapes.
  (tmp_path / 'chat_template.jinja').write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
  with pytest.raises(bm.TemplateError, match='SecurityError'):
    bm.prompt_for(ex, 'math', 'chat', bm.chat_template(str(tmp_path)))
  with pytest.raises(ValueError, match='no chat template'):
    bm.prompt_for(ex, 'math', 'chat', None)

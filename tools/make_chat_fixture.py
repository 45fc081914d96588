"""Renders conversations with transformers' own chat-template code and the
published Qwen3 chat template (tests/fixtures/qwen3_chat/chat_template.jinja,
from Qwen3's tokenizer_config.json), for tests/sft_test.py and
tests/evaluate_test.py (which need neither transformers nor the hub).

  /tmp/hf/bin/pip install transformers tokenizers
  /tmp/hf/bin/python tools/make_chat_fixture.py

Writes tokenizer_config.json (the special tokens) and expected.json: for each
case its messages, the generation prompt of its user turn (thinking on and
off) and the whole conversation as transformers renders it.
"""
import json
import os

import tokenizers
import transformers
from tokenizers import models

OUT = os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures', 'qwen3_chat')
CASES = [
    [{'role': 'user', 'content': 'What is 2+2?'},
     {'role': 'assistant', 'content': 'It is 4.', 'reasoning_content': 'Two and two make four.'}],
    [{'role': 'user', 'content': 'Name a prime.\nBe brief.'},
     {'role': 'assistant', 'content': '<think>\nSmall primes: 2, 3.\n</think>\n\n3'}],
    [{'role': 'user', 'content': 'Say hi.'}, {'role': 'assistant', 'content': 'hi'}],
]


def main():
  template = open(os.path.join(OUT, 'chat_template.jinja')).read()
  vocab = {'<|im_end|>': 0, '<|endoftext|>': 1, '<unk>': 2}
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizers.Tokenizer(models.WordLevel(vocab, unk_token='<unk>')),
      eos_token='<|im_end|>', pad_token='<|endoftext|>')
  tok.chat_template = template
  out = []
  for messages in CASES:
    render = lambda m, **kw: tok.apply_chat_template(m, tokenize=False, **kw)  # noqa: E731
    out.append({'messages': messages,
                'prompt': render(messages[:1], add_generation_prompt=True),
                'prompt_no_thinking': render(messages[:1], add_generation_prompt=True,
                                             enable_thinking=False),
                'conversation': render(messages)})
  with open(os.path.join(OUT, 'expected.json'), 'w') as f:
    json.dump({'transformers': transformers.__version__, 'cases': out}, f, indent=1)
  with open(os.path.join(OUT, 'tokenizer_config.json'), 'w') as f:
    json.dump({'eos_token': '<|im_end|>', 'pad_token': '<|endoftext|>', 'bos_token': None}, f,
              indent=1)


if __name__ == '__main__':
  main()

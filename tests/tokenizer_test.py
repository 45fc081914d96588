"""Tokenizers: sentencepiece and HF tokenizer.json behind one interface."""
import json
import os

import numpy as np
import pytest

from r1jax import tokenizer as tk
from r1jax.data.templates import R1_ZERO_TEMPLATE, TAGS, r1_zero_prompt

TEXTS = ['<think> 12+30=42 </think> <answer>42</answer>',
         'What is 7 times 6?', 'Countdown: reach 24 with 3, 8, 1.']


@pytest.fixture(scope='module')
def sp_model(tmp_path_factory):
  import sentencepiece as spm
  d = tmp_path_factory.mktemp('sp')
  corpus = d / 'corpus.txt'
  corpus.write_text('\n'.join(TEXTS * 20 + [r1_zero_prompt(f'{i}+{i}') for i in range(50)]))
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(d / 'tok'), vocab_size=400,
      model_type='bpe', user_defined_symbols=list(TAGS), pad_id=3,
      bos_id=1, eos_id=2, unk_id=0, byte_fallback=True, minloglevel=2)
  return str(d / 'tok.model')


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  import tokenizers
  from tokenizers import models, pre_tokenizers, trainers, decoders
  d = tmp_path_factory.mktemp('hf')
  tok = tokenizers.Tokenizer(models.BPE(unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=300, special_tokens=['<unk>', '<|endoftext|>', '<|pad|>', '<|bos|>', '<|eot_id|>'],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(TEXTS * 20, trainer)
  tok.save(str(d / 'tokenizer.json'))
  (d / 'tokenizer_config.json').write_text(json.dumps(
      {'bos_token': '<|bos|>', 'eos_token': {'content': '<|endoftext|>'},
       'pad_token': '<|pad|>'}))
  return str(d)


def test_sentencepiece_round_trip_and_specials(sp_model):
  tok = tk.load_tokenizer(sp_model)
  assert isinstance(tok, tk.SentencePieceTokenizer)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
  for text in TEXTS + [r1_zero_prompt('1+1')]:
    assert tok.decode(tok.encode(text)) == text
  # Template tags are single pieces.
  for tag in TAGS:
    assert tok.encode(tag)[-1] == tok.piece_to_id(tag)
  assert tok.encode('x', add_bos=True)[0] == 1


def test_hf_round_trip_and_specials(hf_dir):
  tok = tk.load_tokenizer(hf_dir)
  assert isinstance(tok, tk.HFTokenizer)
  assert tok.eos_id == tok.tok.token_to_id('<|endoftext|>')
  assert tok.pad_id == tok.tok.token_to_id('<|pad|>')
  assert tok.bos_id == tok.tok.token_to_id('<|bos|>')
  for text in TEXTS:
    assert tok.decode(tok.encode(text)) == text
  assert tok.decode(tok.encode('abc') + [tok.eos_id] + tok.encode('zzz')) == 'abc'


def test_hf_specials_fall_back_to_generation_config(tmp_path, hf_dir):
  for f in ('tokenizer.json',):
    (tmp_path / f).write_text(open(os.path.join(hf_dir, f)).read())
  (tmp_path / 'generation_config.json').write_text(json.dumps(
      {'bos_token_id': 3, 'eos_token_id': [1, 2]}))
  tok = tk.load_tokenizer(str(tmp_path))
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (3, 1, 1)
  assert tok.stop_ids == {1, 2}  # every listed eos ends decoding


def test_every_stop_id_ends_decoding(hf_dir):
  """Issue 10.4: the rollout stopped at the model's eos ids (Llama 3's
  <|eot_id|>) but decoding only at the tokenizer's eos, so the stop token
  was decoded into the text and the format reward scored 0."""
  from r1jax import rewards
  tok = tk.load_tokenizer(hf_dir)
  eot = tok.tok.token_to_id('<|eot_id|>')
  text = '<think> 2+2=4 </think> <answer> 4 </answer>'
  ids = tok.encode(text) + [eot] + tok.encode(' junk')
  stops = tok.set_stop_ids([eot])  # the model config's eos ids, as launch passes them
  assert set(stops) == {eot, tok.eos_id}
  mask = np.ones((1, len(ids)), bool)
  decoded = tok.decode_batch(np.asarray([ids]), mask)[0]
  assert decoded == text
  assert rewards.format_reward('', decoded, {}) == 1.0


@pytest.mark.parametrize('kind', ['sp', 'hf'])
def test_batch_left_padding_and_decoding_skips_padding(kind, sp_model, hf_dir):
  tok = tk.load_tokenizer(sp_model if kind == 'sp' else hf_dir)
  ids, mask = tok.encode_batch(TEXTS, add_bos=True)
  lengths = [len(tok.encode(t, add_bos=True)) for t in TEXTS]
  assert ids.shape == (3, max(lengths)) and ids.dtype == np.int32
  np.testing.assert_array_equal(mask.sum(1), lengths)
  for row, m, n in zip(ids, mask, lengths):
    assert not m[:len(m) - n].any() and m[len(m) - n:].all()  # left padded
    assert (row[~m] == tok.pad_id).all()
  assert tok.decode_batch(ids, mask) == TEXTS
  ids, mask = tok.encode_batch(TEXTS, max_len=64)
  assert ids.shape == (3, 64)
  with pytest.raises(ValueError, match='max_len=2'):
    tok.encode_batch(TEXTS, max_len=2)


def test_r1_zero_template_is_the_papers_text():
  # Table 1 of arXiv 2501.12948, word for word ('prompt' is the question).
  paper = ('A conversation between User and Assistant. The user asks a question, and the '
           'Assistant solves it. The assistant first thinks about the reasoning process in the '
           'mind and then provides the user with the answer. The reasoning process and answer '
           'are enclosed within <think> </think> and <answer> </answer> tags, respectively, '
           'i.e., <think> reasoning process here </think> <answer> answer here </answer>. '
           'User: prompt. Assistant:')
  assert r1_zero_prompt('What is 2+2?') == paper.replace('User: prompt.', 'User: What is 2+2?.')
  assert R1_ZERO_TEMPLATE.count('{question}') == 1

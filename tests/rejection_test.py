"""Rejection sampling: each filter on hand-made samples, the choice per
prompt, the keep-rate summary, and a run on the shipped base that writes
traces the SFT trainer reads."""
import json

import pytest
from ml_collections import ConfigDict

from r1jax import evaluate as ev, rejection, sft
from conftest import config_file

PROMPT = 'User: 3+4. Assistant:'


def _filters(**kw):
  return ConfigDict(dict(dict(correct=True, format=True, complete=True, min_language=0.95,
                              language='en', no_code_blocks=True, max_paragraph_chars=60,
                              max_repetition=0.3, ngram=2), **kw))


def _sample(i, completion, correct=True, fmt=True, truncated=False, length=None):
  return {'id': '0', 'index': 0, 'sample': i, 'completion': completion, 'correct': correct,
          'format': fmt, 'truncated': truncated, 'length': length or len(completion)}


def test_text_measures():
  assert rejection.repetition('a b a b a b', 2) == pytest.approx(1 - 2 / 5)
  assert rejection.repetition('a b c d', 2) == 0.0 and rejection.repetition('a', 4) == 0.0
  assert rejection.longest_paragraph('ab\n\n  abcd  \n\nabc') == 4
  assert rejection.chain_of_thought(PROMPT, ' <think> x </think> <answer>7</answer>') == ' x '
  assert rejection.chain_of_thought(PROMPT, ' <think> unclosed') == ' unclosed'
  assert rejection.chain_of_thought(PROMPT, ' no tags') == ' no tags'


def test_each_filter_drops_what_it_names_and_the_summary_counts_them():
  good = ' <think> add them </think> <answer>7</answer>'
  q = [_sample(0, good, length=9),
       _sample(1, ' <think> add </think> <answer>8</answer>', correct=False),
       _sample(2, ' <answer>7</answer>', fmt=False),
       _sample(3, good, truncated=True),
       _sample(4, ' <think> add 然后 相加 </think> <answer>7</answer>'),  # 1 of 3 words English
       _sample(5, ' <think> ```x = 3 + 4``` </think> <answer>7</answer>'),
       _sample(6, ' <think> ' + 'x' * 70 + ' </think> <answer>7</answer>'),
       _sample(7, ' <think> so so so so so so </think> <answer>7</answer>'),
       _sample(8, ' <think> add them up </think> <answer>7</answer>', length=5),
       # wrong and mixed: counted under `correct` (the first), failing both
       _sample(9, ' <think> 相加 </think> <answer>9</answer>', correct=False)]
  bench = ev.Benchmark('t', 'arithmetic', [{'question': '3+4', 'answer': '7'}], [PROMPT])
  prov = {'ckpt': '/c', 'step': 3}
  kept, counts = rejection.select(bench, [q], _filters(), 'one', 'shortest', prov)
  assert [k['provenance']['sample'] for k in kept] == [8]  # the shortest of 0 and 8
  assert counts['dropped_first_by'] == {'correct': 2, 'format': 1, 'complete': 1, 'language': 1,
                                        'code_block': 1, 'long_paragraph': 1, 'repetition': 1}
  assert counts['failing']['correct'] == 2 and counts['failing']['language'] == 2
  s = rejection.summarize(counts)
  assert s['keep_rate'] == 0.1 and s['prompt_keep_rate'] == 1.0
  assert s['pass_rate']['correct'] == 0.8 and s['pass_rate']['language'] == 0.8
  record = kept[0]
  assert record['prompt'] == PROMPT and record['completion'] == q[8]['completion']
  assert record['provenance'] == {'ckpt': '/c', 'step': 3, 'benchmark': 't', 'id': '0',
                                  'sample': 8, 'correct': True, 'format': True, 'language': 1.0,
                                  'length': 5}
  first, _ = rejection.select(bench, [q], _filters(), 'one', 'first', prov)
  assert [k['provenance']['sample'] for k in first] == [0]
  every, _ = rejection.select(bench, [q + [_sample(10, good)]], _filters(), 'all', 'first', prov)
  assert [k['provenance']['sample'] for k in every] == [0, 8]  # sample 10 repeats sample 0
  # Switched off, the filters pass what they dropped.
  off = _filters(correct=False, format=False, complete=False, min_language=0.0,
                 no_code_blocks=False, max_paragraph_chars=0, max_repetition=0.0)
  everything, counts = rejection.select(bench, [q], off, 'all', 'first', prov)
  assert len(everything) == 9 and counts['kept'] == 9  # sample 3's text is sample 0's


def test_a_run_writes_traces_the_sft_trainer_reads(tmp_path, tfds_dir, capsys):
  c = config_file('rejection', 'limit=16,k=2')
  c.out = str(tmp_path / 'rs')
  c.data_dir = tfds_dir
  c.batch_size = 8
  summary = rejection.run(c)
  assert summary['prompts'] == 16 and summary['samples'] == 32
  assert 0 < summary['kept'] <= 16 and summary['kept'] == summary['prompts_kept']
  lines = (tmp_path / 'rs' / 'traces.jsonl').read_text().splitlines()
  records = [json.loads(x) for x in lines]
  assert len(records) == summary['kept']
  assert all(r['provenance']['correct'] and r['prompt'].endswith('Assistant:') for r in records)
  assert len({r['provenance']['id'] for r in records}) == len(records)  # one per prompt
  pairs = [sft.record_text(r, 'none') for r in records]
  assert pairs[0] == (records[0]['prompt'], records[0]['completion'])
  capsys.readouterr()
  assert rejection.run(c) == summary  # done: read back, nothing sampled
  assert 'is done (summary.json); nothing to do' in capsys.readouterr().out

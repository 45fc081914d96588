"""Rejection sampling (DeepSeek-R1 §2.3.3 / supplement B.3.3): a checkpoint
and prompts → k samples each → scored → kept by rule → SFT data.

  checkpoint ─▶ k samples of every prompt (the evaluation sampler, sharded over
  the mesh and hosts, resumable: r1jax/evaluate.py's part files) ─▶ each
  sample judged by the filters in FILTERS' order (the first it fails is
  recorded) ─▶ per prompt: one kept sample (`keep='one'`, the shortest or
  the first) or all (`'all'`, distinct completions) ─▶ <out>/traces.jsonl
  (prompt, completion, question, answer and provenance: checkpoint, step,
  benchmark, prompt id, sample index, scores) and <out>/summary.json (keep
  rates, and how many samples each filter dropped).

R1 keeps only correct responses and drops "chain-of-thought with mixed
languages, long paragraphs, and code blocks"; the filters here are those,
with their thresholds in the config, plus the format, an unfinished
(truncated) response, and n-gram repetition.

  python -m r1jax.rejection --config=configs/rejection.py:ckpt=workdir/zero-tiny
"""
import json
import os
import re
import sys
from typing import Callable

import jax

from r1jax import config as rc, eval_command, evaluate as ev, metrics, models
from r1jax import workdir as wd
from r1jax.rewards import language_consistency
from r1jax.rewards.rules import response

_THINK = re.compile(r'<think>(.*?)(?:</think>|$)', re.DOTALL)


def chain_of_thought(prompt: str, completion: str) -> str:
  """The first <think> block (to the end if unclosed), else the response."""
  text = response(prompt, completion)
  m = _THINK.search(text)
  return m.group(1) if m else text


def repetition(text: str, n: int) -> float:
  """Share of the word n-grams of `text` that repeat an earlier one (0 for
  fewer than n + 1 words): 0.5 means half the text is copied n-grams."""
  words = text.split()
  grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
  return 0.0 if len(grams) < 2 else 1.0 - len(set(grams)) / len(grams)


def longest_paragraph(text: str) -> int:
  """Characters of the longest paragraph (blank-line separated)."""
  return max((len(p.strip()) for p in re.split(r'\n\s*\n', text)), default=0)


# name -> (what it checks, the sample passes when ...). `f` is the config's
# filters section; `s` a sample record with its prompt and scores.
FILTERS: dict[str, tuple[str, Callable]] = {
    'correct': ('the answer is right (the verifier)', lambda s, f: not f.correct or s['correct']),
    'format': ('<think> then <answer>', lambda s, f: not f.format or s['format']),
    'complete': ('ended before the token limit', lambda s, f: not f.complete or not s['truncated']),
    'language': ('target-language share of the chain >= min_language',
                 lambda s, f: s['language'] >= f.min_language),
    'code_block': ('no ``` code block', lambda s, f: not f.no_code_blocks or '```' not in s['cot']),
    'long_paragraph': ('no paragraph over max_paragraph_chars',
                       lambda s, f: not f.max_paragraph_chars
                       or longest_paragraph(s['cot']) <= f.max_paragraph_chars),
    'repetition': ('repeated word n-grams <= max_repetition',
                   lambda s, f: not f.max_repetition
                   or repetition(s['cot'], f.ngram) <= f.max_repetition),
}


def judge(sample: dict, prompt: str, example: dict, filters) -> str:
  """The first filter `sample` fails ('' when it passes all); sets its
  'language' and 'cot'."""
  sample['cot'] = chain_of_thought(prompt, sample['completion'])
  sample['language'] = language_consistency(prompt, sample['completion'],
                                            {'language': example.get('language',
                                                                     filters.language)})
  return next((name for name, (_, ok) in FILTERS.items() if not ok(sample, filters)), '')


def select(bench: ev.Benchmark, questions: list[list[dict]], filters, keep: str, choose: str,
           provenance: dict) -> tuple[list[dict], dict]:
  """(kept records, the counts for the summary) of one benchmark's samples."""
  kept, dropped = [], {name: 0 for name in FILTERS}
  fails = {name: 0 for name in FILTERS}  # fails at all, not only first
  samples = prompts_kept = 0
  for q in questions:
    i = q[0]['index']
    prompt, example = bench.prompts[i], bench.examples[i]
    passing = []
    for s in q:
      samples += 1
      first = judge(s, prompt, example, filters)
      for name, (_, ok) in FILTERS.items():
        fails[name] += not ok(s, filters)
      if first:
        dropped[first] += 1
      else:
        passing.append(s)
    if keep == 'one':
      order = (sorted(passing, key=lambda s: (s['length'], s['sample'])) if choose == 'shortest'
               else passing)
      passing = order[:1]
    else:
      seen, distinct = set(), []
      for s in passing:
        if s['completion'] not in seen:
          seen.add(s['completion'])
          distinct.append(s)
      passing = distinct
    prompts_kept += bool(passing)
    for s in passing:
      kept.append({
          'prompt': prompt + bench.forced, 'completion': s['completion'][len(bench.forced):],
          'question': example.get('question'), 'answer': example.get('answer'),
          'provenance': {**provenance, 'benchmark': bench.name, 'id': s['id'], 'sample': s['sample'],
                         'correct': s['correct'], 'format': s['format'],
                         'language': round(s['language'], 4), 'length': s['length']}})
  counts = {'prompts': len(questions), 'samples': samples, 'kept': len(kept),
            'prompts_kept': prompts_kept, 'dropped_first_by': dropped, 'failing': fails}
  return kept, counts


def summarize(counts: dict) -> dict:
  """Keep rates from select's counts."""
  samples = max(counts['samples'], 1)
  return {**counts, 'keep_rate': counts['kept'] / samples,
          'prompt_keep_rate': counts['prompts_kept'] / max(counts['prompts'], 1),
          'pass_rate': {name: 1 - n / samples for name, n in counts['failing'].items()}}


def validate(c) -> None:
  eval_command.validate(c)
  if 'filters' not in c:
    raise rc.ConfigError('filters', 'none: an evaluation config (run it with python -m '
                         'r1jax.evaluate); this command takes configs/rejection.py')
  f = c.filters
  for key, ok, what in (
      ('keep', c.keep in ('one', 'all'), "'one' or 'all'"),
      ('choose', c.choose in ('shortest', 'first'), "'shortest' or 'first'"),
      ('filters.min_language', 0 <= f.min_language <= 1, 'in [0, 1] (0: off)'),
      ('filters.max_paragraph_chars', isinstance(f.max_paragraph_chars, int)
       and f.max_paragraph_chars >= 0, 'an integer >= 0 (0: off)'),
      ('filters.max_repetition', 0 <= f.max_repetition <= 1, 'in [0, 1] (0: off)'),
      ('filters.ngram', isinstance(f.ngram, int) and f.ngram >= 1, 'an integer >= 1'),
      ('filters.language', f.language in ('en', 'zh'), "'en' or 'zh'")):
    if not ok:
      raise rc.ConfigError(key, f'must be {what}')


def run(c) -> dict:
  """Samples, filters and writes <out>/traces.jsonl and summary.json;
  returns the summary. Done already (summary.json there): returns it."""
  validate(c)
  log = metrics.LibraryLog()
  try:
    if c.steps != 'latest':
      raise rc.ConfigError('steps', "rejection sampling reads one checkpoint: 'latest' (or "
                           'ckpt=<workdir>/checkpoints/<step>)')
    mesh, path, (step,), tokenizer, benches, out = eval_command.prepare(
        c, log, lambda path, from_run: os.path.join(path, 'rejection'))
    summary_path = out / 'summary.json'
    if summary_path.exists():
      print(f'[r1jax] rejection sampling: {out} is done (summary.json); nothing to do',
            flush=True)
      return json.loads(summary_path.read_text())
    from_run = step is not None
    print(f'[r1jax] rejection sampling {path}' + (f' at step {step}' if from_run else '') +
          f': {", ".join(f"{b.name} ({len(b.examples)} prompts)" for b in benches)} x {c.k} '
          f'samples, T {c.temperature}, top-p {c.top_p}; writing to {out}', flush=True)
    scorer = eval_command.make_scorer(c, benches)
    try:
      sampled = eval_command.evaluate_step(c, mesh, path, step, tokenizer, benches, out / 'samples',
                                           scorer, {})
    finally:
      scorer.close()
    records, per_bench = [], {}
    provenance = {'ckpt': os.fspath(wd.absolute(path)), 'step': step}
    for done in sampled:
      kept, counts = select(done.bench, done.questions, c.filters, c.keep, c.choose, provenance)
      records += kept
      per_bench[done.bench.name] = summarize(counts)
    total = {k: sum(b[k] for b in per_bench.values())
             for k in ('prompts', 'samples', 'kept', 'prompts_kept')}
    total['dropped_first_by'] = {name: sum(b['dropped_first_by'][name] for b in per_bench.values())
                                 for name in FILTERS}
    total['failing'] = {name: sum(b['failing'][name] for b in per_bench.values())
                        for name in FILTERS}
    summary = {**summarize(total), 'benchmarks': per_bench, 'traces': os.fspath(out / 'traces.jsonl'),
               'settings': {'ckpt': provenance['ckpt'], 'step': step, 'k': c.k,
                            'temperature': c.temperature, 'top_p': c.top_p,
                            'max_new_tokens': c.max_new_tokens, 'keep': c.keep,
                            'choose': c.choose, 'filters': c.filters.to_dict()}}
    if jax.process_index() == 0:
      ev.write_atomic(out / 'traces.jsonl', ''.join(json.dumps(r) + '\n' for r in records))
      ev.write_atomic(summary_path, json.dumps(summary, indent=2))  # last: marks it done
    rates = '  '.join(f'{name} {rate:.2f}' for name, rate in summary['pass_rate'].items())
    print(f'[r1jax] rejection sampling: kept {summary["kept"]} of {summary["samples"]} samples '
          f'({summary["keep_rate"]:.1%}); {summary["prompts_kept"]} of {summary["prompts"]} '
          f'prompts have one ({summary["prompt_keep_rate"]:.1%}); pass rates: {rates}', flush=True)
    return summary
  finally:
    log.close()


def run_or_exit(c) -> dict:
  try:
    return run(c)
  except (rc.ConfigError, models.CheckpointError) as e:
    print(f'FATAL: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


def main(argv):
  del argv
  run_or_exit(_flags.FLAGS.config)


if __name__ == '__main__':
  from absl import app, flags as _flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'configs/rejection.py[:ckpt=DIR,…]',
                                  lock_config=True)
  from r1jax import config as _rc  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=lambda argv: _rc.parse_flags(
      argv, 'python -m r1jax.rejection --config=configs/rejection.py:ckpt=DIR'))

"""Question/answer sets from local JSONL or parquet files (GSM8K, MATH-500, ...).

Each record needs `question` and `answer`; `solution` is kept when present and
every other field is dropped. A record with tests (`tests`, or the APPS /
CodeContests / LiveCodeBench fields) is a code problem instead
(data/code.py: question, tests, answer = a reference program or ''). Examples are plain dicts
{'id': row, 'question': str, 'answer': str[, 'solution': str]}, with `id` the
0-based row in the file (blank JSONL lines do not count).

GSM8K puts the worked solution in `answer`, ending in "#### 72": when an
answer holds '####', the text after the last one (stripped) is the answer and
the whole text becomes `solution` (unless the record has its own).

This is a plain reader, not a TFDS builder: these sets are small (GSM8K has
7.5k train problems), and a prepared TFDS copy keyed by a config name would
keep serving old data after the file is edited. Reading the file each run
cannot go stale. Nothing downloads.
"""
import json
import os

from etils import epath

__all__ = ['read_examples', 'read_records', 'read_split']

_FORMATS = ('.jsonl', '.parquet')


_CODE_FIELDS = ('tests', 'input_output', 'public_tests', 'public_test_cases')


def _example(record, row: int, where: str) -> dict:
  if not isinstance(record, dict):
    raise ValueError(f'{where}: expected a JSON object, got {type(record).__name__}')
  if any(f in record for f in _CODE_FIELDS):  # a code problem (data/code.py's shapes)
    from r1jax.data import code  # pylint: disable=g-import-not-at-top
    return {'id': row, **code.normalise(record, where), 'source': where}
  for field in ('question', 'answer'):
    if record.get(field) is None:
      raise ValueError(f'{where}: record has no {field!r} field '
                       f'(fields: {sorted(record)})')
  answer, solution = str(record['answer']), record.get('solution')
  if '####' in answer:
    solution = answer if solution is None else solution
    answer = answer.rsplit('####', 1)[1].strip()
  if not answer.strip():
    raise ValueError(f'{where}: empty answer')
  example = {'id': row, 'question': str(record['question']), 'answer': answer.strip(),
             'source': where}
  if solution is not None:
    example['solution'] = str(solution)
  return example


def _jsonl_records(path: str) -> list[tuple[dict, str]]:
  records = []
  with epath.Path(path).open('rb') as f:
    for line_no, raw in enumerate(f, 1):
      where = f'{path}:{line_no}'
      try:
        line = raw.decode('utf-8')
      except UnicodeDecodeError as e:
        raise ValueError(f'{where}: not UTF-8 ({e.reason} at byte {e.start} of the '
                         'line)') from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{where}: not valid JSON ({e})') from None
      if not isinstance(record, dict):
        raise ValueError(f'{where}: expected a JSON object, got {type(record).__name__}')
      records.append((record, where))
  return records


def _parquet_rows(pq, path: str) -> list[dict]:
  with epath.Path(path).open('rb') as f:
    return pq.read_table(f).to_pylist()


def read_records(path: str) -> list[tuple[dict, str]]:
  """The raw records of one .jsonl or .parquet file, in file order, each with
  where it came from ('file:line' or 'file row n')."""
  if path.endswith('.jsonl'):
    records = _jsonl_records(path)
  elif path.endswith('.parquet'):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    records = [(r, f'{path} row {i}') for i, r in enumerate(_parquet_rows(pq, path))]
  else:
    raise ValueError(f'{path}: expected a {" or ".join(_FORMATS)} file')
  if not records:
    raise ValueError(f'{path}: no records')
  return records


def read_examples(path: str) -> list[dict]:
  """All records of one .jsonl or .parquet file, in file order."""
  return [_example(record, row, where) for row, (record, where) in enumerate(read_records(path))]


def read_split(data_dir: str, split: str) -> list[dict]:
  """`<data_dir>/<split>.jsonl` or `.parquet` (exactly one may exist), or,
  when `split` ends in .jsonl/.parquet, that file (relative to data_dir)."""
  if split.endswith(_FORMATS):
    return read_examples(os.path.join(data_dir, split))
  candidates = [os.path.join(data_dir, split + ext) for ext in _FORMATS]
  found = [p for p in candidates if epath.Path(p).exists()]
  if len(found) != 1:
    raise FileNotFoundError(
        f'split {split!r}: need exactly one of {candidates}, found {len(found)}')
  return read_examples(found[0])

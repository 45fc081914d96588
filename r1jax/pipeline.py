"""Multi-stage recipes (configs/r1.py: DeepSeek-R1; configs/distill.py:
distillation) run as one command, each stage with the engine of its kind:

  kind        runs                                   its output (the next stage's input)
  sft         r1jax/sft.py (via launch)              <workdir>/<stage>/ (checkpoints, hf/)
  rl          launch's GRPO loop                     <workdir>/<stage>/ (checkpoints, hf/)
  rm          r1jax/reward_model.py (via launch)     <workdir>/<stage>/ (reward_model.json)
  rejection   r1jax/rejection.py                     <workdir>/<stage>/traces.jsonl

A stage's config is a whole config of its kind (config.<stage>), with its
workdir <workdir>/<stage>; the recipe names where its inputs come from
(pipeline.inputs: key in the stage's config -> the stage whose output fills
it, or 'base': (stage, key, source) triples). Before anything runs, every selected stage's config is
validated (an error names the stage and the key). A finished stage leaves
<workdir>/<stage>/stage.json and is skipped on a rerun; a killed stage
resumes from its own checkpoints or part files. `stages` selects a subset
('rs,sft'; their inputs must exist). At the end <workdir>/summary.json holds
each stage's name, kind, output and final metrics.
"""
import hashlib
import json
import os
import time

import jax
from etils import epath

from r1jax import config as rc, evaluate as ev, export, metrics, workdir as wd

KINDS = ('sft', 'rl', 'rm', 'rejection')
DONE = 'stage.json'
STAGE_CONFIG = 'stage_config.json'  # what a finished stage ran with (checked on a rerun)


def stage_names(config) -> list[str]:
  """The stages to run, in the recipe's order."""
  order = list(config.pipeline.order)
  if not config.stages:
    return order
  want = [s.strip() for s in str(config.stages).split(',') if s.strip()]
  unknown = [s for s in want if s not in order]
  if unknown:
    raise rc.ConfigError('stages', f'unknown stage {unknown[0]!r}; the recipe\'s stages: '
                         f'{", ".join(order)}')
  return [s for s in order if s in want]


def _set(config, key: str, value) -> None:
  *parents, leaf = key.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def _get(config, key: str):
  node = config
  for p in key.split('.'):
    node = node[p]
  return node


def output_of(config, stage: str) -> str:
  """What a stage leaves for the next: its workdir, or its traces file."""
  root = os.fspath(wd.absolute(config.workdir))
  if stage == 'base':
    return config.pipeline.base
  if stage in config.pipeline.get('sources', {}):  # given, e.g. distillation's teacher
    return config.pipeline.sources[stage]
  kind = config.pipeline.kinds[stage]
  where = os.path.join(root, stage)
  return os.path.join(where, 'traces.jsonl') if kind == 'rejection' else where


def wired(config, stage: str, placeholder: bool = False):
  """The stage's config with its workdir and inputs filled in (an input the
  user set is kept). `placeholder`: inputs that do not exist yet are the
  recipe's base (for validating before anything ran)."""
  c = rc.ConfigDict(config[stage].to_dict())
  root = os.fspath(wd.absolute(config.workdir))
  kind = config.pipeline.kinds[stage]
  if kind == 'rejection':
    c.out = c.out or os.path.join(root, stage)
  else:
    c.workdir = os.path.join(root, stage)
  if 'data_dir' in c and not c.data_dir:
    c.data_dir = os.path.join(root, 'tfds')
  for st, key, source in config.pipeline.inputs:
    if st != stage or _get(c, key):
      continue
    paths = [output_of(config, s) for s in str(source).split(',')]
    if placeholder and any(not os.path.exists(p) for p in paths):
      if key.endswith('data'):
        continue  # a data file that a stage will write: checked when the stage runs
      paths = [config.pipeline.base]
    _set(c, key, ','.join(paths))
  return c


def validate(config) -> list[str]:
  """Checks every selected stage's config before anything runs; returns
  the stages."""
  names = stage_names(config)
  if not config.pipeline.base:
    raise rc.ConfigError('pipeline.base', 'the base model the recipe starts from: a HF directory '
                         'or r1jax workdir (the config arg ckpt=...)')
  for name, path in config.pipeline.get('sources', {}).items():
    uses = [(st, key) for st, key, src in config.pipeline.inputs if src == name and st in names]
    if uses and not os.path.exists(path):
      raise rc.ConfigError(f'pipeline.sources.{name}', f'{path!r} does not exist (stage '
                           f'{uses[0][0]} reads it)')
    if (uses and uses[0][1].endswith('ckpt') and os.path.isdir(path)
        and wd.checkpoint_ref(path) is None and not os.path.exists(os.path.join(path,
                                                                                'config.json'))):
      raise rc.ConfigError(f'pipeline.sources.{name}', f'{path!r} is neither a HF directory '
                           f'(config.json) nor an r1jax workdir (stage {uses[0][0]} loads it '
                           'as a model)')
  # A stage's input from a stage neither run before nor selected ahead of it.
  for i, stage in enumerate(names):
    for st, key, source in config.pipeline.inputs:
      if st != stage or _get(config[stage], key):  # an input the user set is kept
        continue
      for src in str(source).split(','):
        if src == 'base' or src in config.pipeline.get('sources', {}) or src in names[:i]:
          continue
        if not (wd.absolute(config.workdir) / src / DONE).exists():
          raise rc.ConfigError('stages', f'stage {stage} reads its {key} from stage {src}, '
                               f'which has not finished in {wd.absolute(config.workdir)}: add '
                               f'{src} to stages (or set {stage}.{key})')
  for stage in names:
    kind = config.pipeline.kinds[stage]
    c = wired(config, stage, placeholder=True)
    try:
      if kind == 'rejection':
        from r1jax import rejection  # pylint: disable=g-import-not-at-top
        rejection.validate(c)
      else:
        rc.validate(c)
        if kind == 'sft':
          from r1jax import sft  # pylint: disable=g-import-not-at-top
          sft.validate(c)
    except rc.ConfigError as e:
      raise e.within(stage) from None
  return names


def _final_metrics(stage_dir: epath.Path, kind: str, result: dict) -> dict:
  """A stage's headline figures: its summary's numbers, and for training
  stages the first and last evaluation in metrics.jsonl."""
  out = {k: v for k, v in result.items()
         if isinstance(v, (int, float)) and not isinstance(v, bool)}
  path = stage_dir / 'metrics.jsonl'
  if kind != 'rejection' and path.exists():
    rows = [r for r in metrics.read_jsonl(path) if any(k.startswith('eval/') for k in r)]
    if rows:
      if rows[0]['step'] == 0:
        out.update({f'{k} at step 0': rows[0][k] for k in _AT_START if k in rows[0]})
      out.update({k: v for k, v in rows[-1].items() if k.startswith('eval/')})
  return out


def _run_stage(config, stage: str, launch_run) -> dict:
  kind = config.pipeline.kinds[stage]
  c = wired(config, stage)
  prepare = config.pipeline.get('prepare', {}).get(stage)
  if prepare:
    _prepare(config, stage, c, prepare)
  if kind == 'rejection':
    from r1jax import rejection  # pylint: disable=g-import-not-at-top
    return rejection.run(c)
  result = launch_run(c)
  if kind in ('sft', 'rl'):
    export.export_hf(c.workdir)  # the RL loop writes checkpoints only
  return result


def _prepare(config, stage: str, c, what: str) -> None:
  """Data a stage needs that no stage wrote: 'non_reasoning' writes the
  general task's training prompts with their right responses (R1's
  non-reasoning SFT data: no chain of thought) and adds the file to the
  stage's sft.data."""
  if what != 'non_reasoning':
    raise ValueError(f'pipeline.prepare.{stage}: unknown {what!r}')
  from r1jax.data import general, load_split, make_prompt  # pylint: disable=g-import-not-at-top
  n = config.pipeline.non_reasoning_examples
  path = os.path.join(c.workdir, 'non_reasoning.jsonl')
  if not os.path.exists(path):
    src = load_split('general', 'train', c.data_dir)
    os.makedirs(c.workdir, exist_ok=True)
    ev.write_atomic(epath.Path(path), ''.join(
        json.dumps({'prompt': make_prompt(ex), 'completion': general.response_text(ex['answer']),
                    'source': f'general train {i}'}) + '\n'
        for i, ex in enumerate(src[j] for j in range(min(n, len(src))))))
  c.sft.data = ','.join(filter(None, [c.sft.data, path]))


def run(config, launch_run) -> dict:
  """Runs the selected stages in order (skipping finished ones) with
  `launch_run` (r1jax.launch.run) for the training stages; returns the
  summary written to <workdir>/summary.json."""
  names = validate(config)
  root = wd.absolute(config.workdir)
  log = metrics.LibraryLog()  # the pipeline's own library chatter (exports): <workdir>/log.txt
  try:
    root.mkdir(parents=True, exist_ok=True)
    log.to(root)
  except OSError as e:
    log.close()
    raise rc.ConfigError('workdir', f'{root}: {e.strerror or e}') from None
  try:
    return _run(config, names, root, launch_run)
  finally:
    log.close()


# Settings that say how a stage ran, not what it computes: a finished stage
# run on another mesh, with other workers or checkpoint cadence is the same.
_HOW_IT_RAN = ('mesh', 'distributed', 'reward_workers', 'checkpoint_every', 'checkpoint_keep',
               'checkpoint_wait_s', 'eval_every')
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reads(config, stage: str) -> list[str]:
  """The earlier stages whose outputs `stage` takes as inputs."""
  return sorted({src for st, _, source in config.pipeline.inputs if st == stage
                 for src in str(source).split(',') if src in config.pipeline.kinds})


def _settings(config, stage: str, root: epath.Path) -> dict:
  """What a stage's result depends on: its wired config as JSON values (paths
  under the pipeline's workdir and the r1jax checkout written relative to
  them, so a moved workdir or checkout is the same run; how-it-ran settings
  left out) and the record of each earlier stage it reads (a rerun of one
  makes its readers stale)."""
  c = wired(config, stage).to_dict()
  for k in _HOW_IT_RAN:
    c.pop(k, None)

  def rel(v):
    if isinstance(v, str):
      for prefix, name in ((os.fspath(root), '<workdir>'), (_PACKAGE_ROOT, '<r1jax>')):
        v = ','.join(name + x[len(prefix):] if x == prefix or x.startswith(prefix + os.sep) else x
                     for x in v.split(','))
      return v
    if isinstance(v, dict):
      return {k: rel(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
      return [rel(x) for x in v]
    return v
  out = json.loads(json.dumps(rel(c), sort_keys=True, default=str))
  markers = {src: root / src / DONE for src in _reads(config, stage)}
  out['<input stages>'] = {
      src: hashlib.sha256(m.read_bytes()).hexdigest()[:16] if m.exists() else 'not finished'
      for src, m in markers.items()}
  return out


def _changes(old: dict, new: dict, prefix: str = '') -> list[str]:
  """'key: old -> new' for each setting both hold that differs (a setting
  added to r1jax since the stage ran is not a change)."""
  out = []
  for k in sorted(set(old) & set(new)):
    a, b = old[k], new[k]
    if isinstance(a, dict) and isinstance(b, dict):
      out += _changes(a, b, f'{prefix}{k}.')
    elif a != b:
      out.append(f'{prefix}{k}: {a!r} -> {b!r}')
  return out


def _check_unchanged(config, stage: str, root: epath.Path) -> None:
  """A finished stage is skipped only if it would run with the same settings
  on the same inputs now: otherwise an error, never an old result passed
  off as the new one."""
  saved = root / stage / STAGE_CONFIG
  if not saved.exists():
    print(f'[r1jax] warning: stage {stage} finished before r1jax kept stage settings; '
          'skipped without checking them', flush=True)
    return
  changes = _changes(json.loads(saved.read_text()), _settings(config, stage, root))
  if changes:
    shown = '; '.join(changes[:5]) + (f'; and {len(changes) - 5} more' if len(changes) > 5 else '')
    raise rc.ConfigError(
        stage, f'stage {stage} finished with other settings or inputs than this run gives it '
        f'({shown}). Restore them to keep its result, or remove {root / stage} to run it again.')


def check_finished(config, names: list[str], root: epath.Path) -> None:
  """Before anything runs: every selected stage that finished must still be
  what this config asks for, and no finished stage may read one that is
  about to run again (`names` in order)."""
  will_run = set()
  for stage in names:
    if (root / stage / DONE).exists():
      rerun = [src for src in _reads(config, stage) if src in will_run]
      if rerun:
        raise rc.ConfigError('stages', f'stage {stage} finished, but {rerun[0]}, which it reads, '
                             f'runs again now: remove {root / stage} too, or run only the '
                             'stages after it')
      _check_unchanged(config, stage, root)
    else:
      will_run.add(stage)


def _run(config, names: list[str], root: epath.Path, launch_run) -> dict:
  summary_path = root / 'summary.json'
  done = json.loads(summary_path.read_text()).get('stages', {}) if summary_path.exists() else {}
  check_finished(config, names, root)
  t_all = time.time()
  print(f'[r1jax] pipeline {config.pipeline.name}: stages {", ".join(names)} in {root}',
        flush=True)
  for stage in names:
    kind = config.pipeline.kinds[stage]
    marker = root / stage / DONE
    if marker.exists():
      done[stage] = json.loads(marker.read_text())
      print(f'[r1jax] stage {stage} ({kind}): done already ({marker}); skipped', flush=True)
      continue
    print(f'[r1jax] ---- stage {stage} ({kind}) ----', flush=True)
    t0 = time.time()
    try:
      result = _run_stage(config, stage, launch_run)
    except rc.ConfigError as e:  # named as the pipeline's key
      raise e.within(stage) from None
    record = {'name': stage, 'kind': kind, 'output': output_of(config, stage),
              'minutes': (time.time() - t0) / 60,
              'metrics': _final_metrics(root / stage, kind, result)}
    if jax.process_index() == 0:
      ev.write_atomic(root / stage / STAGE_CONFIG,
                      json.dumps(_settings(config, stage, root), indent=2, sort_keys=True))
      ev.write_atomic(marker, json.dumps(record, indent=2))
    done[stage] = record
    print(f'[r1jax] stage {stage} done in {record["minutes"]:.1f} min', flush=True)
  summary = {'pipeline': config.pipeline.name, 'workdir': os.fspath(root),
             'stages': {s: done[s] for s in config.pipeline.order if s in done}}
  if jax.process_index() == 0:
    ev.write_atomic(summary_path, json.dumps(summary, indent=2))
  print(f'[r1jax] pipeline done in {(time.time() - t_all) / 60:.1f} min; summary: {summary_path}',
        flush=True)
  for s, rec in summary['stages'].items():
    shown = {k: v for k, v in rec['metrics'].items() if k in _HEADLINE}
    print(f'[r1jax]   {s:<14} ' + '  '.join(f'{k} {v:.3f}' for k, v in shown.items()), flush=True)
  return summary


# The evaluation figures a stage's summary also gives at its step 0.
_AT_START = ('eval/pass@1', 'eval/loss', 'eval/language', 'eval/format_rate', 'eval/rm_accuracy',
             'eval/pass@1_general', 'eval/rm_score_general', 'eval/length')
_HEADLINE = ('eval/pass@1', 'eval/pass@1 at step 0', 'eval/language', 'eval/language at step 0',
             'eval/format_rate', 'eval/rm_accuracy', 'keep_rate', 'prompt_keep_rate',
             'eval/pass@1_general', 'eval/rm_score_general', 'eval/rm_score_general at step 0')

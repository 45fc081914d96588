"""A trained r1jax checkpoint as a HF model directory, and r1jax checkpoints
as starting points.

  python -m r1jax.export --workdir=W [--step=N] --out=DIR

writes DIR/{config.json, model.safetensors (or shards + index), the tokenizer
files, generation_config.json}, which `transformers` (AutoModelForCausalLM,
AutoTokenizer), vLLM and r1jax itself (`model.ckpt=DIR`) load. The policy's
config.json and tokenizer come from `<workdir>/model/`, which every run
writes when it starts (`write_model_dir`); the weights are the `params` of
checkpoint N (default: the newest), read alone (not the optimizer state or
the reference) after its digest is checked.

`model.ckpt` also takes the workdir itself (`load`): a new run starts from
the policy of another run's newest checkpoint, or of
`<workdir>/checkpoints/<step>`.
"""
import json
import os
import sys

import jax
from etils import epath
from flax import nnx

from r1jax import models, sharding as shd, workdir as wd

LORA_FILE = 'lora.json'
# What a tokenizer directory may hold (HF and SentencePiece layouts).
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer.model', 'tokenizer_config.json',
                   'special_tokens_map.json', 'added_tokens.json', 'vocab.json', 'merges.txt',
                   'chat_template.jinja', 'chat_template.json')


def write_model_dir(workdir: epath.PathLike, cfg: models.ModelConfig, tokenizer_path: str,
                    tok, generation: dict, lora_base: str | None = None) -> epath.Path:
  """`<workdir>/model/`: config.json, the tokenizer files and
  generation_config.json of this run's policy (process 0 writes; each file
  replaced atomically, so a crash leaves the previous one); with LoRA also
  lora.json (rank, alpha, targets and the base the adapters are for: the
  checkpoints hold the adapters only)."""
  out = epath.Path(workdir) / wd.MODEL
  if jax.process_index() != 0:
    return out
  out.mkdir(parents=True, exist_ok=True)
  files = {'config.json': json.dumps(models.config_to_hf(cfg), indent=2),
           'generation_config.json': json.dumps(generation, indent=2)}
  if lora_base is not None and not (out / LORA_FILE).exists():
    # Pinned once (a resumed run keeps it): an absolute path, and a workdir
    # as the checkpoint it holds now, so the adapters never meet another base.
    base = wd.absolute(lora_base)
    ref = wd.checkpoint_ref(base)
    if ref is not None and ref[1] is None:
      from r1jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
      ckpt = Checkpointer(ref[0], async_save=False, read_only=True)
      try:
        base = ref[0] / wd.CHECKPOINTS / str(ckpt.latest_step())
      finally:
        ckpt.close()
    files[LORA_FILE] = json.dumps({'rank': cfg.lora_rank, 'alpha': cfg.lora_alpha,
                                   'targets': list(cfg.lora_targets),
                                   'base': os.fspath(base)}, indent=2)
  src = epath.Path(tokenizer_path)
  names = [src.name] if src.is_file() else [n for n in TOKENIZER_FILES if (src / n).exists()]
  for name in names:
    path = src if src.is_file() else src / name
    target = 'tokenizer.model' if src.is_file() and not name.endswith('.json') else name
    files[target] = path.read_bytes()
  if 'tokenizer.json' not in files and hasattr(tok, 'hf_files'):
    files.update(tok.hf_files())  # a bare SentencePiece model: what transformers reads
  for name, data in files.items():
    tmp = out / f'.{name}.tmp'
    (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)
    tmp.replace(out / name)
  return out


def generation_config(tok, eos_ids, temperature: float, top_p: float) -> dict:
  return {'bos_token_id': tok.bos_id, 'eos_token_id': list(eos_ids), 'pad_token_id': tok.pad_id,
          'do_sample': temperature > 0, 'temperature': temperature, 'top_p': top_p}


def load(path: epath.PathLike, dtype: str = 'float32', *, compute_dtype: str | None = None,
         mesh: jax.sharding.Mesh | None = None, rules: shd.Rules = shd.TRAIN_RULES,
         step: int | None = None, **config_overrides) -> models.Decoder:
  """The policy of an r1jax workdir's newest checkpoint (or of `step`), or
  of `<workdir>/checkpoints/<step>`, as a `Decoder` (like `models.load_hf`;
  with a mesh every weight is restored directly into its sharding)."""
  from r1jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  ref = wd.checkpoint_ref(path)
  if ref is None:
    raise models.CheckpointError(f'{path}: not an r1jax workdir (<workdir>/model/config.json '
                                 'and <workdir>/checkpoints/) or <workdir>/checkpoints/<step>')
  workdir, step = ref[0], ref[1] if step is None else step
  config_file = workdir / wd.MODEL / 'config.json'
  lora_file = workdir / wd.MODEL / LORA_FILE
  if lora_file.exists():  # the adapters' base, then the checkpoint's adapters
    from r1jax.models import lora  # pylint: disable=g-import-not-at-top
    spec = json.loads(lora_file.read_text())
    base_path = spec['base']
    kw = dict(compute_dtype=compute_dtype, mesh=mesh, **config_overrides)
    base = (load(base_path, dtype, rules=rules, **kw) if wd.checkpoint_ref(base_path) is not None
            else models.load_hf(base_path, dtype, rules=rules, **kw))
    if base.cfg.lora_rank:  # a LoRA run's policy as the base: its adapters folded in
      base = lora.merged(base)
    model = lora.add(base, spec['rank'], spec['alpha'], tuple(spec['targets']), mesh=mesh)
    graphdef, adapters, frozen = lora.split(model)
    abs_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), adapters)
  else:
    cfg = models.config_from_hf(json.loads(config_file.read_text()), param_dtype=dtype,
                                dtype=compute_dtype or dtype, **config_overrides)
    abstract = nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    frozen = None
  if mesh is None:
    mesh = jax.sharding.Mesh(jax.devices()[:1], ('data',))
    shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()), abs_state)
  else:
    shardings = shd.state_shardings(abs_state, mesh, rules)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abs_state, shardings)
  ckpt = Checkpointer(workdir, async_save=False, read_only=True)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None or step not in ckpt.manager.all_steps():
      raise models.CheckpointError(f'{workdir}/{wd.CHECKPOINTS}: no checkpoint '
                                   f'{"at all" if step is None else step} (steps: '
                                   f'{sorted(ckpt.manager.all_steps())})')
    problem, _ = ckpt.verify(step)
    if problem is not None:
      raise models.CheckpointError(f'{ckpt.directory / str(step)}: {problem}')
    params = ckpt.restore_params(step, target)
  finally:
    ckpt.close()
  return nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)


def export(workdir: epath.PathLike, out: str, step: int | None = None,
           dtype: str = '') -> str:
  """Writes checkpoint `step` (default: the newest) of `workdir` to `out` as
  a HF directory; returns `out`. `dtype`: the weights' dtype ('' : as trained).
  A LoRA run's: the merged weights, and the adapters alone in PEFT's layout
  in `out/adapter` (adapter_config.json + adapter_model.safetensors)."""
  if os.path.isdir(out) and os.listdir(out):
    raise FileExistsError(f'{out} is not empty; export into a new directory')
  ref = wd.checkpoint_ref(workdir)
  if ref is None:
    raise models.CheckpointError(f'{workdir}: not an r1jax workdir (no {wd.MODEL}/config.json '
                                 f'or {wd.CHECKPOINTS}/)')
  workdir, step = ref[0], ref[1] if step is None else step  # <workdir>/checkpoints/<step> too
  saved = json.loads((workdir / wd.MODEL / 'config.json').read_text())
  model = load(workdir, dtype or saved.get('torch_dtype', 'float32'), step=step)
  if model.cfg.lora_rank:  # the merged weights; the adapters alone in PEFT's layout too
    from r1jax.models import lora  # pylint: disable=g-import-not-at-top
    lora.save_peft(model, os.path.join(out, 'adapter'),
                   json.loads((workdir / wd.MODEL / LORA_FILE).read_text())['base'])
    model = lora.merged(model)
  models.save_hf(model, out)
  if jax.process_index() == 0:
    for f in (workdir / wd.MODEL).iterdir():
      if f.name not in ('config.json', LORA_FILE) and not f.name.startswith('.'):
        with open(os.path.join(out, f.name), 'wb') as dst:
          dst.write(f.read_bytes())
  return out


def export_hf(workdir: epath.PathLike, step: int | None = None) -> epath.Path:
  """<workdir>/hf: checkpoint `step` (default: the newest) as a HF
  directory, written aside and moved in place, so a crash never leaves a
  partial one (kept when it is there already)."""
  workdir = epath.Path(workdir)
  hf_dir = workdir / 'hf'
  if (hf_dir / 'config.json').exists():
    return hf_dir
  tmp = workdir / '.hf.tmp'
  if tmp.exists():
    tmp.rmtree()
  export(workdir, os.fspath(tmp), step=step)
  if jax.process_index() == 0:
    if hf_dir.exists():
      hf_dir.rmtree()
    tmp.rename(hf_dir)
  return hf_dir


def check_flags(out: str, step: int, dtype: str) -> str:
  """What is wrong with the command's flags ('' when nothing), before any
  weights load: a dtype it cannot write, a step that is not one, an output
  that is a file or on a disk it cannot write."""
  from r1jax import config as rc  # pylint: disable=g-import-not-at-top
  if dtype not in ('', *rc.DTYPES):
    return f'--dtype: {dtype!r}: one of {rc.DTYPES} or empty (as trained)'
  if step < -1:
    return f'--step: {step}: a checkpoint step, or -1 for the newest'
  if os.path.exists(out) and not os.path.isdir(out):
    return f'--out: {out} is a file; export into a new directory'
  parent = os.path.abspath(out)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    return f'--out: {out}: {parent} is not a directory this process can write'
  return ''


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from r1jax import metrics  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  problem = check_flags(f.out, f.step, f.dtype)
  if problem:
    sys.exit(f'FATAL: {problem}')
  log = metrics.LibraryLog()  # library INFO kept off the console
  try:
    out = export(f.workdir, f.out, None if f.step < 0 else f.step, f.dtype)
  except models.CheckpointError as e:
    sys.exit(f'FATAL: --workdir: {e}')
  except FileExistsError as e:
    sys.exit(f'FATAL: --out: {e}')
  except FileNotFoundError as e:
    sys.exit(f'FATAL: --workdir: {e}')
  finally:
    log.close()
  ref = wd.checkpoint_ref(f.workdir)
  step = f.step if f.step >= 0 else ref[1] if ref and ref[1] is not None else 'newest'
  print(f'[r1jax] exported {f.workdir} (step {step}) to {out}: '
        f'{", ".join(sorted(os.listdir(out)))}', flush=True)


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'an r1jax workdir', required=True)
  flags.DEFINE_integer('step', -1, 'checkpoint step; -1: the newest')
  flags.DEFINE_string('out', None, 'the HF directory to write (new or empty)', required=True)
  flags.DEFINE_string('dtype', '', "weights' dtype (float32, bfloat16); '': as trained")
  from r1jax import config as _rc  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=lambda argv: _rc.parse_flags(argv, needs_config=False))

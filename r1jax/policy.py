"""What every training command starts with: the policy (a HF directory, an
r1jax checkpoint, the tiny base shipped with r1jax, or a fresh preset) with
its tokenizer and stop ids, and the held-out evaluation of a task (R1's
pass@1 over k samples) that the RL and SFT loops run at their eval steps.
"""
import dataclasses
import time

import jax
from flax import nnx

from r1jax import base, config as rc, evaluate, models, tokenizer as tk, workdir as wd
from r1jax.data import make_prompt
from r1jax.rollout import SamplingConfig


@dataclasses.dataclass
class Policy:
  model: models.Decoder
  tok: tk.Tokenizer
  tok_path: str  # where the tokenizer files are (copied into <workdir>/model)
  eos_ids: tuple[int, ...]  # the sampler's and the trainer's stop ids


def load(config, mesh: jax.sharding.Mesh) -> Policy:
  """The model config.model names (model.ckpt, or the recipe's tiny base,
  or a fresh preset), restored into the mesh's shardings, and its tokenizer."""
  built = rc.base_to_build(config)
  if built is not None:
    base.build(built)  # no-op when already built
  ckpt_path = rc.model_ckpt(config)
  m = config.model
  if ckpt_path:
    tok_path = config.tokenizer or wd.model_dir(ckpt_path)
    try:
      tok = tk.load_tokenizer(tok_path)
    except FileNotFoundError as e:
      hint = ('point it at a directory with tokenizer.json or tokenizer.model' if config.tokenizer
              else 'set --config.tokenizer to a directory that has one (e.g. the HF repo the '
              'weights came from)')
      raise rc.ConfigError('tokenizer', f'{e}; {hint}') from None
    from_run = wd.checkpoint_ref(ckpt_path) is not None
    if from_run:
      print(f'[r1jax] starting from the policy of the r1jax checkpoint {ckpt_path}', flush=True)
    elif ckpt_path == base.SHIPPED:
      print(f'[r1jax] starting from the tiny base shipped with r1jax ({ckpt_path}; '
            f'{base.describe(ckpt_path)})', flush=True)
    from r1jax import export  # pylint: disable=g-import-not-at-top
    try:
      model = (export.load if from_run else models.load_hf)(
          ckpt_path, m.param_dtype, compute_dtype=m.dtype, mesh=mesh, remat=m.remat,
          attention=m.attention, mlp_chunk=m.mlp_chunk)
    except models.CheckpointError as e:
      raise rc.ConfigError('model.ckpt', str(e)) from None
  else:
    tok_path = config.tokenizer
    tok = tk.load_tokenizer(tok_path)
    cfg = models.get_preset(m.name, param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat,
                            attention=m.attention, mlp_chunk=m.mlp_chunk)
    if cfg.vocab_size < tok.vocab_size:
      cfg = cfg.replace(vocab_size=tok.vocab_size)
    model = models.create(cfg, seed=config.seed, mesh=mesh)
  if model.cfg.lora_rank:  # the policy of a LoRA run: its adapters folded into the weights
    from r1jax.models import lora  # pylint: disable=g-import-not-at-top
    model = lora.merged(model)
  lo = config.get('lora')
  if lo is not None and lo.rank:
    if not ckpt_path:  # export and later stages rebuild the policy from the base
      raise rc.ConfigError('lora.rank', 'adapters need a base: set model.ckpt (a HF directory '
                           'or an r1jax workdir)')
    from r1jax.models import lora  # pylint: disable=g-import-not-at-top
    targets = tuple(t.strip() for t in lo.targets.split(','))
    model = lora.add(model, lo.rank, lo.alpha, targets, seed=config.seed, mesh=mesh)
  # One set of stop ids for the sampler and the decoder (Llama 3 ends turns
  # with <|eot_id|>, which the tokenizer's own eos is not).
  eos_ids = tok.set_stop_ids(model.cfg.eos_ids)
  return Policy(model, tok, tok_path, eos_ids)


class TaskEval:
  """The held-out questions of a task, sampled k times each (R1's pass@1 at
  T 0.6, top-p 0.95) and scored by the task's verifier: `__call__(params)`
  gives the 'eval/…' metrics and this host's per-question samples."""

  def __init__(self, config, graphdef: nnx.GraphDef, tok, eos_ids, mesh, scorer, examples,
               verifier: str, max_new_tokens: int, max_prompt_len: int, task: str = ''):
    e = config.eval
    self.config, self.tok, self.scorer, self.examples = config, tok, scorer, examples
    self.task = task or config.task
    self.verifier, self.max_prompt_len = verifier, max_prompt_len
    self.sampler = evaluate.make_sampler(graphdef, SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=e.temperature, top_p=e.top_p,
        eos_ids=eos_ids, pad_id=tok.pad_id), e.k, mesh)
    # The task's held-out split as a benchmark: `python -m r1jax.evaluate` on
    # a checkpoint of the run, with its seed and bench=<task>, gives the same.
    self.format = ('code' if verifier in ('code', 'code_fraction') else
                   'math' if self.task == 'local' else self.task)
    self.key = evaluate.benchmark_key(config.seed, self.task)

  def __call__(self, params, forced: str = '') -> tuple[dict, list[list[dict]]]:
    t0 = time.time()
    e = self.config.eval
    bench = evaluate.Benchmark(self.task, self.format, self.examples,
                               [make_prompt(x) for x in self.examples], forced=forced,
                               verifier=self.verifier)
    m, questions = evaluate.evaluate(self.sampler, params, bench, self.tok, self.scorer, e.k,
                                     e.batch_size, self.max_prompt_len, self.key)
    m['eval/length'] = m['eval/length/mean']
    m['eval/seconds'] = time.time() - t0
    return m, questions

  def samples(self, questions: list[list[dict]], limit: int = 16) -> list[dict]:
    """The first questions' samples, for samples.jsonl."""
    return [{'question': self.examples[q[0]['index']].get('question'),
             'answer': self.examples[q[0]['index']].get('answer'),
             'completions': [s['completion'] for s in q], 'correct': [s['correct'] for s in q]}
            for q in questions[:limit]]

  def line(self, step: int, m: dict, tag: str = '') -> str:
    k = self.config.eval.k
    return (f'eval{tag} @ step {step}: pass@1 {m["eval/pass@1" + tag]:.3f}  '
            f'cons@{k} {m.get(f"eval/cons@{k}" + tag, float("nan")):.3f}  '
            f'format {m.get("eval/format_rate" + tag, 0):.2f}  '
            + (f'language {m["eval/language" + tag]:.2f}  ' if 'eval/language' + tag in m else '')
            + f'({len(self.examples)} questions x {k} samples, {m["eval/seconds" + tag]:.0f}s)')

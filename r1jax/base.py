"""A reproducible tiny base model for R1-Zero on a CPU.

R1-Zero starts from a base model, and none can be downloaded here, so r1jax
builds one: next-token pretraining on generated text in the R1-Zero template
(and its short tail "User: … Assistant:") whose answers are imperfect in two
ways, as web text is:

  * a share `direct_fraction` of the rows answer at once, with an empty
    <think> block — the right answer, but a one-step guess is all a model can
    learn from such rows, and it is mostly wrong;
  * the other rows reduce the expression one operation at a time
    (tasks.reduction), each step wrong with probability `error_rate`
    (off by ±1 or ±10), the answer following the chain.

The base thus knows the format and how to reduce, but often skips the
reasoning. RL can only sharpen what the base can already do: choosing to
think pays, and the careful steps pay (R1-Zero's longer chains of thought).
Pretraining runs a fixed schedule of `max_steps` (reproducible: the same
base on every machine), stopping early only if greedy accuracy on held-out
questions reaches `target_greedy_accuracy`, or as a guard after
`max_minutes`; base_report.json records the greedy accuracy, and also with
the answer forced without thinking and with the chain started.

  corpus ─▶ sentencepiece tokenizer (template tags and numbers below 100 whole)
         ─▶ tiny Qwen2-shaped decoder ─▶ next-token training for max_steps
         ─▶ <dir>/{config.json, model.safetensors, tokenizer.model, base_report.json}

  python -m r1jax.base --config=configs/base_tiny.py
"""
import json
import os
import random
import re
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from r1jax import config as rc, models, sft
from r1jax.data import tasks
from r1jax.data.templates import NO_THINKING, TAGS, r1_zero_prompt
from r1jax.rollout import SamplingConfig, generate


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # False: use the base shipped in the package (SHIPPED, built by this module
  # with this config); True: build it afresh into `dir`.
  c.rebuild = False
  c.dir = ''  # where to build; a training run sets <workdir>/base
  c.task = 'arithmetic'
  c.data_dir = ''  # where TFDS prepares the task; a training run sets its own
  c.seed = 0
  c.error_rate = 0.1  # per reduction step
  c.direct_fraction = 0.4  # rows answering without a chain (what a no-thinking answer knows)
  # Share of pretraining rows in the full R1-Zero template; the rest use its
  # short tail "User: <question>. Assistant:" (same question/answer text, a
  # third of the tokens), which makes pretraining ~1.6x cheaper per example.
  c.template_fraction = 0.25
  c.vocab_size = 320
  c.number_symbols = 100  # 0..99 are single tokens (10: every digit its own)
  c.arch = 'qwen2'  # or 'llama' (no q/k/v bias; HF LlamaForCausalLM)
  c.model = ml_collections.ConfigDict(dict(
      hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2,
      head_dim=32))
  c.batch_size = 64
  c.lr = 3e-3
  c.max_steps = 1200
  c.max_minutes = 12.0  # a guard on slow machines; the schedule is by step
  c.eval_every = 250
  c.eval_questions = 128
  c.target_greedy_accuracy = 0.95
  c.max_new_tokens = 32
  # R1's recipe (configs/r1.py) starts from a base with two habits to fix:
  # chain_words closes each reduction with a word and its result (' so 18'),
  # and language_mixing writes that word in Chinese ('所以') with that
  # probability (R1-Zero's language mixing, for the language reward);
  # general_fraction of the rows are the general task (data/general.py),
  # answered without a chain and wrong with general_error_rate (for the
  # reward model). All off: the shipped base's corpus, draw for draw.
  c.chain_words = False
  c.language_mixing = 0.0
  c.general_fraction = 0.0
  c.general_error_rate = 0.4
  return c


def r1_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The base configs/r1.py starts from (SHIPPED_R1): each chain closed by a
  word, in Chinese with probability 0.3, and a quarter of the rows general
  prompts, 40 % of them answered wrong; up to 2,500 steps (more to learn; it
  stops at the arithmetic criterion, target_greedy_accuracy)."""
  c.update(chain_words=True, language_mixing=0.3, general_fraction=0.25,
           general_error_rate=0.4, max_new_tokens=40, max_steps=2500, max_minutes=40.0)
  return c


# The base configs/zero.py trains from, built once with default_config() by
#   python -m r1jax.base --config=configs/base_tiny.py --config.dir=/tmp/base-tiny
# (a build skips a directory that already holds a base), copied to
# r1jax/assets/base-tiny and shipped, so that every machine starts RL from the same weights (a base
# built on another CPU differs in its float rounding, and so in its figures).
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets', 'base-tiny')
# The one configs/r1.py starts from: configs/base_tiny.py:r1.
SHIPPED_R1 = SHIPPED + '-r1'
# configs/distill.py's student: configs/base_tiny.py:student.
SHIPPED_STUDENT = SHIPPED + '-student'


def student_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The smaller student configs/distill.py distils into (SHIPPED_STUDENT):
  Llama-shaped, 3 layers of width 96 (0.32M parameters, 39 % of the teacher's),
  its own 256-piece tokenizer, pretrained on the R1-Zero base's corpus (so
  the teacher's chain words are new to it)."""
  c.update(arch='llama', vocab_size=256, seed=1)
  c.model.update(hidden_size=96, intermediate_size=256, num_layers=3, num_heads=3,
                 num_kv_heads=1, head_dim=32)
  return c


def imperfect_arithmetic(question: str, rng: np.random.Generator, error_rate: float
                         ) -> tuple[str, str]:
  """The reduction chain of '7+5-3+9' (tasks.reduction) where each step's
  result is wrong with probability error_rate (off by ±1, or by ±10 as with a
  dropped or doubled carry); later steps and the answer follow the mistake."""
  def wrong(value: int) -> int:
    if rng.random() >= error_rate:
      return value
    return value + int(rng.choice([d for d in (-10, 10, -1, 1) if value + d >= min(value, 0)]))
  chain, total = tasks.reduction(question, wrong)
  return chain, str(total)


CHAIN_WORDS = {'en': ' so ', 'zh': ' 所以 '}


def spoken(chain: str, rng: np.random.Generator | None = None, mixing: float = 0.0) -> str:
  """The chain '7+5=12' closed by a word and its result: '7+5=12 so 12', the
  word in Chinese ('7+5=12 所以 12') with probability `mixing` (drawn from rng)."""
  zh = mixing > 0 and rng.random() < mixing
  return chain + CHAIN_WORDS['zh' if zh else 'en'] + chain.rsplit('=', 1)[-1]


def completion_text(chain: str, answer: str) -> str:
  return f' <think>{chain}</think> <answer>{answer}</answer>'


def direct_text(answer: str) -> str:
  return f'{NO_THINKING}{answer}</answer>'


def short_prompt(question: str) -> str:
  return f'User: {question}. Assistant:'


def _train_tokenizer(texts: list[str], path: str, vocab_size: int, number_symbols: int):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  corpus = path + '.corpus.txt'
  with open(corpus, 'w') as f:
    f.write('\n'.join(texts))
  try:
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=path, vocab_size=vocab_size, model_type='bpe',
        # Numbers below `number_symbols` are single tokens (one step's result is
        # one prediction); longer ones split into those pieces.
        user_defined_symbols=list(TAGS) + [str(i) for i in range(10, number_symbols)],
        split_digits=True, character_coverage=1.0,
        bos_id=-1, eos_id=1, pad_id=2, unk_id=0, max_sentencepiece_length=64,
        split_by_whitespace=False, minloglevel=2,
        num_threads=os.cpu_count() or 1)
  finally:
    os.remove(corpus)


def greedy_accuracy(graphdef, params, tokenizer, examples, max_new: int,
                    suffix: str | Callable[[str], str] = '') -> float:
  """Share of questions whose greedy answer equals the gold answer. `suffix`
  (a string, or a function of the question) is appended to each prompt and
  counts as the start of the completion: NO_THINKING forces an answer without
  a chain of thought."""
  from r1jax.rewards import extract_answer  # pylint: disable=g-import-not-at-top
  ends = [suffix(e['question']) if callable(suffix) else suffix for e in examples]
  ids, mask = tokenizer.encode_batch([r1_zero_prompt(e['question']) + x
                                      for e, x in zip(examples, ends)])
  cfg = SamplingConfig(max_new_tokens=max_new, temperature=0.0, eos_ids=(tokenizer.eos_id,),
                       pad_id=tokenizer.pad_id)
  ro = jax.jit(lambda p, i, m: generate(nnx.merge(graphdef, p), i, m, jax.random.key(0), cfg))(
      params, jnp.asarray(ids), jnp.asarray(mask))
  texts = tokenizer.decode_batch(np.asarray(ro.tokens_NxT), np.asarray(ro.mask_NxT))
  return float(np.mean([(extract_answer(x + t) or '').strip() == e['answer']
                        for x, t, e in zip(ends, texts, examples)]))


def build(c: ml_collections.ConfigDict, section: str = 'base') -> str:
  """Builds the base into c.dir unless it is there (then a no-op, whatever
  the settings); returns c.dir. Bad settings raise config.ConfigError before
  any data is prepared, their keys named under `section`."""
  if c.dir and os.path.exists(os.path.join(c.dir, 'base_report.json')):
    return c.dir
  rc.check_base(c, section)
  t0 = time.time()
  print(f'[base] building the tiny base model into {c.dir} (once; up to {c.max_steps} steps '
        f'or {c.max_minutes} min, a progress line every {c.eval_every} steps): tokenizer and '
        'data first', flush=True)
  os.makedirs(c.dir, exist_ok=True)
  rng = np.random.default_rng(c.seed)
  train = tasks.load_split(c.task, 'train', c.data_dir)
  test = tasks.load_split(c.task, 'test', c.data_dir)
  train_ex = [train[i] for i in range(len(train))]
  prompts = [r1_zero_prompt(e['question']) for e in train_ex]
  general_ex = []
  if c.general_fraction:
    from r1jax.data import general  # pylint: disable=g-import-not-at-top
    g_train = tasks.load_split('general', 'train', c.data_dir)
    general_ex = [g_train[i] for i in range(len(g_train))]
    by_kind = [[e for e in general_ex if e['instruction'] == k] for k in general.KINDS]
    g_rng = random.Random(f'r1jax/base/general/{c.seed}')

  def chain_completion(question: str) -> str:
    chain, answer = imperfect_arithmetic(question, rng, c.error_rate)
    if c.chain_words:
      chain = spoken(chain, rng, c.language_mixing)
    return completion_text(chain, answer)

  def general_row(full: bool) -> tuple[str, str]:
    kind = by_kind[int(rng.integers(0, len(by_kind)))]  # the kinds equally often
    e = kind[int(rng.integers(0, len(kind)))]
    answer = (general.wrong_answer(e, g_rng) if rng.random() < c.general_error_rate
              else e['answer'])
    return (r1_zero_prompt(e['question']) if full else short_prompt(e['question']),
            general.response_text(answer))

  tok_path = os.path.join(c.dir, 'tokenizer')
  sample = rng.choice(len(train_ex), min(len(train_ex), 5000), replace=False)
  corpus = [prompts[i] + chain_completion(train_ex[i]['question']) for i in sample]
  if general_ex:
    corpus += [''.join(general_row(True)) for _ in range(int(len(sample) * c.general_fraction))]
  try:
    _train_tokenizer(corpus, tok_path, c.vocab_size, c.number_symbols)
  except RuntimeError as e:  # sentencepiece's: too small a vocabulary for the corpus
    need = re.search(r'smaller than required_chars\. \d+ vs (\d+)', str(e))
    if not need:
      raise
    raise rc.ConfigError(f'{section}.vocab_size' if section else 'vocab_size',
                         f'{c.vocab_size} is smaller than the {need[1]} pieces the tokenizer '
                         'must hold (its reserved pieces and every character of the corpus)'
                         ) from None
  os.replace(tok_path + '.model', os.path.join(c.dir, 'tokenizer.model'))
  os.remove(tok_path + '.vocab')
  from r1jax.tokenizer import SentencePieceTokenizer  # pylint: disable=g-import-not-at-top
  tok = SentencePieceTokenizer(os.path.join(c.dir, 'tokenizer.model'))

  cfg = models.ModelConfig(arch=c.arch, vocab_size=tok.vocab_size, qkv_bias=c.arch == 'qwen2',
                           tie_embeddings=True, max_position_embeddings=512,
                           eos_token_id=tok.eos_id, **c.model)
  model = models.create(cfg, seed=c.seed)
  graphdef, params = nnx.split(model)
  import optax  # pylint: disable=g-import-not-at-top
  warmup = min(100, c.max_steps // 10)
  optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(
      0.0, c.lr, warmup, c.max_steps, c.lr * 0.1), weight_decay=0.01)
  opt_state = optimizer.init(params)
  step_fn = sft.make_sft_step(graphdef, optimizer)
  evals = [test[i] for i in range(min(c.eval_questions, len(test)))]
  report = {'steps': 0}
  for step in range(1, c.max_steps + 1):
    idx = rng.integers(0, len(train_ex), c.batch_size)
    full = bool(rng.random() < c.template_fraction)
    rows = [prompts[i] if full else short_prompt(train_ex[i]['question']) for i in idx]
    comps = [direct_text(train_ex[i]['answer']) if rng.random() < c.direct_fraction else
             chain_completion(train_ex[i]['question']) for i in idx]
    if general_ex:  # a share of the rows are general prompts
      for j in range(len(rows)):
        if rng.random() < c.general_fraction:
          rows[j], comps[j] = general_row(full)
    longest = max(len(tok.encode(r)) + len(tok.encode(x)) + 1 for r, x in zip(rows, comps))
    batch = sft.pack_examples(tok, rows, comps, -(-longest // 8) * 8)  # few compiled shapes
    params, opt_state, loss = step_fn(params, opt_state, *map(jnp.asarray, batch))
    done = time.time() - t0 > 60 * c.max_minutes or step == c.max_steps
    if step % c.eval_every == 0 or done:
      acc = greedy_accuracy(graphdef, params, tok, evals, c.max_new_tokens)
      report = {'steps': step, 'loss': float(loss), 'greedy_accuracy': acc,
                'minutes': (time.time() - t0) / 60}
      print(f'[base] step {step:5d}  loss {float(loss):.4f}  greedy accuracy {acc:.3f}  '
            f'{report["minutes"]:.1f} min', flush=True)
      if acc >= c.target_greedy_accuracy or done:
        break
  # Greedy decoding picks the base's likelier habit; forcing each makes the
  # two comparable: an empty <think> block, or the chain's first line.
  report['greedy_accuracy_no_thinking'] = greedy_accuracy(
      graphdef, params, tok, evals, c.max_new_tokens, suffix=NO_THINKING)
  report['greedy_accuracy_thinking'] = greedy_accuracy(
      graphdef, params, tok, evals, c.max_new_tokens,
      suffix=lambda q: f' <think>{q}=')
  if general_ex:
    g_test = tasks.load_split('general', 'test', c.data_dir)
    report['general_greedy_accuracy'] = greedy_accuracy(
        graphdef, params, tok, [g_test[i] for i in range(min(c.eval_questions, len(g_test)))],
        c.max_new_tokens)
    print(f'[base] general task: greedy accuracy {report["general_greedy_accuracy"]:.3f}',
          flush=True)
  print(f'[base] greedy accuracy without thinking ({NO_THINKING.strip()!r} forced): '
        f'{report["greedy_accuracy_no_thinking"]:.3f}; with the chain started: '
        f'{report["greedy_accuracy_thinking"]:.3f}', flush=True)
  models.save_hf(nnx.merge(graphdef, params), c.dir)
  report['stopped_by'] = (
      f'greedy accuracy >= {c.target_greedy_accuracy}'
      if report.get('greedy_accuracy', 0) >= c.target_greedy_accuracy else
      f'max_steps ({c.max_steps})' if report['steps'] == c.max_steps else
      f'max_minutes ({c.max_minutes})')
  with open(os.path.join(c.dir, 'base_report.json'), 'w') as f:
    json.dump(report, f, indent=2)
  if report.get('greedy_accuracy', 0) < 0.05:
    print(f'[base] note: this base answers almost nothing right after {report["steps"]} steps '
          '(expected of a short smoke-sized build), so RL finds few correct samples to '
          'reinforce and its rewards stay near 0', flush=True)
  return c.dir


def describe(directory: str) -> str:
  """One line from a base's build report."""
  with open(os.path.join(directory, 'base_report.json')) as f:
    r = json.load(f)
  return (f'{r["steps"]} pretraining steps, greedy accuracy {r["greedy_accuracy"]:.3f}, '
          f'{r["greedy_accuracy_no_thinking"]:.3f} forced without thinking')


def main(argv):
  del argv
  import sys  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from r1jax import metrics  # pylint: disable=g-import-not-at-top
  log = metrics.LibraryLog()  # library INFO to a file, not the console
  try:
    print(f'[base] library log: {log.to(tempfile.mkdtemp(prefix="r1jax-base-"))}', flush=True)
    build(flags.FLAGS.config, section='')
  except rc.ConfigError as e:
    sys.exit(f'FATAL: {e}')
  finally:
    log.close()


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'configs/base_tiny.py[:r1]')
  app.run(main, flags_parser=lambda argv: rc.parse_flags(
      argv, 'python -m r1jax.base --config=configs/base_tiny.py'))

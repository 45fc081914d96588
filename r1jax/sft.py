"""Supervised fine-tuning: the base model's pretraining, R1's cold start and
stage-3 SFT, and distillation all minimise

  L = - Σ_t m_t log π_θ(x_{t+1} | x_≤t) / Σ_t m_t

over token sequences x with a loss mask m (1 on the responses and their EOS).

  records (JSONL / parquet: prompt or question, completion; or messages)
    ─▶ text: the prompt as is, in the R1-Zero template, or in the model's chat template
    ─▶ tokens: prompt ++ completion ++ EOS, the loss on completion ++ EOS
    ─▶ rows: best-fit decreasing packing into rows of max_len - 1 slots (the RL
       passes' layout, r1jax/packing.py: segment ids, per-sequence positions)
    ─▶ epochs: every epoch the rows in a seeded order (data/iterator.py: a
       function of (seed, position) only, so a resumed run sees the same rows)
    ─▶ one jitted step: batch_size rows in grad_accum micro-batches (lax.scan),
       the loss a token mean over the whole batch (the same for any grad_accum)
    ─▶ AdamW, warm-up then cosine decay to final_lr_ratio × lr
    ─▶ checkpoints (exact resume), metrics.jsonl, held-out loss and pass@1,
       the final model as a HF directory (<workdir>/hf)

  python -m r1jax.launch --config=configs/sft.py
"""
import bisect
import contextlib
import dataclasses
import math
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax import config as rc, export, kernels, loop, packing, policy
from r1jax import sharding as shd, train_step as ts, workdir as wd
from r1jax.data import PromptIterator, benchmarks as bm, load_split, make_prompt
from r1jax.data.iterator import ArraySource
from r1jax.data.local import read_records
from r1jax.data.tasks import VERIFIERS
from r1jax.rewards import programs
from r1jax.data.templates import r1_zero_prompt

# ------------------------------------------------------------- the loss (base)


def next_token_loss(model, tokens_BxT: jax.Array, mask_BxT: jax.Array,
                    loss_mask_BxT: jax.Array, impl: str = 'naive') -> jax.Array:
  """Mean NLL of tokens 1..T-1 where loss_mask is set (mask: real tokens)."""
  B, T = tokens_BxT.shape
  hidden, _ = model.hidden(tokens_BxT[:, :-1], mask_BxT=mask_BxT[:, :-1])
  logp = kernels.token_logprobs(hidden.reshape(B * (T - 1), -1), model.head_weight(),
                                tokens_BxT[:, 1:].reshape(-1), impl=impl).reshape(B, T - 1)
  m = (loss_mask_BxT[:, 1:] & mask_BxT[:, 1:]).astype(jnp.float32)
  return -(logp * m).sum() / jnp.maximum(m.sum(), 1.0)


def make_sft_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation
                  ) -> Callable:
  """Jitted (params, opt_state, tokens, mask, loss_mask) -> (params, opt_state, loss);
  params and opt_state are donated. (The tiny base's pretraining, r1jax/base.py.)"""
  def step(params, opt_state, tokens, mask, loss_mask):
    loss, grads = jax.value_and_grad(lambda p: next_token_loss(
        nnx.merge(graphdef, p), tokens, mask, loss_mask))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return jax.jit(step, donate_argnums=(0, 1))


def pack_examples(tokenizer, prompts: list[str], completions: list[str], length: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Right-padded [B, length] tokens, mask and loss mask (completion + EOS).

  Each row is BOS? + prompt + completion + EOS; the loss covers the
  completion and its EOS. Rows longer than `length` are an error."""
  B = len(prompts)
  tokens = np.full((B, length), tokenizer.pad_id, np.int32)
  mask = np.zeros((B, length), bool)
  loss_mask = np.zeros((B, length), bool)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    pi, ci = tokenizer.encode(p), tokenizer.encode(c) + [tokenizer.eos_id]
    n = len(pi) + len(ci)
    if n > length:
      raise ValueError(f'example {i} has {n} tokens > {length}')
    tokens[i, :n] = pi + ci
    mask[i, :n] = True
    loss_mask[i, len(pi):n] = True
  return tokens, mask, loss_mask


# ------------------------------------------------------------------ records


def record_text(record: dict, template: str, chat: dict | None = None) -> tuple[str, str]:
  """(prompt, completion) of one record: `prompt` (or `question`) and
  `completion`, or a single-turn `messages` list (a user turn, then the
  assistant's, whose `reasoning_content` is kept). The prompt is used as is
  ('none'), put in the R1-Zero template ('r1_zero'), or rendered with the
  model's chat template ('chat'): then the completion is laid out as the
  template lays out the assistant's turn (data/benchmarks.py:chat_completion;
  Qwen3's think block included)."""
  if 'messages' in record:
    turns = record['messages']
    roles = [t.get('role') for t in turns] if isinstance(turns, list) else None
    if roles != ['user', 'assistant']:
      raise ValueError(f'messages: one user turn, then one assistant turn, got roles {roles}')
    user, completion = turns[0]['content'], turns[1]['content']
    assistant = {k: v for k, v in turns[1].items() if k in ('role', 'content', 'reasoning_content')}
  else:
    user = record.get('prompt', record.get('question'))
    completion = record.get('completion')
    if user is None or completion is None:
      raise ValueError(f'needs prompt (or question) and completion, or messages; has '
                       f'{sorted(record)}')
    assistant = {'role': 'assistant', 'content': completion}
  if not isinstance(user, str) or not isinstance(completion, str) or not isinstance(
      assistant.get('reasoning_content', ''), (str, type(None))):
    raise ValueError('prompt, completion and reasoning_content must be strings')
  if template == 'r1_zero':
    return r1_zero_prompt(user), completion
  if template == 'chat':
    if chat is None:
      raise ValueError("template 'chat': the model's tokenizer has no chat template")
    return bm.chat_completion(chat, user, assistant)
  return user, completion


class Encoded(NamedTuple):
  seqs: list[np.ndarray]  # int32 token ids: prompt ++ completion ++ EOS
  loss: list[np.ndarray]  # bool per token: in the loss (completion and EOS)
  dropped: int  # longer than max_len (too_long='drop')


def encode(tok, pairs: list[tuple[str, str]], max_len: int, too_long: str = 'error',
           where: Callable[[int], str] = str) -> Encoded:
  """Tokenises (prompt, completion) pairs; a sequence longer than `max_len`
  tokens is an error naming it (`where(i)`), or dropped and counted."""
  seqs, loss, dropped = [], [], 0
  for i, (prompt, completion) in enumerate(pairs):
    p = tok.encode(prompt)
    c = tok.encode(completion) + [tok.eos_id]
    if len(p) + len(c) > max_len:
      if too_long == 'drop':
        dropped += 1
        continue
      raise ValueError(f'{where(i)} has {len(p) + len(c)} tokens > sft.max_len={max_len}; '
                       'raise sft.max_len or set sft.too_long=drop')
    seqs.append(np.asarray(p + c, np.int32))
    loss.append(np.asarray([False] * len(p) + [True] * len(c)))
  return Encoded(seqs, loss, dropped)


# ------------------------------------------------------------------ packing


def best_fit(lengths: np.ndarray, row_len: int) -> tuple[np.ndarray, np.ndarray, int]:
  """packing.best_fit on the host, for a whole data set: best-fit decreasing
  (longest first, each into the row with the least room that still holds
  it; ties to the lowest row; a fresh row when none does). Returns (row,
  offset, rows used); the same assignment as packing.best_fit."""
  lengths = np.asarray(lengths, np.int64)
  if lengths.size and (lengths.max() > row_len or lengths.min() < 1):
    raise ValueError(f'lengths must be in [1, {row_len}]')
  row = np.zeros(len(lengths), np.int32)
  offset = np.zeros(len(lengths), np.int32)
  open_rows: list[tuple[int, int]] = []  # (room, row), sorted
  used = 0
  for n in np.argsort(-lengths, kind='stable'):
    need = int(lengths[n])
    j = bisect.bisect_left(open_rows, (need, -1))
    if j < len(open_rows):
      room, r = open_rows.pop(j)
    else:
      room, r = row_len, used
      used += 1
    row[n], offset[n] = r, row_len - room
    if room - need > 0:
      bisect.insort(open_rows, (room - need, r))
  return row, offset, used


class PackedRows(NamedTuple):
  """Sequences packed into R rows of L slots (packing.Rows' layout): slot j
  of a row holds an input token, its target (the next token of its
  sequence), its position in the sequence and the sequence's segment id
  (index + 1; 0 in empty slots), and `weights` 1 where the target is in the
  loss."""
  tokens: np.ndarray
  targets: np.ndarray
  positions: np.ndarray
  segments: np.ndarray
  weights: np.ndarray


def pack_rows(enc: Encoded, row_len: int) -> PackedRows:
  """A sequence of n tokens takes n - 1 slots (its last token is only a
  target), packed best-fit decreasing into rows of `row_len` slots."""
  lengths = np.asarray([len(s) - 1 for s in enc.seqs])
  row, offset, R = best_fit(lengths, row_len)
  out = PackedRows(*(np.zeros((R, row_len), np.int32) for _ in range(4)),
                   np.zeros((R, row_len), np.float32))
  for i, (seq, loss) in enumerate(zip(enc.seqs, enc.loss)):
    r, o, n = row[i], offset[i], len(seq) - 1
    out.tokens[r, o:o + n] = seq[:-1]
    out.targets[r, o:o + n] = seq[1:]
    out.positions[r, o:o + n] = np.arange(n)
    out.segments[r, o:o + n] = i + 1
    out.weights[r, o:o + n] = loss[1:]
  return out


# ---------------------------------------------------------------------- step


class SFTState(NamedTuple):
  step: jax.Array  # int32 scalar
  params: nnx.State  # the name export.load and the checkpoint tools read
  opt_state: object


def loss_sum(model, rows: dict, impl: str = 'auto', mesh=None,
             lora_dropout: tuple[float, jax.Array] | None = None
             ) -> tuple[jax.Array, jax.Array]:
  """(Σ weight × NLL, Σ weight) over packed rows ([m, L] arrays)."""
  rows = {k: jnp.asarray(v) for k, v in rows.items()}
  logp = ts.packed_logprobs(model, packing.Rows(rows['tokens'], rows['targets'],
                                                rows['positions'], rows['segments'], None, None),
                            1.0, impl, mesh=mesh, lora_dropout=lora_dropout)
  return -(logp * rows['weights']).sum(), rows['weights'].sum()


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                    grad_accum: int, mesh: jax.sharding.Mesh, state_shardings,
                    impl: str = 'auto', lora: bool = False, lora_dropout: float = 0.0,
                    seed: int = 0) -> Callable:
  """Jitted (state, rows[, frozen]) -> (state, metrics): one optimizer
  update on the batch's rows ([R, L] each, sharded over the batch axes), in
  grad_accum micro-batches of R / grad_accum rows (strided, so each stays on
  its shards). The loss is Σ NLL / Σ loss tokens over the whole batch, so the
  update does not depend on grad_accum. A non-finite loss, gradient or
  result is not applied (the state is kept, `nonfinite` is 1). With `lora`
  the state's params are the adapters and `frozen` the base (an argument,
  never copied or updated); `lora_dropout` drops the adapters' inputs with
  a key of (seed, step, micro-batch) only, so a resumed run draws the same."""
  rows_sharding = NamedSharding(mesh, P(ts.BATCH_AXES))

  def step(state: SFTState, rows: dict, frozen=None):
    with shd.activation_rules(mesh, shd.TRAIN_RULES):
      total = jnp.maximum(rows['weights'].sum(), 1.0)
      micros = ts._split_prompts(rows, grad_accum)  # pylint: disable=protected-access
      key = jax.random.fold_in(jax.random.key(seed), state.step)
      model = (lambda p: nnx.merge(graphdef, p, frozen)) if lora else (  # noqa: E731
          lambda p: nnx.merge(graphdef, p))

      def grad_fn(micro, i):
        drop = (lora_dropout, jax.random.fold_in(key, i)) if lora_dropout else None
        return jax.value_and_grad(lambda p: loss_sum(model(p), micro, impl, mesh, drop)[0]
                                  )(state.params)

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (nll, grads), _ = jax.lax.scan(
          lambda acc, xs: (jax.tree.map(jnp.add, acc, grad_fn(*xs)), None),
          (jnp.zeros((), jnp.float32), zeros), (micros, jnp.arange(grad_accum)))
      loss = nll / total
      grads = jax.tree.map(lambda g: g / total, grads)
      params, opt_state, grad_norm, finite = ts.finite_update(
          optimizer, grads, state.params, state.opt_state, loss)
      new = SFTState(state.step + 1, params, opt_state)
      return new, {'sft/loss': loss, 'grad_norm': grad_norm, 'loss_tokens': rows['weights'].sum(),
                   'tokens': (rows['segments'] > 0).sum(), 'nonfinite': (~finite).astype(jnp.int32)}

  return jax.jit(step, in_shardings=(state_shardings, rows_sharding) + ((None,) if lora else ()),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))


def make_eval_loss(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, impl: str = 'auto'
                   ) -> Callable:
  """Jitted (params, rows) -> (Σ weight × NLL, Σ weight); params: the whole
  model's state (a LoRA run's adapters joined with the base)."""
  rows_sharding = NamedSharding(mesh, P(ts.BATCH_AXES))

  def fn(params, rows):
    with shd.activation_rules(mesh, shd.TRAIN_RULES):
      return loss_sum(nnx.merge(graphdef, params), rows, impl, mesh)
  return jax.jit(fn, in_shardings=(None, rows_sharding))


def held_out_loss(fn: Callable, params, rows: PackedRows, batch: int, mesh) -> float:
  """Token-mean NLL of held-out rows, `batch` rows a call (the last batch
  padded with empty rows, which weigh nothing)."""
  sharding = NamedSharding(mesh, P(ts.BATCH_AXES))
  nll = count = 0.0
  for i in range(0, len(rows.tokens), batch):
    part = {k: np.asarray(v[i:i + batch]) for k, v in rows._asdict().items()}
    pad = batch - len(part['tokens'])
    part = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in part.items()}
    s, n = fn(params, {k: jax.device_put(v, sharding) for k, v in part.items()})
    nll, count = nll + float(s), count + float(n)
  return nll / max(count, 1.0)


# ---------------------------------------------------------------------- data


@dataclasses.dataclass
class Data:
  train: PackedRows
  held_out: PackedRows | None
  examples: int  # training sequences
  dropped: int  # too long, dropped


def builtin_records(config) -> tuple[list[dict], list[dict]]:
  """The built-in cold-start data: correct reduction chains of the task's
  training questions in R1's format ('<think> chain </think> <answer> … </answer>'),
  and sft.held_out held-out ones from its test split (after the questions
  the evaluation samples)."""
  if config.task != 'arithmetic':
    raise rc.ConfigError('sft.data', f'the built-in SFT data is for the arithmetic task, not '
                         f'{config.task!r}; set sft.data to a JSONL file')
  from r1jax import base  # pylint: disable=g-import-not-at-top
  from r1jax.data import tasks  # pylint: disable=g-import-not-at-top
  data_dir = rc.data_dir(config)
  train = load_split('arithmetic', 'train', data_dir)
  test = load_split('arithmetic', 'test', data_dir)
  n = config.sft.builtin_examples

  def record(ex):
    chain, total = tasks.reduction(ex['question'])
    if config.sft.builtin_words:  # the r1 base's habit, in English only (readable)
      chain = base.spoken(chain)
    return {'prompt': make_prompt(ex), 'completion': base.completion_text(chain, str(total))}

  first = config.eval.num_questions  # the evaluated questions are not held-out data
  held = [dict(test[i]) for i in range(first, min(len(test), first + config.sft.held_out))]
  return ([record(dict(train[i])) for i in range(min(n, len(train)))],
          [record(ex) for ex in held])


def _records(path: str, key: str) -> list[dict]:
  try:
    return [{**r, 'source': where} for r, where in read_records(path)]
  except ValueError as e:
    raise rc.ConfigError(key, str(e)) from None


def load_data(config, tok, chat: dict | None) -> Data:
  """Reads, tokenises and packs the training and held-out records. Held out:
  sft.eval_data, or sft.held_out records of sft.data drawn by the seed."""
  s = config.sft
  if s.data:
    train = [r for path in s.data.split(',') for r in _records(path, 'sft.data')]
    held = _records(s.eval_data, 'sft.eval_data') if s.eval_data else []
    if not s.eval_data and s.held_out:
      if s.held_out >= len(train):
        raise rc.ConfigError('sft.held_out', f'{s.held_out} held-out records of the '
                             f'{len(train)} in {s.data}; leave some to train on')
      out = set(np.random.default_rng(config.seed).permutation(len(train))[:s.held_out].tolist())
      held = [r for i, r in enumerate(train) if i in out]
      train = [r for i, r in enumerate(train) if i not in out]
    template = s.template
  else:
    train, held = builtin_records(config)
    template = 'none'  # the built-in prompts are already in the R1-Zero template

  def encoded(records, what):
    try:
      pairs = [record_text(r, template, chat) for r in records]
    except (ValueError, bm.TemplateError) as e:
      raise rc.ConfigError('sft.data', f'{what}: {e}') from None
    where = lambda i: records[i].get('source') or f'{what} record {i}'  # noqa: E731
    try:
      return encode(tok, pairs, s.max_len, s.too_long, where)
    except ValueError as e:
      raise rc.ConfigError('sft.max_len', str(e)) from None

  enc = encoded(train, s.data or 'built-in data')
  if not enc.seqs:
    raise rc.ConfigError('sft.data', f'no training example fits sft.max_len={s.max_len}')
  held_enc = encoded(held, s.eval_data or 'held-out data') if held else None
  return Data(pack_rows(enc, s.max_len - 1),
              pack_rows(held_enc, s.max_len - 1) if held_enc and held_enc.seqs else None,
              len(enc.seqs), enc.dropped + (held_enc.dropped if held_enc else 0))


def total_steps(config, num_rows: int) -> int:
  """config.steps when set, else sft.epochs over the packed rows."""
  if config.steps:
    return config.steps
  return max(1, math.ceil(config.sft.epochs * num_rows / config.sft.batch_size))


# ----------------------------------------------------------------------- run


def validate(config) -> None:
  """The SFT section's checks that rc.validate does not do."""
  s = config.sft
  if s.batch_size % s.grad_accum:
    raise rc.ConfigError('sft.batch_size', f'{s.batch_size} rows do not split into '
                         f'grad_accum={s.grad_accum} micro-batches')
  for path in filter(None, s.data.split(',')):
    if not os.path.exists(path):
      raise rc.ConfigError('sft.data', f'{path!r} does not exist')
  if s.eval_data and not os.path.exists(s.eval_data):
    raise rc.ConfigError('sft.eval_data', f'{s.eval_data!r} does not exist')


def validate_for_mesh(config, mesh) -> None:
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  s = config.sft
  if (s.batch_size // s.grad_accum) % shards:
    raise rc.ConfigError('sft.batch_size', f'a micro-batch of {s.batch_size // s.grad_accum} '
                         f'rows does not split over data x fsdp = {shards} devices')
  if config.eval.num_questions and config.eval.batch_size % shards:
    raise rc.ConfigError('eval.batch_size', f'{config.eval.batch_size} questions do not split '
                         f'over data x fsdp = {shards} devices')


def run(config, workdir: epath.Path, lock: wd.Lock, closing: contextlib.ExitStack) -> dict:
  """The SFT loop (r1jax.launch runs it for a config with an `sft` section)."""
  from r1jax.rewards import CORRECTNESS, RewardScorer  # pylint: disable=g-import-not-at-top
  validate(config)
  mesh = rc.make_mesh(config)
  validate_for_mesh(config, mesh)
  s, e = config.sft, config.eval
  pol = policy.load(config, mesh)
  tok = pol.tok
  graphdef = nnx.graphdef(pol.model)
  model_cfg = pol.model.cfg
  if s.max_len > model_cfg.max_position_embeddings:
    raise rc.ConfigError('sft.max_len', f'{s.max_len} > the model\'s max_position_embeddings '
                         f'({model_cfg.max_position_embeddings})')
  chat = bm.chat_template(pol.tok_path) if s.template == 'chat' and os.path.isdir(
      pol.tok_path) else None

  t0 = time.time()
  data = load_data(config, tok, chat)
  R = len(data.train.tokens)
  steps = total_steps(config, R)
  fill = float((data.train.segments > 0).mean())
  print(f'[r1jax] sft data: {data.examples} examples in {R} rows of {s.max_len - 1} slots '
        f'({fill:.0%} full), {data.dropped} dropped as too long; '
        f'{len(data.held_out.tokens) if data.held_out else 0} held-out rows; {steps} steps of '
        f'{s.batch_size} rows ({steps * s.batch_size / R:.2f} epochs; {time.time() - t0:.1f}s)',
        flush=True)
  source = ArraySource(data.train)
  order = PromptIterator(source, s.batch_size, seed=config.seed,
                         process_index=jax.process_index(), process_count=jax.process_count())

  optimizer = ts.make_optimizer(config.optim, steps)
  lora = bool(config.lora.rank)
  if lora:  # the adapters train; the base is a step argument (models/lora.py)
    frozen = nnx.state(pol.model, nnx.Not(nnx.LoRAParam))
    params = nnx.state(pol.model, nnx.LoRAParam)
    whole = lambda p: nnx.merge_state(frozen, p)  # noqa: E731
  else:
    frozen, params, whole = None, nnx.state(pol.model, nnx.Param), lambda p: p
  del pol.model
  state = SFTState(jnp.zeros((), jnp.int32), params, jax.jit(optimizer.init)(params))
  rep = NamedSharding(mesh, P())
  state = state._replace(step=jax.device_put(state.step, rep), opt_state=jax.tree.map(
      lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, rep),
      state.opt_state))
  export.write_model_dir(workdir, model_cfg, pol.tok_path, tok, export.generation_config(
      tok, pol.eos_ids, e.temperature, e.top_p),
      lora_base=rc.model_ckpt(config) if lora else None)

  # Held-out: the loss on held-out rows, and pass@1 on the task's questions.
  eval_loss = make_eval_loss(graphdef, mesh)
  task_eval = None
  if e.num_questions:
    test = load_split(config.task, 'test', rc.data_dir(config))
    questions = [dict(test[i]) for i in range(min(e.num_questions, len(test)))]
    scorer = RewardScorer(config.rewards, timeout_s=config.reward_timeout_s,
                          workers=config.reward_workers,
                          extra=programs.configured(config, config.rewards))
    closing.callback(scorer.close)
    acc = next((n for n in CORRECTNESS if n in config.rewards), VERIFIERS[config.task][0])
    task_eval = policy.TaskEval(config, graphdef, tok, pol.eos_ids, mesh, scorer, questions,
                                acc, e.max_new_tokens, e.max_prompt_len)

  def evaluate(state, step: int) -> tuple[dict, list[dict]]:
    m, samples = {}, []
    if data.held_out is not None:
      m['eval/loss'] = held_out_loss(eval_loss, whole(state.params), data.held_out,
                                     s.batch_size // s.grad_accum, mesh)
    if task_eval is not None:
      tm, questions = task_eval(whole(state.params))
      m.update(tm)
      samples = task_eval.samples(questions)
    if m:
      line = f'eval @ step {step}:'
      if 'eval/loss' in m:
        line += f' held-out loss {m["eval/loss"]:.4f}'
      if task_eval is not None:
        line += '; ' + task_eval.line(step, m).partition(': ')[2]
      print('[r1jax] ' + line, flush=True)
    return m, samples

  hf_dir = workdir / 'hf'

  def finish(state, step: int) -> dict:
    return {'hf_dir': str(export.export_hf(workdir, step))}

  step_fn = make_train_step(graphdef, optimizer, s.grad_accum, mesh, ts.shardings_of(state),
                            lora=lora, lora_dropout=float(config.lora.dropout) if lora else 0.0,
                            seed=config.seed)
  if lora:  # jit takes the base positionally (it has in_shardings)
    jitted = step_fn
    step_fn = lambda state, rows: jitted(state, rows, frozen)  # noqa: E731
  rows_sharding = NamedSharding(mesh, P(ts.BATCH_AXES))

  def batch(examples: list[dict]) -> dict:
    part = source.take(examples)
    return {k: jax.make_array_from_process_local_data(rows_sharding, v)
            for k, v in part._asdict().items()}

  return loop.supervised(config, workdir, lock, closing, state=state, order=order, steps=steps,
                         batch=batch, step_fn=step_fn, evaluate=evaluate, finish=finish,
                         finished=lambda: (hf_dir / 'config.json').exists(),
                         shown=('eval/loss', 'eval/pass@1', 'eval/format_rate'))

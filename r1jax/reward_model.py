"""The reward model (DeepSeek-R1 §2.3.4 and supplement B.3: the helpful reward
model): the decoder with a scalar head, trained on preference pairs with
the Bradley–Terry loss

  L = - log σ(r(x, y_chosen) - r(x, y_rejected))

evaluated by pairwise accuracy on held-out pairs, and used inside the
compiled RL step as a reward computed on device (train_step.py: the reward
`reward_model` in config.rewards, on the prompts marked general). R1's
helpful reward model judges only the final summary; with `summary_only` the
model sees the prompt and the response after its last `</think>`.

  pairs (JSONL: prompt, chosen, rejected; or built from the general task)
    ─▶ prompt left-padded to P tokens, both responses right-padded to T
    ─▶ the prompt computed once for the pair (Decoder.hidden_with_prefix)
    ─▶ r = w · h(last response token) + b
    ─▶ Bradley–Terry loss, AdamW with a cosine decay, checkpoints (exact
       resume), held-out pairwise accuracy each eval
    ─▶ <workdir>/reward_model.json: how to feed it (summary_only, lengths)

  python -m r1jax.launch --config=configs/rm.py
"""
import contextlib
import dataclasses
import json
import math
import random
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax import config as rc, export, loop, policy, sharding as shd, train_step as ts
from r1jax import workdir as wd
from r1jax.data import load_split
from r1jax.data.iterator import ArraySource
from r1jax.data.local import read_records
from r1jax.data.templates import r1_zero_prompt
from r1jax.rewards.answers import final_part

INFO = 'reward_model.json'  # in the workdir: what the RL step needs to feed the model


# ------------------------------------------------------------------ the model


def init_params(model) -> dict:
  """{'backbone': the decoder's parameters, 'head': {'w': [D], 'b': []}}; the
  head starts at zero (every response scores 0)."""
  D = model.cfg.hidden_size
  return {'backbone': nnx.state(model, nnx.Param),
          'head': {'w': jnp.zeros((D,), jnp.float32), 'b': jnp.zeros((), jnp.float32)}}


def score(graphdef: nnx.GraphDef, params: dict, prompt_BxP: jax.Array,
          prompt_mask_BxP: jax.Array, tokens_NxT: jax.Array, mask_NxT: jax.Array) -> jax.Array:
  """r [N] (f32) of N = B·G responses (right-padded; row n answers prompt
  n // G): the head on the final hidden state of the response's last token
  (of the prompt's, for an empty response)."""
  model = nnx.merge(graphdef, params['backbone'])
  B, N = prompt_BxP.shape[0], tokens_NxT.shape[0]
  h_last_BxD, h_NxTxD = model.hidden_with_prefix(prompt_BxP, prompt_mask_BxP, tokens_NxT)
  length = mask_NxT.sum(axis=1).astype(jnp.int32)
  h_resp = jnp.take_along_axis(h_NxTxD, jnp.maximum(length - 1, 0)[:, None, None], axis=1)[:, 0]
  h = jnp.where((length > 0)[:, None], h_resp, jnp.repeat(h_last_BxD, N // B, axis=0))
  head = params['head']
  return h.astype(jnp.float32) @ head['w'] + head['b']


def summary_tokens(tokens_NxT: jax.Array, mask_NxT: jax.Array, think_end_id: int
                   ) -> tuple[jax.Array, jax.Array]:
  """The tokens after each row's last `</think>` (the whole row when it has
  none), moved to the front of the row: what a summary-only reward model sees."""
  T = tokens_NxT.shape[1]
  t = jnp.arange(T, dtype=jnp.int32)
  ends = (tokens_NxT == think_end_id) & mask_NxT
  start = jnp.where(ends.any(axis=1), jnp.max(jnp.where(ends, t[None], -1), axis=1) + 1, 0)
  length = mask_NxT.sum(axis=1).astype(jnp.int32) - start
  src = jnp.minimum(start[:, None] + t[None], T - 1)
  keep = t[None] < length[:, None]
  return (jnp.where(keep, jnp.take_along_axis(tokens_NxT, src, axis=1), 0), keep)


def pair_loss(r_chosen: jax.Array, r_rejected: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Bradley–Terry loss, pairwise accuracy), each a mean over the pairs."""
  margin = r_chosen - r_rejected
  return jnp.mean(jax.nn.softplus(-margin)), jnp.mean((margin > 0).astype(jnp.float32))


def summary_text(response: str) -> str:
  """The text a summary-only model sees: after the last </think>; the whole
  response when there is none (an unclosed think block: empty)."""
  if '</think>' not in response:
    return '' if '<think>' in response else response
  return final_part(response) or ''


# ---------------------------------------------------------------------- data


class Pairs(NamedTuple):
  prompt: np.ndarray  # [n, P] int32, left-padded
  prompt_mask: np.ndarray  # [n, P] bool
  tokens: np.ndarray  # [n, 2, T] int32: chosen, rejected (right-padded)
  mask: np.ndarray  # [n, 2, T] bool


def builtin_pairs(config) -> tuple[list[dict], list[dict]]:
  """Rule-made pairs of the general task (data/general.py): the right
  response chosen, a plausible wrong one rejected; training pairs from its
  train split, held-out pairs from its test split. Each pair draws an
  instruction kind first (the kinds equally often), then a question of it
  and a wrong answer (seeded)."""
  from r1jax.data import general  # pylint: disable=g-import-not-at-top
  data_dir = rc.data_dir(config)
  rng = random.Random(f'r1jax/reward_model/{config.seed}')
  out = []
  for split, n in (('train', config.rm.builtin_pairs), ('test', config.rm.held_out)):
    src = load_split('general', split, data_dir)
    by_kind = [[src[i] for i in range(len(src)) if src[i]['instruction'] == k]
               for k in general.KINDS]
    pairs = []
    for _ in range(n):
      kind = by_kind[int(rng.random() * len(by_kind))]
      ex = kind[int(rng.random() * len(kind))]
      pairs.append({'prompt': r1_zero_prompt(ex['question']),
                    'chosen': general.response_text(ex['answer']),
                    'rejected': general.response_text(general.wrong_answer(ex, rng))})
    out.append(pairs)
  return out[0], out[1]


def _records(path: str, key: str) -> list[dict]:
  try:
    records = [r for r, _ in read_records(path)]
  except ValueError as e:
    raise rc.ConfigError(key, str(e)) from None
  for i, r in enumerate(records):
    bad = [f for f in ('prompt', 'chosen', 'rejected') if not isinstance(r.get(f), str)]
    if bad:
      raise rc.ConfigError(key, f'{path} record {i}: needs string fields prompt, chosen and '
                           f'rejected; missing or not text: {bad}')
  return records


def encode_pairs(tok, records: list[dict], P: int, T: int, summary_only: bool,
                 what: str, truncate: bool = False) -> Pairs:
  """Token arrays of preference records; a prompt over P or a response over
  T tokens (with its EOS) is an error naming the record (`truncate`: the
  response is cut to T tokens instead)."""
  n = len(records)
  out = Pairs(np.full((n, P), tok.pad_id, np.int32), np.zeros((n, P), bool),
              np.full((n, 2, T), tok.pad_id, np.int32), np.zeros((n, 2, T), bool))
  for i, r in enumerate(records):
    p = tok.encode(r['prompt'])
    if len(p) > P:
      raise rc.ConfigError('rm.max_prompt_len', f'{what} record {i}: the prompt has {len(p)} '
                           f'tokens > {P}')
    out.prompt[i, P - len(p):], out.prompt_mask[i, P - len(p):] = p, True
    for j, field in enumerate(('chosen', 'rejected')):
      text = summary_text(r[field]) if summary_only else r[field]
      ids = tok.encode(text) + [tok.eos_id]
      if truncate:
        ids = ids[:T]
      if len(ids) > T:
        raise rc.ConfigError('rm.max_response_len', f'{what} record {i}: {field} has {len(ids)} '
                             f'tokens > {T}')
      out.tokens[i, j, :len(ids)], out.mask[i, j, :len(ids)] = ids, True
  return out


# ---------------------------------------------------------------------- step


class RMState(NamedTuple):
  step: jax.Array
  params: dict  # {'backbone', 'head'}: the name the checkpoint tools read
  opt_state: object


def _pair_scores(graphdef, params, pairs: dict) -> tuple[jax.Array, jax.Array]:
  B, _, T = pairs['tokens'].shape
  r = score(graphdef, params, pairs['prompt'], pairs['prompt_mask'],
            pairs['tokens'].reshape(2 * B, T), pairs['mask'].reshape(2 * B, T)).reshape(B, 2)
  return r[:, 0], r[:, 1]


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                    grad_accum: int, mesh: jax.sharding.Mesh, state_shardings) -> Callable:
  """Jitted (state, pairs) -> (state, metrics): one update on the mean
  Bradley–Terry loss of the batch's pairs, in grad_accum micro-batches
  (strided; the update does not depend on grad_accum). A non-finite loss,
  gradient or result is not applied."""
  rows = NamedSharding(mesh, P(ts.BATCH_AXES))

  def step(state: RMState, pairs: dict):
    with shd.activation_rules(mesh, shd.TRAIN_RULES):
      micros = ts._split_prompts(pairs, grad_accum)  # pylint: disable=protected-access

      def grad_fn(micro):
        def loss(p):
          l, acc = pair_loss(*_pair_scores(graphdef, p, micro))
          return l / grad_accum, acc / grad_accum
        return jax.value_and_grad(loss, has_aux=True)(state.params)

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      ((loss, acc), grads), _ = jax.lax.scan(
          lambda c, m: (jax.tree.map(jnp.add, c, grad_fn(m)), None),
          ((jnp.zeros(()), jnp.zeros(())), zeros), micros)
      params, opt_state, grad_norm, finite = ts.finite_update(
          optimizer, grads, state.params, state.opt_state, loss)
      return RMState(state.step + 1, params, opt_state), {
          'rm/loss': loss, 'rm/accuracy': acc, 'grad_norm': grad_norm,
          'tokens': pairs['mask'].sum() + pairs['prompt_mask'].sum(),
          'nonfinite': (~finite).astype(jnp.int32)}

  return jax.jit(step, in_shardings=(state_shardings, rows), out_shardings=(state_shardings, None),
                 donate_argnums=(0,))


def make_eval(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh) -> Callable:
  """Jitted (params, pairs) -> (Σ loss, Σ correct) over the pairs."""
  rows = NamedSharding(mesh, P(ts.BATCH_AXES))

  def fn(params, pairs):
    with shd.activation_rules(mesh, shd.TRAIN_RULES):
      rc_, rr = _pair_scores(graphdef, params, pairs)
      w = pairs['mask'][:, 0].any(axis=1).astype(jnp.float32)  # padding pairs weigh 0
      return (jax.nn.softplus(rr - rc_) * w).sum(), ((rc_ > rr) * w).sum()
  return jax.jit(fn, in_shardings=(None, rows))


def held_out(fn: Callable, params, pairs: Pairs, batch: int, mesh) -> tuple[float, float]:
  """(mean loss, pairwise accuracy) of held-out pairs, `batch` a call."""
  rows = NamedSharding(mesh, P(ts.BATCH_AXES))
  loss = correct = 0.0
  n = len(pairs.prompt)
  for i in range(0, n, batch):
    part = {k: np.asarray(v[i:i + batch]) for k, v in pairs._asdict().items()}
    pad = batch - len(part['prompt'])
    part = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in part.items()}
    s, c = fn(params, {k: jax.device_put(v, rows) for k, v in part.items()})
    loss, correct = loss + float(s), correct + float(c)
  return loss / max(n, 1), correct / max(n, 1)


# ------------------------------------------------------- using a trained model


@dataclasses.dataclass
class Loaded:
  graphdef: nnx.GraphDef
  params: dict
  summary_only: bool
  think_end_id: int | None  # the token a summary starts after (summary_only)
  # The summaries are cut to the length it was trained on (rm.max_response_len;
  # 0: not cut): a 32k-token chain's summary is scored as [N, max_len], not [N, T].
  max_len: int = 0


def load(workdir: str, tok, mesh: jax.sharding.Mesh, dtype: str = 'float32',
         compute_dtype: str = 'float32') -> Loaded:
  """A trained reward model (its newest checkpoint) for the RL step; its
  tokenizer must be the policy's (`tok`): the step feeds it the policy's
  tokens."""
  from r1jax import models  # pylint: disable=g-import-not-at-top
  from r1jax.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  root = epath.Path(workdir)
  info_path = root / INFO
  if not info_path.exists():
    raise rc.ConfigError('reward_model.ckpt', f'{workdir}: no {INFO} (not a trained reward '
                         'model workdir: python -m r1jax.launch --config=configs/rm.py)')
  info = json.loads(info_path.read_text())
  if info['vocab_size'] != tok.vocab_size or info.get('eos_id') != tok.eos_id:
    raise rc.ConfigError('reward_model.ckpt', f'{workdir} was trained with another tokenizer '
                         f'(vocab {info["vocab_size"]}, eos {info.get("eos_id")}) than the '
                         f'policy\'s (vocab {tok.vocab_size}, eos {tok.eos_id})')
  cfg = models.config_from_hf(json.loads((root / wd.MODEL / 'config.json').read_text()),
                              param_dtype=dtype, dtype=compute_dtype)
  abstract = nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, abs_state = nnx.split(abstract)
  shardings = shd.state_shardings(abs_state, mesh, shd.TRAIN_RULES)
  rep = NamedSharding(mesh, P())
  like = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
  target = {'backbone': jax.tree.map(like, abs_state, shardings),
            'head': {'w': jax.ShapeDtypeStruct((cfg.hidden_size,), jnp.float32, sharding=rep),
                     'b': jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)}}
  ckpt = Checkpointer(root, async_save=False, read_only=True)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise rc.ConfigError('reward_model.ckpt', f'{workdir}: no checkpoint')
    problem, _ = ckpt.verify(step)
    if problem is not None:
      raise rc.ConfigError('reward_model.ckpt', f'{workdir} step {step}: {problem}')
    params = ckpt.restore_params(step, target)
  finally:
    ckpt.close()
  think_end = tok.piece_to_id('</think>') if info['summary_only'] else None
  return Loaded(graphdef, params, info['summary_only'], think_end,
                info['max_response_len'] if info['summary_only'] else 0)


def on_device_scores(rm: Loaded, prompt_BxP, prompt_mask_BxP, tokens_NxT, mask_NxT) -> jax.Array:
  """r [N] of sampled responses, traceable inside the RL step."""
  if rm.summary_only:
    tokens_NxT, mask_NxT = summary_tokens(tokens_NxT, mask_NxT, rm.think_end_id)
    if rm.max_len and tokens_NxT.shape[1] > rm.max_len:
      tokens_NxT, mask_NxT = tokens_NxT[:, :rm.max_len], mask_NxT[:, :rm.max_len]
  return score(rm.graphdef, rm.params, prompt_BxP, prompt_mask_BxP, tokens_NxT, mask_NxT)


class HostScorer:
  """r of (prompt, response) texts on the host (the evaluation of general
  prompts): the texts tokenised as the model was trained (the response's
  summary when summary_only, with its EOS), in batches of `batch`."""

  def __init__(self, rm: Loaded, tok, mesh: jax.sharding.Mesh, max_prompt_len: int,
               max_response_len: int, batch: int):
    self.rm, self.tok, self.P, self.T, self.batch = rm, tok, max_prompt_len, max_response_len, batch
    rows = NamedSharding(mesh, P(ts.BATCH_AXES))
    self.rows = rows
    self.fn = jax.jit(lambda params, p, pm, t, m: score(rm.graphdef, params, p, pm, t, m),
                      in_shardings=(None, rows, rows, rows, rows))

  def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
    out = []
    for i in range(0, len(prompts), self.batch):
      recs = [{'prompt': p, 'chosen': r, 'rejected': ''}
              for p, r in zip(prompts[i:i + self.batch], responses[i:i + self.batch])]
      recs += [recs[-1]] * (self.batch - len(recs))
      pairs = encode_pairs(self.tok, recs, self.P, self.T, self.rm.summary_only, 'scored',
                           truncate=True)
      put = lambda x: jax.device_put(x, self.rows)  # noqa: E731
      r = self.fn(self.rm.params, put(pairs.prompt), put(pairs.prompt_mask),
                  put(pairs.tokens[:, 0]), put(pairs.mask[:, 0]))
      out.append(np.asarray(r)[:min(self.batch, len(prompts) - i)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


# ----------------------------------------------------------------------- run


def validate(config, mesh) -> None:
  r = config.rm
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if r.batch_size % r.grad_accum or (r.batch_size // r.grad_accum) % shards:
    raise rc.ConfigError('rm.batch_size', f'{r.batch_size} pairs do not split into grad_accum='
                         f'{r.grad_accum} micro-batches over data x fsdp = {shards} devices')
  for key in ('data', 'eval_data'):
    if r[key] and not epath.Path(r[key]).exists():
      raise rc.ConfigError(f'rm.{key}', f'{r[key]!r} does not exist')


def run(config, workdir: epath.Path, lock: wd.Lock, closing: contextlib.ExitStack) -> dict:
  """Trains the reward model (r1jax.launch runs it for a config with an `rm`
  section); returns the summary with the held-out pairwise accuracy."""
  mesh = rc.make_mesh(config)
  validate(config, mesh)
  r = config.rm
  pol = policy.load(config, mesh)
  tok, graphdef = pol.tok, nnx.graphdef(pol.model)
  if r.data:
    train, held = _records(r.data, 'rm.data'), (_records(r.eval_data, 'rm.eval_data')
                                                if r.eval_data else [])
    if not r.eval_data and r.held_out:
      if r.held_out >= len(train):
        raise rc.ConfigError('rm.held_out', f'{r.held_out} held-out pairs of {len(train)}')
      train, held = train[:-r.held_out], train[-r.held_out:]
  else:
    train, held = builtin_pairs(config)
  P_, T_ = r.max_prompt_len, r.max_response_len
  t0 = time.time()
  pairs = encode_pairs(tok, train, P_, T_, r.summary_only, r.data or 'built-in')
  held_pairs = encode_pairs(tok, held, P_, T_, r.summary_only, r.eval_data or 'held-out') if held \
      else None
  steps = config.steps or max(1, math.ceil(r.epochs * len(train) / r.batch_size))
  print(f'[r1jax] reward model: {len(train)} training pairs, {len(held)} held out; {steps} steps '
        f'of {r.batch_size} pairs ({steps * r.batch_size / len(train):.2f} epochs; '
        f'{"summary only" if r.summary_only else "whole responses"}; {time.time() - t0:.1f}s)',
        flush=True)
  source = ArraySource(pairs)
  from r1jax.data import PromptIterator  # pylint: disable=g-import-not-at-top
  order = PromptIterator(source, r.batch_size, seed=config.seed,
                         process_index=jax.process_index(), process_count=jax.process_count())
  optimizer = ts.make_optimizer(config.optim, steps)
  params = init_params(pol.model)
  model_cfg = pol.model.cfg
  del pol.model
  rep = NamedSharding(mesh, P())
  params['head'] = jax.tree.map(lambda x: jax.device_put(x, rep), params['head'])
  opt_state = jax.tree.map(
      lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, rep),
      jax.jit(optimizer.init)(params))
  state = RMState(jax.device_put(jnp.zeros((), jnp.int32), rep), params, opt_state)
  export.write_model_dir(workdir, model_cfg, pol.tok_path, tok, export.generation_config(
      tok, pol.eos_ids, 1.0, 1.0))
  evaluator = make_eval(graphdef, mesh)
  step_fn = make_train_step(graphdef, optimizer, r.grad_accum, mesh, ts.shardings_of(state))
  rows = NamedSharding(mesh, P(ts.BATCH_AXES))

  def evaluate(state, step: int) -> tuple[dict, list]:
    if held_pairs is None:
      return {}, []
    loss, acc = held_out(evaluator, state.params, held_pairs, r.batch_size // r.grad_accum, mesh)
    print(f'[r1jax] eval @ step {step}: held-out pairwise accuracy {acc:.3f}  loss {loss:.4f}  '
          f'({len(held)} pairs)', flush=True)
    return {'eval/rm_accuracy': acc, 'eval/rm_loss': loss}, []

  info = {'summary_only': r.summary_only, 'max_prompt_len': P_, 'max_response_len': T_,
          'vocab_size': tok.vocab_size, 'eos_id': tok.eos_id}

  def finish(state, step: int) -> dict:
    if jax.process_index() == 0:
      from r1jax.evaluate import write_atomic  # pylint: disable=g-import-not-at-top
      write_atomic(workdir / INFO, json.dumps({**info, 'step': step}, indent=2))
    return {'reward_model': str(workdir)}

  def batch(examples: list[dict]) -> dict:
    part = source.take(examples)
    return {k: jax.make_array_from_process_local_data(rows, v) for k, v in part._asdict().items()}

  return loop.supervised(config, workdir, lock, closing, state=state, order=order, steps=steps,
                         batch=batch, step_fn=step_fn, evaluate=evaluate, finish=finish,
                         finished=lambda: (workdir / INFO).exists(),
                         shown=('eval/rm_accuracy', 'eval/rm_loss'))

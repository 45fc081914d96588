"""R1-style evaluation: pass@1 averaged over k samples and majority vote.

For each held-out question, k completions are sampled (R1: temperature 0.6,
top-p 0.95) and scored with the task's correctness reward:

  pass@1 = mean over questions of (correct samples / k)
  cons@k = mean over questions of [the most frequent extracted answer is correct]

The reward is the evaluator (as in nanochat): training and evaluation score
answers with the same functions, through the same time-limited worker
processes (`rewards.RewardScorer`).

Evaluation is data-parallel like the training rollout: each batch's prompts,
KV cache and completions are sharded over the batch axes ('data', 'fsdp'),
weights are laid out for sampling (tensor-parallel, not FSDP), each host
samples and scores only its own share of the questions, and the per-question
results are gathered across hosts once at the end.
"""
import collections
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax import sharding as shd
from r1jax.rewards import extract_answer
from r1jax.rollout import Rollout, SamplingConfig, generate

BATCH_AXES = ('data', 'fsdp')


def make_sampler(graphdef: nnx.GraphDef, cfg: SamplingConfig, k: int,
                 mesh: jax.sharding.Mesh) -> Callable:
  """(params, prompts [b, P], mask [b, P], key) -> Rollout of b·k rows as
  host numpy arrays, where b is this host's share of a batch; jitted once
  per prompt shape. Prompts and rows are sharded over the batch axes."""
  rows = NamedSharding(mesh, P(BATCH_AXES))
  rep = NamedSharding(mesh, P())

  def fn(params, ids, mask, key_data):
    params = jax.lax.with_sharding_constraint(
        params, shd.state_shardings(params, mesh, shd.SAMPLE_RULES))
    with shd.activation_rules(mesh, shd.SAMPLE_RULES):
      return generate(nnx.merge(graphdef, params), ids, mask,
                      jax.random.wrap_key_data(key_data), cfg, group_size=k)

  out_shardings = Rollout(rows, rows, rows, rows, rep)
  sample = jax.jit(fn, in_shardings=(None, rows, rows, rep), out_shardings=out_shardings)

  def run(params, ids, mask, key):
    put = lambda x: jax.make_array_from_process_local_data(rows, np.asarray(x))  # noqa: E731
    key_data = jax.make_array_from_process_local_data(rep, np.asarray(jax.random.key_data(key)))
    ro = sample(params, put(ids), put(mask), key_data)
    local = multihost_utils.global_array_to_host_local_array(
        tuple(ro[:4]), mesh, (P(BATCH_AXES),) * 4)
    return Rollout(*(np.asarray(x) for x in local), int(ro.num_steps))

  run.jitted = sample  # for the AOT tool
  return run


def host_share(n: int, batch_size: int) -> tuple[list[int], int]:
  """This host's question indices (contiguous, padded to whole batches of
  `batch_size` prompts over all hosts) and the local prompts per batch."""
  hosts, me = jax.process_count(), jax.process_index()
  if batch_size % hosts:
    raise ValueError(f'eval.batch_size {batch_size} does not split over {hosts} hosts')
  per_host = -(-n // hosts)
  return list(range(me * per_host, min(n, (me + 1) * per_host))), batch_size // hosts


def evaluate(sample: Callable, params: nnx.State, examples: Sequence[dict],
             prompts: Sequence[str], tokenizer, scorer, correctness: str,
             k: int, batch_size: int, max_prompt_len: int, key: jax.Array,
             forced: str = '') -> tuple[dict[str, float], list[dict]]:
  """Returns (metrics over all hosts, this host's per-question records).

  `scorer` is a `rewards.RewardScorer`; `correctness` the reward that judges
  an answer (the task's verifier). `forced` is appended to every prompt and
  counts as the start of each completion (templates.NO_THINKING forces an
  answer without thinking). Every batch has `batch_size` prompts over all
  hosts (padded with repeats, which are not counted): one compiled shape."""
  mine, local_batch = host_share(len(examples), batch_size)
  per_host = -(-len(examples) // jax.process_count())
  rounds = -(-per_host // local_batch)  # the same on every host: the sampler is collective
  correct, majority, formatted, lengths, records = [], [], [], [], []
  for r in range(rounds):
    idx = mine[r * local_batch:(r + 1) * local_batch]
    padded = (idx or [0]) + [(idx or [0])[-1]] * (local_batch - max(len(idx), 1))
    ids, mask = tokenizer.encode_batch([prompts[i] + forced for i in padded],
                                       max_len=max_prompt_len)
    ro = sample(params, ids, mask, jax.random.fold_in(key, r))
    texts = [forced + t for t in tokenizer.decode_batch(ro.tokens_NxT, ro.mask_NxT)]
    texts, lens = texts[:len(idx) * k], ro.mask_NxT.sum(axis=1)[:len(idx) * k]
    qs = [i for i in idx for _ in range(k)]
    scores = scorer.score((correctness, 'format'), [prompts[i] for i in qs], texts,
                          [examples[i] for i in qs])
    votes = []
    for j, i in enumerate(idx):
      answers = [a for a in (extract_answer(c) for c in texts[j * k:(j + 1) * k]) if a]
      votes.append(collections.Counter(answers).most_common(1)[0][0] if answers else None)
    voted = [j for j, v in enumerate(votes) if v is not None]
    vote_ok = np.zeros(len(idx), np.float32)
    if voted:
      vote_ok[voted] = scorer.score(
          (correctness,), [prompts[idx[j]] for j in voted],
          # Closed thinking first: a prompt that opens <think> must not make
          # the vote an unclosed chain.
          [f'</think> <answer>{votes[j]}</answer>' for j in voted],
          [examples[idx[j]] for j in voted])[:, 0]
    for j, i in enumerate(idx):
      hits = scores[j * k:(j + 1) * k, 0]
      correct.append(float(np.mean(hits >= 0.5)))
      majority.append(float(vote_ok[j] >= 0.5))
      formatted.append(float(np.mean(scores[j * k:(j + 1) * k, 1] >= 1.0)))
      lengths.append(float(np.mean(lens[j * k:(j + 1) * k])))
      records.append({'question': examples[i].get('question'), 'answer': examples[i].get('answer'),
                      'completions': texts[j * k:(j + 1) * k], 'correct': hits.tolist()})
  per_question = _gather(np.asarray([correct, majority, formatted, lengths], np.float64))
  metrics = {'eval/pass@1': float(per_question[0].mean()),
             f'eval/cons@{k}': float(per_question[1].mean()),
             'eval/format_rate': float(per_question[2].mean()),
             'eval/length': float(per_question[3].mean()),
             'eval/questions': int(per_question.shape[1])}
  return metrics, records


def _gather(local_4xQ: np.ndarray) -> np.ndarray:
  """Per-question rows of every host, concatenated (hosts may hold different
  counts: padded with NaN columns, then dropped)."""
  if jax.process_count() == 1:
    return local_4xQ
  counts = multihost_utils.process_allgather(np.int32(local_4xQ.shape[1]))
  width = int(np.max(counts))
  padded = np.full((4, width), np.nan)
  padded[:, :local_4xQ.shape[1]] = local_4xQ
  every = np.asarray(multihost_utils.process_allgather(padded))  # [hosts, 4, width]
  return np.concatenate([every[h, :, :int(c)] for h, c in enumerate(counts)], axis=1)

"""R1-style evaluation: pass@1 averaged over k samples and majority vote.

For each held-out question, k completions are sampled (R1: temperature 0.6,
top-p 0.95) and scored with the task's accuracy reward:

  pass@1 = mean over questions of (correct samples / k)
  cons@k = mean over questions of [the most frequent extracted answer is correct]

The reward is the evaluator (as in nanochat): training and evaluation score
answers with the same function.
"""
import collections
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from r1jax.rewards import extract_answer
from r1jax.rollout import Rollout, SamplingConfig, generate


def make_sampler(graphdef: nnx.GraphDef, cfg: SamplingConfig, k: int,
                 mesh: jax.sharding.Mesh | None = None
                 ) -> Callable[[nnx.State, np.ndarray, np.ndarray, jax.Array], Rollout]:
  """(params, prompts [B, P], mask, key) -> Rollout of B·k rows, jitted.

  With a mesh, prompts and results are replicated over it, so on a
  multi-host run every host passes the same prompts and can read every
  completion (each host then scores all of them: evaluation is small)."""
  fn = lambda params, ids, mask, key_data: generate(  # noqa: E731
      nnx.merge(graphdef, params), ids, mask, jax.random.wrap_key_data(key_data), cfg,
      group_size=k)
  if mesh is None:
    sample, put = jax.jit(fn), np.asarray
  else:
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sample = jax.jit(fn, out_shardings=rep)
    put = lambda x: jax.make_array_from_process_local_data(rep, np.asarray(x))  # noqa: E731
  return lambda params, ids, mask, key: sample(params, put(ids), put(mask),
                                               put(jax.random.key_data(key)))


def evaluate(sample: Callable, params: nnx.State, examples: Sequence[dict],
             prompts: Sequence[str], tokenizer, score: Callable[[str, str, dict], float],
             k: int, batch_size: int, max_prompt_len: int, key: jax.Array,
             format_score: Callable[[str, str, dict], float] | None = None,
             forced: str = '') -> tuple[dict[str, float], list[dict]]:
  """Returns (metrics, per-question records with the sampled completions).

  `forced` is appended to every prompt and counts as the start of each
  completion (templates.NO_THINKING forces an answer without thinking).
  Batches are padded to `batch_size` prompts (one compiled shape)."""
  correct, majority, formatted, lengths, records = [], [], [], [], []
  for start in range(0, len(examples), batch_size):
    idx = list(range(start, min(start + batch_size, len(examples))))
    padded = idx + [idx[-1]] * (batch_size - len(idx))
    ids, mask = tokenizer.encode_batch([prompts[i] + forced for i in padded],
                                      max_len=max_prompt_len)
    ro = sample(params, ids, mask, jax.random.fold_in(key, start))
    texts = [forced + t for t in tokenizer.decode_batch(np.asarray(ro.tokens_NxT),
                                                        np.asarray(ro.mask_NxT))]
    lens = np.asarray(ro.mask_NxT).sum(axis=1)
    for j, i in enumerate(idx):
      ex, outs = examples[i], texts[j * k:(j + 1) * k]
      hits = [score(prompts[i], c, ex) for c in outs]
      answers = [a for a in (extract_answer(c) for c in outs) if a]
      vote = collections.Counter(answers).most_common(1)[0][0] if answers else None
      vote_ok = vote is not None and score(prompts[i], f'<answer>{vote}</answer>', ex) > 0.5
      correct.append(np.mean(hits))
      majority.append(float(vote_ok))
      if format_score is not None:
        formatted.extend(format_score(prompts[i], c, ex) for c in outs)
      lengths.extend(lens[j * k:(j + 1) * k].tolist())
      records.append({'question': ex.get('question'), 'answer': ex.get('answer'),
                      'completions': outs, 'correct': hits})
  metrics = {'eval/pass@1': float(np.mean(correct)), f'eval/cons@{k}': float(np.mean(majority)),
             'eval/length': float(np.mean(lengths)), 'eval/questions': len(examples)}
  if formatted:
    metrics['eval/format_rate'] = float(np.mean(formatted))
  return metrics, records

"""The GRPO step of TRL's GRPOTrainer (PyTorch) at the shape of
benchmarks/grpo_step.py: the PyTorch trainer issue 13 measured r1jax against.

  python benchmarks/trl_step.py [--prompts 4 --group 8 --new-tokens 512]
      [--steps 2] [--gradient-checkpointing on|off] [--json]

Needs torch, transformers, trl and datasets, which r1jax does not depend on
(a separate virtual environment serves: `python -m venv /tmp/trl && /tmp/trl/bin/pip
install torch trl`); `python benchmarks/grpo_step.py --compare --baseline trl
--trl-python /tmp/trl/bin/python` runs it interleaved with r1jax's step.

The same work as grpo_step.py's step: a Qwen2 of the same shape (4 layers,
width 256, 4 heads, 2 KV heads, MLP 768, vocab 512, tied embeddings, f32,
random weights written to a temporary directory, so nothing is downloaded),
prompts of 32 tokens, G completions of exactly --new-tokens tokens each
(`min_new_tokens`: no EOS), β 0.04 with a reference model, μ 1, AdamW, on
the CPU with torch's default threads. Rewards are random numbers (their cost
is nil in both).

Timed inside the trainer: the whole step (a callback's step begin to end),
the rollout (the trainer's generation call) and the reference pass (its
log-prob call on the reference model); the update is the step's remainder
(the policy's forward and backward, the optimizer, the rewards and the
bookkeeping). The first step is a warm-up; each figure is the median of
the --steps after it. Gradient checkpointing is TRL's default (on); `off`
trades memory for the recomputed forward.
"""
import argparse
import json
import os
import resource
import statistics
import tempfile
import time


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--prompts', type=int, default=4)
  parser.add_argument('--group', type=int, default=8)
  parser.add_argument('--new-tokens', type=int, default=512)
  parser.add_argument('--steps', type=int, default=2, help='timed steps after a warm-up step')
  parser.add_argument('--gradient-checkpointing', choices=('on', 'off'), default='on')
  parser.add_argument('--json', action='store_true', help='one JSON line of seconds')
  args = parser.parse_args()
  try:
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    from datasets import Dataset  # pylint: disable=g-import-not-at-top
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    import trl  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f'benchmarks/trl_step.py needs torch, transformers, trl and datasets ({e}); '
                     'e.g. python -m venv /tmp/trl && /tmp/trl/bin/pip install torch trl') from e
  transformers.logging.set_verbosity_error()
  B, G, P, T = args.prompts, args.group, 32, args.new_tokens
  V = 512
  tmp = tempfile.mkdtemp()
  # A word-level tokenizer over the 512 ids (0 pad, 1 EOS, words w2..w511):
  # a prompt of 32 words is 32 tokens.
  words = {'<pad>': 0, '</s>': 1, **{f'w{i}': i for i in range(2, V)}}
  tok = Tokenizer(tok_models.WordLevel(words, unk_token='<pad>'))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>',
                                                   eos_token='</s>', unk_token='<pad>')
  cfg = transformers.Qwen2Config(
      vocab_size=V, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max(4096, P + T),
      tie_word_embeddings=True, eos_token_id=1, pad_token_id=0, bos_token_id=None)
  torch.manual_seed(0)
  # Saved and named by path: TRL builds its reference model from the same path.
  transformers.Qwen2ForCausalLM(cfg).to(torch.float32).save_pretrained(tmp)
  tokenizer.save_pretrained(tmp)
  rng = np.random.default_rng(0)
  steps = args.steps + 1
  prompts = [' '.join(f'w{i}' for i in rng.integers(2, V, P)) for _ in range(B * steps)]
  assert all(len(tokenizer(p)['input_ids']) == P for p in prompts)

  def reward(completions, **_):
    return [float(x) for x in rng.normal(size=len(completions))]

  config = trl.GRPOConfig(
      output_dir=os.path.join(tmp, 'out'), per_device_train_batch_size=B * G, num_generations=G,
      gradient_accumulation_steps=1, max_completion_length=T, temperature=1.0,
      generation_kwargs={'min_new_tokens': T}, beta=0.04, num_iterations=1, learning_rate=1e-5,
      use_cpu=True, bf16=False, report_to='none', save_strategy='no', logging_steps=1,
      max_steps=steps, shuffle_dataset=False, disable_tqdm=True,
      gradient_checkpointing=args.gradient_checkpointing == 'on')
  trainer = trl.GRPOTrainer(model=tmp, reward_funcs=reward, args=config,
                            train_dataset=Dataset.from_dict({'prompt': prompts}),
                            processing_class=tokenizer)
  times = {'rollout': [], 'reference': [], 'step': []}
  lengths = []
  generate = trainer._generate_single_turn  # pylint: disable=protected-access
  logprobs = trainer._get_per_token_logps_and_entropies  # pylint: disable=protected-access

  def timed_generate(*a, **k):
    t0 = time.perf_counter()
    out = generate(*a, **k)
    times['rollout'].append(time.perf_counter() - t0)
    return out

  def timed_logprobs(model, *a, **k):
    t0 = time.perf_counter()
    out = logprobs(model, *a, **k)
    if model is trainer.ref_model:
      times['reference'].append(time.perf_counter() - t0)
      lengths.append(int(a[0].shape[1]))  # prompt + completion ids
    return out

  trainer._generate_single_turn = timed_generate  # pylint: disable=protected-access
  trainer._get_per_token_logps_and_entropies = timed_logprobs  # pylint: disable=protected-access

  class Clock(transformers.TrainerCallback):
    def on_step_begin(self, *_, **__):
      self.t0 = time.perf_counter()

    def on_step_end(self, *_, **__):
      times['step'].append(time.perf_counter() - self.t0)

    def on_log(self, *_, logs=None, **__):
      if logs and 'completions/min_length' in logs:
        lengths.append((logs['completions/min_length'], logs['completions/max_length']))

  trainer.add_callback(Clock())
  trainer.train()
  # Every step: one reference pass over P + T ids, every completion T tokens long.
  if lengths != [P + T, (T, T)] * steps or len(times['reference']) != steps:
    raise SystemExit(f'expected {steps} steps of {P} + {T} tokens, (min, max) completion '
                     f'lengths ({T}, {T}): {lengths}')
  med = {k: statistics.median(v[1:]) for k, v in times.items()}
  med['update'] = med['step'] - med['rollout'] - med['reference']
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if args.json:
    print(json.dumps({**med, 'rss_mib': rss}))
    return
  print(f'TRL {trl.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), '
        f'gradient checkpointing {args.gradient_checkpointing}: {B} prompts x G {G} x {T} '
        f'new tokens, median of {args.steps} steps after a warm-up')
  for k in ('rollout', 'reference', 'update', 'step'):
    print(f'{k:>9}: {med[k] * 1e3:8.1f} ms')
  print(f'{"peak RSS":>9}: {rss:8.0f} MiB')


if __name__ == '__main__':
  main()

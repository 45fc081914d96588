"""Evaluation of a checkpoint on benchmark files (R1's protocol).

  python -m r1jax.evaluate --config=configs/eval.py:ckpt=workdir/zero-tiny
  python -m r1jax.evaluate --config=configs/eval.py:ckpt=workdir/zero-tiny,steps=all
  python -m r1jax.evaluate '--config=configs/eval.py:ckpt=/models/DeepSeek-R1-Distill-Qwen-1.5B,r1,chat,bench=aime24:math:/data/aime24.jsonl;gpqa:multiple_choice:/data/gpqa_diamond.parquet' \\
      --config.benchmarks.gpqa.fields.options='Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3' \\
      --config.benchmarks.gpqa.fields.question=Question

Default (no args): the tiny base shipped with r1jax on the built-in
arithmetic task's 256 held-out questions x 4 samples. Hardware: 2 CPU cores.
Time: about 10 s (10.4 s on 2026-12-08). Result: pass@1 0.585 +- 0.018, cons@4
0.773 -- the quickstart's step-0 evaluation, sample for sample.

`ckpt`: a HF directory, an r1jax workdir (its checkpoints: `steps`), or
`<workdir>/checkpoints/<step>`; empty: the tiny base shipped with r1jax.
`steps`: 'latest', 'all', or a comma list ('20;40' on the command line, where
',' separates the args). Default benchmark: the built-in arithmetic task's
held-out split (256 questions), the one `configs/zero.py` trains on.

`r1`: DeepSeek-R1's evaluation settings (temperature 0.6, top-p 0.95,
32,768 new tokens, k = 64 samples: pass@1 over 64, cons@64). `chat`: the
model's chat template with R1's recommended prompt (for instruct and
distilled models; data/benchmarks.py), instead of the R1-Zero template.

`bench`: benchmarks as name:format:path, ';' between them (path empty for
the built-in tasks `arithmetic`, `countdown` and `general`). Each becomes
config.benchmarks.<name> = {'format', 'path' (JSONL or parquet), 'fields'
(the format's names -> the file's, e.g. fields.question=Problem), 'limit'
(0: all), 'prompt' ('': the config's)}; formats in r1jax/data/benchmarks.py.
"""
from ml_collections import ConfigDict

from r1jax import config as rc
from r1jax.data import benchmarks as bm


def _benchmark(spec: str, fmt: str, path: str, limit: int = 0) -> dict:
  if fmt not in bm.FORMATS:
    raise ValueError(f'config arg bench: {spec!r}: format {fmt!r} is not one of '
                     f'{sorted(bm.FORMATS)}; a benchmark is name:format:path, e.g. '
                     'aime24:math:/data/aime24.jsonl (the path empty for a built-in task)')
  return {'format': fmt, 'path': path, 'fields': dict(bm.FORMATS[fmt].fields), 'limit': limit,
          'prompt': ''}


def get_config(arg: str | None = None) -> ConfigDict:
  arg = rc.parse_arg(arg, ckpt='', steps='latest', bench='arithmetic::', r1=False, chat=False)
  c = ConfigDict()
  c.ckpt = arg.ckpt
  c.steps = arg.steps.replace(';', ',')
  c.tokenizer = ''  # '': the checkpoint's own
  c.out = ''  # '': <workdir>/eval, or eval/<directory name> for a HF directory
  c.data_dir = ''  # the built-in tasks' data: '' : <workdir>/tfds, or <out>/tfds
  c.seed = 0  # the training run's seed gives its own evaluation's samples
  c.prompt = 'chat' if arg.chat else 'r1_zero'
  c.k = 4
  c.pass_k = (1, 2, 4)
  c.temperature = 0.6
  c.top_p = 0.95
  c.max_new_tokens = 32
  c.max_prompt_len = 0  # 0: the longest prompt, rounded up to 64 tokens
  c.batch_size = 64  # prompts per sampling batch, over all devices and hosts
  c.decode_slots = 0  # continuous batching (rollout.py); 0: static batches
  c.reward_workers = 0  # 0: rewards.default_workers()
  c.reward_timeout_s = 10.0
  c.distributed = False
  # name: a preset, for the AOT tool only (r1jax.tools.aot checks this sampler's memory).
  c.model = ConfigDict(dict(param_dtype='float32', dtype='float32', attention='auto', name=''))
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.benchmarks = {}
  for spec in filter(None, arg.bench.split(';')):
    name, fmt, path = (spec.split(':', 2) + ['', ''])[:3]
    fmt = fmt or name
    c.benchmarks[name] = _benchmark(spec, fmt, path,
                                    256 if (fmt, path) == ('arithmetic', '') else 0)
  if arg.r1:
    # 32 questions x 64 samples a batch, decoded continuously in 512 slots
    # (per batch shard: 16 slots of 33k tokens on each of 32 chips, ~15 GB
    # of KV cache for Qwen2.5-1.5B in bf16) over the long-chains decode.
    c.k = 64
    c.pass_k = (1, 8, 64)
    c.max_new_tokens = 32768
    c.batch_size = 32
    c.decode_slots = 512
    c.model.update(param_dtype='bfloat16', dtype='bfloat16')
  return c

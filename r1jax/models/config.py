"""Decoder hyper-parameters and named presets.

One dataclass covers the Qwen2 / Qwen2.5, Qwen3 (dense) and Llama 3.x
families; the presets carry the values of the public `config.json` of each
checkpoint.
"""
import dataclasses
from typing import Any


LORA_TARGETS = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of one decoder. Field names follow HF where they exist."""

  arch: str  # 'qwen2' | 'qwen3' | 'llama'
  vocab_size: int
  hidden_size: int  # D
  intermediate_size: int  # F
  num_layers: int  # L
  num_heads: int  # N
  num_kv_heads: int  # K
  head_dim: int  # H
  rope_theta: float = 10_000.0
  # Llama 3 frequency scaling: {'factor', 'low_freq_factor', 'high_freq_factor',
  # 'original_max_position_embeddings'}, or None.
  rope_scaling: tuple[tuple[str, float], ...] | None = None
  rms_norm_eps: float = 1e-6
  qkv_bias: bool = False
  qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k, before RoPE
  tie_embeddings: bool = False
  max_position_embeddings: int = 4096
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  # Numerics: weights are stored in param_dtype, matmuls run in dtype
  # (accumulating in f32), norms / softmax / RoPE run in f32.
  param_dtype: str = 'float32'
  dtype: str = 'float32'
  remat: bool = False  # rematerialise each layer in the backward pass
  # Teacher-forced passes (kernels/attention.py): auto | dense | blockwise |
  # splash | cudnn, and the key block of the blockwise path (`auto` is dense
  # up to one block).
  attention: str = 'auto'
  attention_block: int = 512
  # The MLP of sequences longer than this many positions runs over chunks of
  # it, so its [B, T, F] activations exist one chunk at a time (forward and
  # backward); 0 runs it whole.
  mlp_chunk: int = 4096
  # LoRA (Hu et al. 2021): W x + (alpha / rank) B A x on the `lora_targets`
  # projections (q, k, v, o, gate, up, down); rank 0 is off. A is drawn
  # uniformly in ±1/sqrt(fan-in), B starts at zero (the base model exactly).
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ()

  def __post_init__(self):
    if self.arch not in ('qwen2', 'qwen3', 'llama'):
      raise ValueError(f"model.arch: unsupported architecture {self.arch!r}")
    if self.mlp_chunk < 0:
      raise ValueError(f'model.mlp_chunk={self.mlp_chunk}: at least 0 (0: the MLP whole)')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f'model.num_heads={self.num_heads} is not a multiple of '
          f'model.num_kv_heads={self.num_kv_heads}')
    if self.head_dim % 2:
      raise ValueError(f'model.head_dim={self.head_dim} must be even (RoPE)')
    if self.qk_norm != (self.arch == 'qwen3'):
      raise ValueError(f'model.qk_norm={self.qk_norm} with arch {self.arch!r}: Qwen3 has q/k '
                       'norms, the others do not')
    unknown = set(self.lora_targets) - set(LORA_TARGETS)
    if unknown or (self.lora_rank > 0) != bool(self.lora_targets) or self.lora_rank < 0:
      raise ValueError(f'lora: rank {self.lora_rank} with targets {self.lora_targets} (rank >= 1 '
                       f'needs targets of {LORA_TARGETS}, rank 0 none)')
    for key in ('param_dtype', 'dtype'):
      if getattr(self, key) not in ('float32', 'bfloat16', 'float16'):
        raise ValueError(f'model.{key}: expected float32|bfloat16|float16, '
                         f'got {getattr(self, key)!r}')

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  @property
  def rope_scaling_dict(self) -> dict[str, float] | None:
    return dict(self.rope_scaling) if self.rope_scaling else None

  @property
  def eos_ids(self) -> tuple[int, ...]:
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, int):
      return (self.eos_token_id,)
    return tuple(self.eos_token_id)

  def replace(self, **kw: Any) -> 'ModelConfig':
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
    n, k, h = self.num_heads, self.num_kv_heads, self.head_dim
    attn = d * (n + 2 * k) * h + n * h * d + (((n + 2 * k) * h) if self.qkv_bias else 0)
    layer = attn + 3 * d * f + 2 * d + (2 * h if self.qk_norm else 0)
    head = 0 if self.tie_embeddings else v * d
    return self.num_layers * layer + v * d + head + d


_LLAMA3_SCALING_8K = lambda factor: (  # noqa: E731
    ('factor', factor), ('low_freq_factor', 1.0), ('high_freq_factor', 4.0),
    ('original_max_position_embeddings', 8192))

PRESETS: dict[str, ModelConfig] = {
    # For tests and the CPU quickstart; the vocabulary is resized to the
    # tokenizer in use.
    'tiny': ModelConfig(
        arch='qwen2', vocab_size=512, hidden_size=64, intermediate_size=192,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        rope_theta=10_000.0, qkv_bias=True, tie_embeddings=True,
        max_position_embeddings=2048),
    'qwen2.5-0.5b': ModelConfig(
        arch='qwen2', vocab_size=151936, hidden_size=896,
        intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
        head_dim=64, rope_theta=1_000_000.0, rms_norm_eps=1e-6, qkv_bias=True,
        tie_embeddings=True, max_position_embeddings=32768,
        bos_token_id=151643, eos_token_id=151643),
    'qwen2.5-1.5b': ModelConfig(
        arch='qwen2', vocab_size=151936, hidden_size=1536,
        intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
        head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6, qkv_bias=True,
        tie_embeddings=True, max_position_embeddings=131072,
        bos_token_id=151643, eos_token_id=151643),
    'qwen2.5-math-1.5b': ModelConfig(
        arch='qwen2', vocab_size=151936, hidden_size=1536,
        intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
        head_dim=128, rope_theta=10_000.0, rms_norm_eps=1e-6, qkv_bias=True,
        tie_embeddings=True, max_position_embeddings=4096,
        bos_token_id=151643, eos_token_id=151643),
    'qwen2.5-7b': ModelConfig(
        arch='qwen2', vocab_size=152064, hidden_size=3584,
        intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
        head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6, qkv_bias=True,
        tie_embeddings=False, max_position_embeddings=131072,
        bos_token_id=151643, eos_token_id=151643),
    'deepseek-r1-distill-qwen-1.5b': ModelConfig(
        arch='qwen2', vocab_size=151936, hidden_size=1536,
        intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
        head_dim=128, rope_theta=10_000.0, rms_norm_eps=1e-6, qkv_bias=True,
        tie_embeddings=False, max_position_embeddings=131072,
        bos_token_id=151646, eos_token_id=151643),
    # Qwen3 dense (the public config.json of Qwen/Qwen3-*): q/k norms, no
    # q/k/v bias, head_dim 128 whatever the width.
    'qwen3-0.6b': ModelConfig(
        arch='qwen3', vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, qk_norm=True, tie_embeddings=True,
        max_position_embeddings=40960, bos_token_id=151643, eos_token_id=151645),
    'qwen3-1.7b': ModelConfig(
        arch='qwen3', vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, qk_norm=True, tie_embeddings=True,
        max_position_embeddings=40960, bos_token_id=151643, eos_token_id=151645),
    'qwen3-4b': ModelConfig(
        arch='qwen3', vocab_size=151936, hidden_size=2560, intermediate_size=9728,
        num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, qk_norm=True, tie_embeddings=True,
        max_position_embeddings=40960, bos_token_id=151643, eos_token_id=151645),
    'qwen3-8b': ModelConfig(
        arch='qwen3', vocab_size=151936, hidden_size=4096, intermediate_size=12288,
        num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, qk_norm=True, tie_embeddings=False,
        max_position_embeddings=40960, bos_token_id=151643, eos_token_id=151645),
    'llama3.2-1b': ModelConfig(
        arch='llama', vocab_size=128256, hidden_size=2048,
        intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8,
        head_dim=64, rope_theta=500_000.0, rope_scaling=_LLAMA3_SCALING_8K(32.0),
        rms_norm_eps=1e-5, tie_embeddings=True, max_position_embeddings=131072,
        bos_token_id=128000, eos_token_id=128001),
    'llama3.1-8b': ModelConfig(
        arch='llama', vocab_size=128256, hidden_size=4096,
        intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
        head_dim=128, rope_theta=500_000.0, rope_scaling=_LLAMA3_SCALING_8K(8.0),
        rms_norm_eps=1e-5, tie_embeddings=False, max_position_embeddings=131072,
        bos_token_id=128000, eos_token_id=128001),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
  """Returns the named preset, with fields replaced by `overrides`."""
  if name not in PRESETS:
    raise ValueError(f'model: unknown preset {name!r}; known: {sorted(PRESETS)}')
  return PRESETS[name].replace(**overrides)

"""Writes tiny random HF checkpoints and reference outputs for the parity tests.

The fixtures are committed under tests/fixtures/, so the tests need neither
torch nor transformers. To regenerate them (CPU only, a minute):

  python -m venv /tmp/hf && /tmp/hf/bin/pip install torch==2.13.0 transformers safetensors numpy
  /tmp/hf/bin/python tools/make_hf_fixtures.py [case ...]

For each architecture it writes <dir>/config.json, *.safetensors (the Llama one
split into several files with an index), and <dir>/reference.npz with
  tokens [B, T] int32, logits [B, T, V] float32 (transformers, f32, eager),
  prompt [P] int32, greedy [P + NEW] int32 (transformers' generate, do_sample=False),
  greedy_margin: the smallest top-1 - top-2 logit gap along the greedy path.
"""
import os
import sys

import numpy as np
import torch
import transformers

OUT = os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures')
COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
              rms_norm_eps=1e-6, initializer_range=0.2)
CASES = {
    'hf_qwen2_tiny': (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(
        rope_theta=10_000.0, tie_word_embeddings=True), None),
    # llama3 scaling with a small original context so that every frequency band
    # (kept, smoothed, divided by the factor) occurs at these positions.
    'hf_llama3_tiny': (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
        tie_word_embeddings=False, head_dim=16, rope_theta=10_000.0,
        rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=32)),
                       '40KB'),
    # head_dim 32 != hidden / heads = 16: Qwen3 sets it on its own.
    'hf_qwen3_tiny': (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(
        tie_word_embeddings=False, head_dim=32, rope_theta=10_000.0, attention_bias=False),
                      None),
}
NEW_TOKENS = 16


def main():
  names = sys.argv[1:] or list(CASES)  # e.g. hf_qwen3_tiny: only that one
  for name in names:
    config_cls, model_cls, extra, shard = CASES[name]
    torch.manual_seed(0)
    config = config_cls(**COMMON, **extra)
    config._attn_implementation = 'eager'  # pylint: disable=protected-access
    model = model_cls(config).eval().float()
    with torch.no_grad():  # make norms and biases non-trivial too
      for pname, p in model.named_parameters():
        if 'norm' in pname:
          p.copy_(1.0 + 0.1 * torch.randn_like(p))
        elif pname.endswith('bias'):
          p.copy_(0.1 * torch.randn_like(p))
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
      os.remove(os.path.join(path, f))
    kwargs = {'max_shard_size': shard} if shard else {}
    model.save_pretrained(path, safe_serialization=True, **kwargs)

    rng = np.random.default_rng(0)
    tokens = rng.integers(3, COMMON['vocab_size'], size=(2, 40)).astype(np.int32)
    with torch.no_grad():
      logits = model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()
      prompt = tokens[0, :8]
      out = model.generate(torch.tensor(prompt[None], dtype=torch.long),
                           do_sample=False, max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, eos_token_id=None,
                           pad_token_id=0)
      greedy = out[0].numpy().astype(np.int32)
      path_logits = model(out[:, :-1]).logits[0, len(prompt) - 1:].float()
      top2 = torch.topk(path_logits, 2, dim=-1).values
      margin = float((top2[:, 0] - top2[:, 1]).min())
    np.savez(os.path.join(path, 'reference.npz'), tokens=tokens, logits=logits,
             prompt=prompt, greedy=greedy, greedy_margin=margin)
    print(f'{name}: files={sorted(os.listdir(path))} greedy margin={margin:.4f}')


if __name__ == '__main__':
  main()

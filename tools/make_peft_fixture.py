"""Writes a LoRA adapter with PEFT on the Qwen3 parity fixture, and the
adapted model's logits, for tests/lora_test.py (which needs neither torch nor
peft: the files are committed under tests/fixtures/peft_qwen3_tiny_lora).

  /tmp/hf/bin/pip install torch==2.13.0 transformers peft
  /tmp/hf/bin/python tools/make_peft_fixture.py

Writes adapter_config.json and adapter_model.safetensors (PEFT's own
save_pretrained) and reference.npz: tokens [B, T] int32, logits [B, T, V]
float32 of the base with the adapter applied (B matrices randomised, so the
adapter changes the function).
"""
import json
import os

import numpy as np
import peft
import torch
import transformers

FIXTURES = os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures')
BASE = os.path.join(FIXTURES, 'hf_qwen3_tiny')
OUT = os.path.join(FIXTURES, 'peft_qwen3_tiny_lora')


def main():
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32,
                                                            attn_implementation='eager')
  config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type='CAUSAL_LM',
                           target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj',
                                           'up_proj', 'down_proj'])
  model = peft.get_peft_model(model, config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'lora_B' in name:
        p.copy_(0.3 * torch.randn_like(p))
  os.makedirs(OUT, exist_ok=True)
  model.save_pretrained(OUT)
  os.remove(os.path.join(OUT, 'README.md'))  # PEFT's model-card template
  with open(os.path.join(OUT, 'adapter_config.json')) as f:
    cfg = json.load(f)
  cfg['base_model_name_or_path'] = '../hf_qwen3_tiny'  # not this machine's path
  with open(os.path.join(OUT, 'adapter_config.json'), 'w') as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
  tokens = np.random.default_rng(1).integers(3, 256, size=(2, 24)).astype(np.int32)
  with torch.no_grad():
    logits = model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()
  np.savez(os.path.join(OUT, 'reference.npz'), tokens=tokens, logits=logits)
  print(sorted(os.listdir(OUT)))


if __name__ == '__main__':
  main()

"""The Colab walkthrough runs top to bottom (smoke sizes via R1JAX_NOTEBOOK_SMALL)."""
import os
import re

import nbformat
from nbclient import NotebookClient

from conftest import ROOT, zero_config
from r1jax import metrics


def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv('R1JAX_NOTEBOOK_SMALL', '1')
  monkeypatch.setenv('R1JAX_NOTEBOOK_WORKDIR', str(tmp_path))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  path = os.path.join(ROOT, 'notebooks', 'walkthrough.ipynb')
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=900, kernel_name='python3',
                 resources={'metadata': {'path': os.path.dirname(path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'pass@1:' in text and 'before:' in text and 'after:' in text
  # The plot cell displays its figure (an inline PNG), not only builds it.
  assert any('image/png' in o.get('data', {}) for o in outputs), 'no figure was displayed'
  # "after" is the last evaluation of training, not a forced no-thinking one.
  rows = metrics.read_jsonl(str(tmp_path / 'notebook-run' / 'metrics.jsonl'))
  last = max(r['step'] for r in rows if 'eval/pass@1' in r)
  assert last == zero_config('smoke').steps
  assert f'before: step 0, after: step {last}' in text
  # The console of a run that prepares its data shows r1jax's lines and no
  # library chatter (absl-formatted INFO/WARNING lines, TFDS banners).
  chatter = [line for line in text.splitlines()
             if re.match(r'[IWE]\d{4} \d\d:\d\d|INFO[:\s]', line)
             or 'Downloading and preparing' in line]
  assert not chatter, chatter[:5]
  # Everything the run wrote is under its workdir (nothing under the checkout).
  assert os.path.exists(tmp_path / 'notebook-run' / 'tfds')

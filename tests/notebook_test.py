"""The Colab walkthrough runs top to bottom (smoke sizes via R1JAX_NOTEBOOK_SMALL)."""
import os

import nbformat
from nbclient import NotebookClient

from conftest import ROOT


def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
  monkeypatch.setenv('R1JAX_NOTEBOOK_SMALL', '1')
  monkeypatch.setenv('R1JAX_NOTEBOOK_WORKDIR', str(tmp_path))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  path = os.path.join(ROOT, 'notebooks', 'walkthrough.ipynb')
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=900, kernel_name='python3',
                 resources={'metadata': {'path': os.path.dirname(path)}}).execute()
  outputs = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                    for o in c.get('outputs', []))
  assert 'pass@1:' in outputs and 'before:' in outputs and 'after:' in outputs
  assert os.path.exists(tmp_path / 'notebook-run' / 'metrics.jsonl')

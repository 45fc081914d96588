"""The ahead-of-time tool: topology names, and the whole step compiled for
this machine's 8 CPU devices (the TPU path differs only in the devices)."""
import jax
import pytest

from conftest import config_file, zero_config
from r1jax.tools import aot


def test_topology_names():
  t = aot.parse_topology('v5p-64')  # v5p names count TensorCores: 32 chips
  assert (t.chips, t.shape, t.libtpu_name, t.hbm_gib) == (32, (2, 4, 4), 'v5p:2x4x4', 95)
  assert aot.parse_topology('v5e-16').shape == (4, 4)
  assert aot.parse_topology('v6e-8').libtpu_name == 'v6e:2x4'
  assert aot.parse_topology('v4-8').shape == (2, 2, 1)  # libtpu's v4:2x2x1
  for bad in ('v5p-48', 'tpu-8', 'v5e'):
    with pytest.raises(ValueError, match='--topology'):
      aot.parse_topology(bad)


def test_bad_configs_and_topologies_are_one_fatal_line_before_any_compile(monkeypatch, capsys):
  """main validates every stage of a pipeline before compiling its first
  (a bad key of the last stage was found after the first had compiled), and
  a bad topology or preset is a FATAL line with exit status 1, not a
  traceback."""
  from absl import flags
  compiled = []
  monkeypatch.setattr(aot, 'dispatch', lambda *a, **k: compiled.append(a) or {})
  r1 = config_file('r1', None)
  r1.reasoning_rl.rl.beta = -1.0
  eval_cfg = config_file('eval', None)
  eval_cfg.model.name = 'nope'
  for config, topology, message in [
      (r1, 'cpu', 'config.reasoning_rl.rl.beta: must be a finite number >= 0'),
      (zero_config(None), 'v9x-3', "--topology: expected e.g. v5p-64 or v5e-16, got 'v9x-3'"),
      (zero_config('model=qwen2.5-1.5b'), 'v5p-3', 'not a power-of-two slice'),
      (eval_cfg, 'cpu', "config.model.name: unknown preset 'nope'")]:
    monkeypatch.setattr(flags, 'FLAGS', type('F', (), {'config': config, 'topology': topology}))
    assert aot.main(['aot']) == 1
    err = capsys.readouterr().err
    assert err.startswith('FATAL: ') and message in err and not compiled, err


@pytest.mark.parametrize('name,arg', [
    ('zero', None), ('zero', 'model=qwen2.5-1.5b,paper'), ('zero', 'model=qwen2.5-7b,paper'),
    ('r1', None), ('r1', 'model=qwen2.5-1.5b,paper'), ('distill', None),
    ('distill', 'model=qwen2.5-1.5b'), ('distill', 'model=qwen2.5-1.5b,paper'),
    ('eval', 'r1'), ('rejection', None), ('rejection', 'r1'), ('rejection', 'r1,k=3'),
    ('sft', None), ('rm', None)])
def test_every_shipped_recipe_passes_validation(name, arg):
  """The recipes as shipped, at the paper's settings too, pass the checks
  the commands run before compiling (configs/rejection.py:r1 kept eval's r1
  batch of 32 questions for 512 decode slots with k 4: 128 samples, refused,
  and so was configs/distill.py for a real teacher)."""
  c = config_file(name, arg)
  if name == 'eval':
    c.model.name = 'qwen2.5-1.5b'
  aot.validate(c)


def test_the_verdicts_and_exit_status():
  """The tool exits 1 when a program does not fit or does not compile."""
  report = {'rm.peak_gib': 4.08, 'rl.compiled': True, 'rl.peak_gib': 47.75,
            'rl.eval_compiled': True, 'rl.eval_peak_gib': 20.91}
  lines, ok = aot.verdicts(report, 95)
  assert ok and lines == ['rm step: peak 4.08 GiB per device of 95 GiB: fits',
                          'rl step: peak 47.75 GiB per device of 95 GiB: fits',
                          'rl evaluation sampler: peak 20.91 GiB per device of 95 GiB: fits']
  lines, ok = aot.verdicts({'peak_gib': 96.0}, 95)
  assert not ok and lines == ['step: peak 96.00 GiB per device of 95 GiB: DOES NOT FIT (OOM)']
  lines, ok = aot.verdicts({'compiled': True, 'eval_compiled': False, 'eval_compile_error': 'x'},
                           95)
  assert not ok and lines == ['evaluation sampler: DID NOT COMPILE']
  assert aot.verdicts({'compiled': True, 'peak_gib': 1e9}, None) == ([], True)  # --topology=cpu


def test_step_compiles_and_reports_memory_per_device():
  c = zero_config('smoke')
  c.mesh.update(data=1, fsdp=4, tensor=2)
  report = aot.check(c, jax.devices())
  assert report['compiled'], report
  assert report['devices'] == 8 and report['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 2}
  # Weights, Adam moments and the reference are split 8 ways (the small
  # norms and the step counter are whole on each device).
  assert 0 < report['state_gib_per_device'] < report['peak_gib']
  state, *_ = aot.abstract_state(c, aot.shd.make_mesh(1, 4, 2))
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / 2**30
  assert 7 < total / report['state_gib_per_device'] <= 8, (total, report)
  assert report['eval_compiled'], report
  assert report['eval_peak_gib'] > 0


def test_aot_uses_the_checkpoint_shape():
  """model.ckpt's config.json decides the shape (the preset's was used)."""
  import os
  from conftest import FIXTURES
  c = zero_config('smoke')
  c.model.ckpt = os.path.join(FIXTURES, 'hf_qwen2_tiny')
  state, *_ = aot.abstract_state(c, aot.shd.make_mesh(8, 1, 1))
  embed = [x for x in jax.tree.leaves(state.params) if x.ndim == 2 and x.shape[0] == 256]
  assert embed, 'the fixture vocabulary (256) is not in the abstract state'


def test_the_aot_tool_checks_an_sft_step_with_lora():
  """configs/sft.py (LoRA, dropout) through the AOT tool on this machine's
  devices: the SFT step compiles; the adapters are the state, the base is
  reported apart."""
  c = config_file('sft', 'smoke')
  c.lora.update(rank=4, dropout=0.1)
  report = aot.check_sft(c, jax.devices()[:1])
  assert report['compiled'] and report['peak_gib'] > 0, report
  assert 0 < report['state_gib_per_device'] < report['frozen_base_gib_per_device']


def test_the_aot_tool_checks_every_stage_of_r1s_pipeline():
  """configs/r1.py:smoke through the AOT tool before any stage ran: each
  stage's program compiles with its inputs standing in by their shapes;
  the last RL stage holds the reward model (its parameters reported)."""
  c = config_file('r1', 'smoke')
  report = aot.dispatch(c, jax.devices()[:1])
  for stage in c.pipeline.order:  # rejection sampling is its sampler
    key = 'eval_compiled' if c.pipeline.kinds[stage] == 'rejection' else 'compiled'
    assert report[f'{stage}.{key}'], (stage, report)
  assert report['rm.peak_gib'] > 0 and report['reasoning_rl.eval_compiled'], report
  assert report['rl.compiled'] and report['rl.eval_compiled'], report
  assert 0 < report['rl.reward_model_gib_per_device'] < report['rl.peak_gib']


def test_a_pipeline_with_no_base_checks_every_stage_on_its_preset(tmp_path):
  """configs/r1.py on a named model with no checkpoint: every stage that
  reads a model (rejection sampling's `ckpt` too) stands in by the preset;
  the RL stage's reward model is fed as its rm stage, or its workdir's
  reward_model.json, says (whole responses: nothing cut)."""
  import json
  from r1jax import config as rc
  from r1jax import reward_model as rm_lib
  c = config_file('r1', 'model=qwen2.5-1.5b,paper')
  c = rc.ConfigDict(c.to_dict())
  placeholder = 'aot: the preset'
  c.pipeline.base = placeholder
  for stage in c.pipeline.order:
    s = aot.stage_config(c, stage, placeholder)
    assert s.model.get('ckpt', '') == '' and s.get('ckpt', '') == '', stage
    assert s.model.name == 'qwen2.5-1.5b', stage
  assert aot._stage_rm_view(c) == (True, c.rm.rm.max_response_len)  # pylint: disable=protected-access
  c.rm.rm.summary_only = False
  assert aot._stage_rm_view(c) == (False, 0)  # pylint: disable=protected-access
  rl = aot.stage_config(c, 'rl', placeholder)
  rl.reward_model.ckpt = str(tmp_path)
  (tmp_path / rm_lib.INFO).write_text(json.dumps({'summary_only': False, 'max_response_len': 64}))
  assert aot._reward_model_view(rl, (True, 2048)) == (False, 0)  # pylint: disable=protected-access
  (tmp_path / rm_lib.INFO).write_text(json.dumps({'summary_only': True, 'max_response_len': 64}))
  assert aot._reward_model_view(rl, (False, 0)) == (True, 64)  # pylint: disable=protected-access

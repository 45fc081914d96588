"""Configs: the :arg parser, overrides, and validation that names the key."""
import os
import re
import subprocess
import sys
import traceback

import pytest
from absl import flags
from ml_collections import config_flags

from conftest import ROOT
from r1jax import config as rc

ZERO = os.path.join(ROOT, 'configs', 'zero.py')


def _load(argv):
  # config_flags reads the overrides (--config.x=...) from sys.argv.
  saved, sys.argv = sys.argv, ['prog'] + argv
  try:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, flag_values=fv)
    fv(['prog'] + argv)
    return fv.config
  finally:
    sys.argv = saved


def test_parse_arg_types_and_errors():
  a = rc.parse_arg('model=qwen2.5-1.5b,runlocal,steps=3,lr=0.5', model='tiny',
                   runlocal=False, steps=1, lr=1.0)
  assert (a.model, a.runlocal, a.steps, a.lr) == ('qwen2.5-1.5b', True, 3, 0.5)
  with pytest.raises(ValueError, match="unknown key 'bogus'"):
    rc.parse_arg('bogus=1', model='tiny')
  with pytest.raises(ValueError, match="steps='x' is not an integer"):
    rc.parse_arg('steps=x', steps=1)


def test_config_file_with_arg_and_dotted_overrides():
  c = _load([f'--config={ZERO}:model=qwen2.5-1.5b', '--config.steps=7',
             '--config.mesh.fsdp=4'])
  assert c.model.name == 'qwen2.5-1.5b' and c.steps == 7 and c.mesh.fsdp == 4
  assert c.model.param_dtype == 'float32' and c.model.dtype == 'bfloat16'
  rc.validate(c)
  assert rc.validate(_load([f'--config={ZERO}'])).model.name == 'tiny'


def test_unknown_override_is_refused():
  with pytest.raises(AttributeError, match='Did you mean "fsdp" instead of "fsdpp"'):
    _load([f'--config={ZERO}', '--config.mesh.fsdpp=4'])


@pytest.mark.parametrize('key,value,match', [
    ('steps', -1, 'config.steps: must be an integer >= 0'),
    ('model.dtype', 'float64', 'config.model.dtype: must be one of'),
    ('mesh.tensor', 0, 'config.mesh.tensor'),
    ('model.name', 'gpt5', "config.model.name: unknown preset 'gpt5'"),
    ('model.ckpt', '/nonexistent', 'config.model.ckpt'),
])
def test_validation_names_the_key(key, value, match):
  c = rc.base_config()
  node = c
  *parents, leaf = key.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(rc.ConfigError, match=match) as e:
    rc.validate(c)
  assert e.value.key == key


def test_two_free_mesh_axes_rejected():
  c = rc.base_config()
  c.mesh.fsdp = -1
  with pytest.raises(rc.ConfigError, match='config.mesh: at most one axis'):
    rc.validate(c)


def test_paper_preset_is_r1_zero_schedule():
  """Issue 10.2: 512 completions per policy update (32 questions x G 16);
  a rollout of 8,192 (512 questions) in 16 minibatches, one inner epoch."""
  c = rc.validate(_load([f'--config={ZERO}:model=qwen2.5-1.5b,paper']))
  rl = c.rl
  assert (rl.prompts_per_step, rl.group_size, rl.minibatches, rl.num_iterations) == (512, 16, 16, 1)
  assert rl.prompts_per_step * rl.group_size == 8192
  assert rl.prompts_per_step // rl.minibatches * rl.group_size == 512  # per update
  assert (c.optim.lr, rl.beta, rl.kl_estimator, rl.temperature) == (3e-6, 0.001, 'k3', 1.0)
  assert rl.max_new_tokens == 32768
  assert rl.reference_reset_every * rl.minibatches == 400  # policy updates
  assert (c.eval.temperature, c.eval.top_p, c.eval.k) == (0.6, 0.95, 16)


def test_prompt_and_completion_must_fit_the_models_positions(tmp_path):
  """Issue 12.7: Qwen2.5-Math-1.5B has 4,096 positions; the paper preset asks
  for 512 + 32,768."""
  with pytest.raises(rc.ConfigError, match=r'config.rl.max_new_tokens: rl.max_prompt_len \(512\) '
                     r'\+ rl.max_new_tokens \(32768\) = 33280 exceeds the model.s '
                     r"max_position_embeddings \(4096, preset 'qwen2.5-math-1.5b'\)"):
    rc.validate(_load([f'--config={ZERO}:model=qwen2.5-math-1.5b,paper']))
  ckpt = tmp_path / 'ckpt'
  ckpt.mkdir()
  (ckpt / 'config.json').write_text('{"max_position_embeddings": 1024}')
  with pytest.raises(rc.ConfigError, match='= 33280 exceeds .*1024, .*config.json'):
    rc.validate(_load([f'--config={ZERO}:model=qwen2.5-1.5b,ckpt={ckpt},paper']))
  rc.validate(_load([f'--config={ZERO}:model=qwen2.5-math-1.5b,paper',
                     '--config.rl.max_new_tokens=3584']))  # 512 + 3,584 = 4,096 fits


@pytest.mark.parametrize('key,value', [
    ('rewards.accuracy', float('nan')), ('rewards.format', float('inf')),
    ('optim.lr', float('inf')), ('rl.temperature', float('inf')), ('optim.b2', 1.5),
    ('optim.b1', -0.1), ('optim.eps', 0.0), ('rl.beta', float('nan')), ('workdir', ''),
    ('data_dir', ' '), ('rl.overlong_weight', float('nan')), ('reward_timeout_s', float('inf')),
    ('eval.temperature', float('nan')), ('task', 'gsm8k'),
    ('rl.epsilon_high', float('inf')), ('rl.dual_clip', float('inf')),
    ('model.mlp_chunk', -1), ('model.attention', 'flash'),
])
def test_validation_rejects_non_finite_and_out_of_range(key, value):
  """Issue 10.7: these passed validation (b2 1.5 and temperature inf ran to exit 0)."""
  c = rc.base_config()
  node = c
  *parents, leaf = key.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(rc.ConfigError, match=f'config.{key}') as e:
    rc.validate(c)
  assert e.value.key == key


def test_cudnn_attention_needs_a_16_bit_dtype():
  """cuDNN's fused attention takes fp16/bf16 only: an f32 model would fail
  at its first compile on the GPU; the config names the key before."""
  c = rc.base_config()
  c.model.attention = 'cudnn'
  with pytest.raises(rc.ConfigError, match="config.model.attention.*fp16/bf16") as e:
    rc.validate(c)
  assert e.value.key == 'model.attention'
  c.model.dtype = 'bfloat16'
  rc.validate(c)
  c.model.attention, c.model.dtype = 'triton', 'float32'
  rc.validate(c)
  # The evaluation command (configs/eval.py) refuses it too.
  from conftest import config_file
  from r1jax import eval_command
  e = config_file('eval', 'bench=arithmetic::')
  e.model.attention = 'cudnn'
  with pytest.raises(rc.ConfigError, match='config.model.attention') as err:
    eval_command.validate(e)
  assert err.value.key == 'model.attention'


@pytest.mark.parametrize('recipe', ['zero', 'sft'])
def test_every_field_has_a_check(recipe):
  """Every leaf of the default recipes (with the base section) is validated."""
  from conftest import config_file
  c = config_file(recipe, None)

  def leaves(node, prefix=''):
    for k, v in node.items():
      if isinstance(v, (dict, rc.ConfigDict)) and k not in ('rewards', 'reward_fns'):
        yield from leaves(v, f'{prefix}{k}.')
      else:
        yield f'{prefix}{k}'
  missing = [k for k in leaves(c) if k not in rc.CHECKED_KEYS
             and k not in ('rewards', 'reward_fns')]  # checked by name in validate
  assert not missing


def _parse_fails(*args) -> str:
  """The message of the SystemExit that rc.parse_flags ends `prog *args` with."""
  from absl import flags
  from r1jax import launch  # noqa: F401  (defines --config)
  argv = ['prog', *args]
  saved, sys.argv = sys.argv, argv
  try:
    with pytest.raises(SystemExit) as e:
      rc.parse_flags(argv)
  finally:
    sys.argv = saved
    flags.FLAGS.unparse_flags()
  return str(e.value)


def test_unknown_override_names_the_key():
  """`--config.rewards.foo=1` gave a bare AttributeError: "'foo'"."""
  assert 'config.rewards.foo: no such key' in _parse_fails(f'--config={ZERO}',
                                                           '--config.rewards.foo=1')


def test_a_near_miss_key_is_named_with_the_suggestion():
  """ml_collections' KeyError for a near miss carries a second line (its
  suggestion): the message names the key and keeps the hint, unescaped."""
  msg = _parse_fails(f'--config={ZERO}', '--config.model.attention_block=8')
  assert msg.startswith('FATAL: config.model.attention_block: no such key'), msg
  assert 'Did you mean "attention"' in msg and '\\' not in msg, msg


@pytest.mark.parametrize('task,rewards,bad', [
    ('countdown', {'exact_match': 1.0, 'format': 1.0}, 'rewards.exact_match'),
    ('countdown', {'accuracy': 1.0}, 'rewards.accuracy'),
    ('arithmetic', {'countdown': 1.0}, 'rewards.countdown'),
    ('arithmetic', {'accuracy': 1.0, 'exact_match': 1.0}, 'rewards'),
])
def test_task_decides_its_verifier(task, rewards, bad):
  """Issue 10.5: countdown with accuracy/exact_match scored the bare target."""
  c = rc.base_config()
  c.task, c.rewards = task, rewards
  with pytest.raises(rc.ConfigError, match=f'config.{bad}'):
    rc.validate(c)
  c.rewards = {'countdown': 1.0, 'format': 1.0} if task == 'countdown' else {'exact_match': 1.0}
  rc.validate(c)


def test_your_own_reward_by_module_and_function():
  """Issue 12.6: a reward of the user's, named 'package.module:function'."""
  c = rc.base_config()
  c.reward_fns = {'brevity': 'my_rewards:brevity'}
  c.rewards = {'accuracy': 1.0, 'brevity': 0.5}
  rc.validate(c)
  for spec, match in (('no_such_module:f', "cannot import 'no_such_module'"),
                      ('my_rewards:nothing', "has no 'nothing'"),
                      ('my_rewards', "expected 'package.module:function'")):
    c.reward_fns = {'brevity': spec}
    with pytest.raises(rc.ConfigError, match=f'config.reward_fns.brevity: .*{match}'):
      rc.validate(c)
  c.reward_fns = {}
  with pytest.raises(rc.ConfigError, match='config.rewards.brevity: unknown reward'):
    rc.validate(c)


def test_everything_a_run_writes_is_under_its_workdir():
  """Issue 12.2: --config.workdir=X moved the run, but the TFDS data and the
  base still went to ./workdir/ under the current directory."""
  from conftest import zero_config
  from r1jax import base
  c = zero_config(None)
  c.workdir = '/big/disk/run'
  assert rc.data_dir(c) == '/big/disk/run/tfds'
  assert rc.model_ckpt(c) == base.SHIPPED  # the shipped base: nothing to build
  assert rc.base_to_build(c) is None
  c.base.rebuild = True
  built = rc.base_to_build(c)
  assert (built.dir, built.data_dir) == ('/big/disk/run/base', '/big/disk/run/tfds')
  assert rc.model_ckpt(c) == '/big/disk/run/base'
  c.data_dir = '/shared/tfds'  # an explicit data_dir is kept, for the base too
  assert rc.base_to_build(c).data_dir == '/shared/tfds'
  c.model.ckpt = '/data/Qwen2.5-1.5B'  # a checkpoint of one's own: no base
  assert rc.base_to_build(c) is None and rc.model_ckpt(c) == '/data/Qwen2.5-1.5B'


@pytest.mark.parametrize('recipe,expected', [
    ('dapo', dict(epsilon_low=0.2, epsilon_high=0.28, loss_agg='token_mean', beta=0.0,
                  dynamic_sampling_attempts=3, overlong_max_len=32, overlong_cache_len=6)),
    ('drgrpo', dict(advantage='drgrpo', loss_agg='constant', beta=0.0)),
    ('gspo', dict(ratio='sequence', epsilon_low=3e-4, epsilon_high=4e-4, loss_agg='seq_mean',
                  beta=0.0, minibatches=4)),
])
def test_recipes_by_name(recipe, expected):
  """Issue 12.4: configs/zero.py:dapo, :drgrpo, :gspo with the papers' values."""
  from conftest import zero_config
  c = rc.validate(zero_config(recipe))
  assert {k: c.rl[k] for k in expected} == expected
  # At R1-Zero's scale the lengths follow the schedule (DAPO: 4,096 of 20,480).
  paper = rc.validate(zero_config(f'model=qwen2.5-1.5b,paper,{recipe}'))
  assert paper.rl.minibatches == 16
  if recipe == 'dapo':
    assert (paper.rl.overlong_max_len, paper.rl.overlong_cache_len) == (32768, 6553)
  with pytest.raises(ValueError, match='one recipe at a time'):
    zero_config('dapo,gspo')


def test_object_store_paths_that_cannot_work_are_refused():
  """A gs:// model.ckpt (weights and tokenizer are read locally), and a base
  rebuilt into a gs:// workdir (it was built into ./gs:/… in the checkout)."""
  from conftest import zero_config
  c = zero_config(None)
  c.model.ckpt = 'gs://bucket/run'
  with pytest.raises(rc.ConfigError, match='config.model.ckpt: .*local disk'):
    rc.validate(c)
  c = zero_config(None)
  c.workdir, c.base.rebuild = 'gs://bucket/run', True
  with pytest.raises(rc.ConfigError, match='config.base.rebuild: .*local disk'):
    rc.validate(c)


@pytest.mark.parametrize('args,message', [
    ([f'--config={ZERO}:paper=maybe'], f"FATAL: --config={ZERO}:paper=maybe: config arg: "
                                       "paper='maybe' is not a boolean"),
    (['--config=/nonexistent/zero.py'], 'FATAL: --config=/nonexistent/zero.py: cannot load the '
                                        'config file: [Errno 2] No such file or directory'),
    ([f'--config={ZERO}', 'config.steps=5'], "FATAL: unexpected argument 'config.steps=5'"),
])
def test_config_file_arguments_and_stray_words_are_one_fatal_line(args, message):
  """A bad `:arg` (a traceback through ml_collections), a missing file (a
  traceback when first used) and an argument without dashes (ignored: the
  run went on with the defaults) each end the command with one line."""
  msg = _parse_fails(*args)
  assert msg.startswith(message) and 'Traceback' not in msg, msg


def test_a_bug_inside_a_config_file_keeps_its_traceback(tmp_path):
  """Only a user's override is a 'no such key' line: an AttributeError or a
  ValueError raised by the config file's own code propagates (its file and
  line are the message)."""
  from absl import flags
  from r1jax import launch  # noqa: F401  (defines --config)
  for body, error in [('  return rc.get_zero_typo()', AttributeError),
                      ('  raise ValueError', ValueError)]:
    path = tmp_path / f'{error.__name__}.py'
    path.write_text(f'from r1jax import config as rc\n\n\ndef get_config(arg=None):\n{body}\n')
    argv = ['prog', f'--config={path}']
    saved, sys.argv = sys.argv, argv
    try:
      with pytest.raises((error, flags.Error)) as e:  # absl wraps a ValueError
        rc.parse_flags(argv)
    finally:
      sys.argv = saved
      flags.FLAGS.unparse_flags()
    # The config file's own line is in the traceback the user sees.
    assert isinstance(e.value, error) or error.__name__ in str(e.value), e.value
    assert f'File "{path}", line 5' in ''.join(traceback.format_exception(e.value)), e.value


@pytest.mark.parametrize('key,value,message', [
    ('lr', -1.0, 'lr: must be a finite number > 0'),  # trained 1.7 min with the wrong sign
    ('dir', '', 'dir: must be set'),
    ('task', 'countdown', "task: only 'arithmetic'"),
    ('arch', 'gpt', "arch: must be 'qwen2' or 'llama'"),
    ('vocab_size', 96, 'vocab_size: 96 leaves no room for the corpus: 97 pieces'),
    ('model.num_heads', 3, 'model.num_heads: 3 is not a multiple of model.num_kv_heads (2)'),
])
def test_a_bad_base_build_setting_is_named_before_any_data_or_training(key, value, message,
                                                                        tmp_path):
  """The tiny base's build (python -m r1jax.base, or a run's base.rebuild)
  checks its settings before it prepares data: a negative learning rate
  trained for minutes, the others were tracebacks from sentencepiece, the
  model or the build."""
  from conftest import config_file, zero_config
  from r1jax import base
  c = config_file('base_tiny', None)
  c.dir, c.data_dir = str(tmp_path / 'base'), str(tmp_path / 'tfds')
  c.update_from_flattened_dict({key: value})
  with pytest.raises(rc.ConfigError, match=f'^config.{re.escape(message)}'):
    base.build(c, section='')
  assert not (tmp_path / 'base').exists() and not (tmp_path / 'tfds').exists()
  run = zero_config(None)
  run.base.rebuild = True
  run.base.update_from_flattened_dict({key: value})
  if key != 'dir':  # a run sets <workdir>/base
    with pytest.raises(rc.ConfigError, match=f'^config.base.{re.escape(message)}'):
      rc.validate(run)


def test_the_base_command_ends_a_bad_setting_with_one_line(tmp_path):
  """Also what sentencepiece alone knows: the corpus's characters."""
  done = subprocess.run(
      [sys.executable, '-m', 'r1jax.base', f'--config={ROOT}/configs/base_tiny.py',
       f'--config.dir={tmp_path}/b', f'--config.data_dir={tmp_path}/tfds',
       '--config.vocab_size=120'], capture_output=True, text=True, cwd=tmp_path, timeout=300)
  assert done.returncode == 1 and 'Traceback' not in done.stderr, done.stderr
  assert done.stderr.strip().splitlines()[-1].startswith(
      'FATAL: config.vocab_size: 120 is smaller than the 140 pieces'), done.stderr
  assert not (tmp_path / 'b' / 'model.safetensors').exists()

"""The SFT trainer: records to tokens, host-side best-fit packing (the RL
packing's assignment and layout), the packed loss equal to the per-sequence
one, grad accumulation and sharding that do not change the update, and the
launcher's SFT run end to end with exact resume."""
import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1jax import base, config as rc, models, packing, sft, sharding as shd
from r1jax import tokenizer as tk, train_step as ts
from conftest import FIXTURES, config_file
from r1jax.data import benchmarks as bm


def _tok():
  return tk.load_tokenizer(base.SHIPPED)


def test_records_become_prompt_and_completion_in_each_template():
  assert sft.record_text({'prompt': 'P', 'completion': 'C'}, 'none') == ('P', 'C')
  prompt, completion = sft.record_text({'question': '3+4', 'completion': 'C'}, 'r1_zero')
  assert '3+4' in prompt and prompt.endswith('Assistant:') and completion == 'C'
  chat = {'template': '{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}'
                      '{% if add_generation_prompt %}<assistant>{% endif %}',
          'bos_token': '', 'eos_token': ''}
  msgs = {'messages': [{'role': 'user', 'content': 'Q'}, {'role': 'assistant', 'content': 'A'}]}
  assert sft.record_text(msgs, 'chat', chat) == ('<user>Q<assistant>', 'A')
  with pytest.raises(ValueError, match='roles'):
    sft.record_text({'messages': [{'role': 'assistant', 'content': 'A'}]}, 'none')
  with pytest.raises(ValueError, match='completion'):
    sft.record_text({'prompt': 'P'}, 'none')
  with pytest.raises(ValueError, match='chat template'):
    sft.record_text({'prompt': 'P', 'completion': 'C'}, 'chat', None)


def test_qwen3_records_are_laid_out_as_its_template_lays_them_out():
  """With Qwen3's template (tests/fixtures/qwen3_chat, rendered by
  transformers) prompt + completion + the end-of-turn token is the whole
  conversation: reasoning_content, an inline think block, or none (Qwen3
  then writes an empty think block)."""
  d = os.path.join(FIXTURES, 'qwen3_chat')
  chat = bm.chat_template(d)
  for case in json.load(open(os.path.join(d, 'expected.json')))['cases']:
    prompt, completion = sft.record_text({'messages': case['messages']}, 'chat', chat)
    assert prompt == case['prompt']
    assert prompt + completion + '<|im_end|>\n' == case['conversation']
    assert completion.startswith('<think>\n') and '\n</think>\n\n' in completion
  # A template that drops reasoning from the assistant's turn: R1's layout,
  # without repeating the think opening its generation prompt ends with.
  r1 = {'template': "{% for m in messages %}{% if m.role == 'user' %}<U>{{ m.content }}"
                    "{% else %}<A>{{ m.content.split('</think>')[-1] }}{% endif %}{% endfor %}"
                    "{% if add_generation_prompt %}<A><think>\n{% endif %}",
        'bos_token': '', 'eos_token': ''}
  msgs = [{'role': 'user', 'content': 'Q'},
          {'role': 'assistant', 'content': 'A', 'reasoning_content': 'R'}]
  assert sft.record_text({'messages': msgs}, 'chat', r1) == ('<U>Q<A><think>\n',
                                                             'R\n</think>\n\nA')
  with pytest.raises(ValueError, match='reasoning_content'):
    sft.record_text({'messages': [msgs[0], {**msgs[1], 'reasoning_content': 3}]}, 'chat', r1)


def test_encode_puts_the_loss_on_the_completion_and_its_eos_and_names_a_long_one():
  tok = _tok()
  enc = sft.encode(tok, [('User: 3+4. Assistant:', ' <answer>7</answer>')], 64)
  p, c = tok.encode('User: 3+4. Assistant:'), tok.encode(' <answer>7</answer>')
  np.testing.assert_array_equal(enc.seqs[0], p + c + [tok.eos_id])
  np.testing.assert_array_equal(enc.loss[0], [False] * len(p) + [True] * (len(c) + 1))
  long = [('a' * 10, 'b' * 200), ('x', 'y')]
  with pytest.raises(ValueError, match='record 0 has .* tokens > sft.max_len=32'):
    sft.encode(tok, long, 32, where=lambda i: f'record {i}')
  dropped = sft.encode(tok, long, 32, too_long='drop')
  assert dropped.dropped == 1 and len(dropped.seqs) == 1


def test_host_best_fit_is_the_device_best_fit():
  r = np.random.default_rng(0)
  for n, L in ((40, 16), (200, 64), (7, 7)):
    lengths = r.integers(1, L + 1, n)
    lengths[:2] = (L, 1)
    row, offset, used = sft.best_fit(lengths, L)
    jrow, joffset, jused = packing.best_fit(jnp.asarray(lengths, jnp.int32), L, n)
    np.testing.assert_array_equal(row, jrow)
    np.testing.assert_array_equal(offset, joffset)
    assert used == int(jused)


def _encoded(seed=0, n=13, vocab=64):
  r = np.random.default_rng(seed)
  seqs, loss = [], []
  for _ in range(n):
    p, c = int(r.integers(1, 8)), int(r.integers(1, 12))
    seqs.append(r.integers(3, vocab, p + c).astype(np.int32))
    loss.append(np.arange(p + c) >= p)
  return sft.Encoded(seqs, loss, 0)


def test_the_packed_loss_and_gradient_equal_the_per_sequence_ones():
  cfg = dataclasses.replace(models.get_preset('tiny', vocab_size=64), attention='blockwise',
                            attention_block=8)
  model = models.create(cfg, seed=0)
  graphdef, params = nnx.split(model)
  enc = _encoded()
  rows = sft.pack_rows(enc, 24)
  assert len(rows.tokens) < len(enc.seqs)  # sequences share rows
  np.testing.assert_array_equal(np.bincount(rows.segments.ravel())[1:],
                                [len(s) - 1 for s in enc.seqs])

  def packed(params):
    s, n = sft.loss_sum(nnx.merge(graphdef, params), rows._asdict(), impl='chunked')
    return s / n

  def one_by_one(params):
    m = nnx.merge(graphdef, params)
    total = count = 0.0
    for seq, loss in zip(enc.seqs, enc.loss):
      t = jnp.asarray(seq)[None]
      w = jnp.asarray(loss[1:], jnp.float32)[None]
      h, _ = m.hidden(t[:, :-1])
      logp = jax.nn.log_softmax(m.logits_from_hidden(h), -1)
      logp = jnp.take_along_axis(logp, t[:, 1:, None], -1)[..., 0]
      total, count = total - (logp * w).sum(), count + w.sum()
    return total / count

  l1, g1 = jax.value_and_grad(one_by_one)(params)
  l2, g2 = jax.value_and_grad(packed)(params)
  np.testing.assert_allclose(l2, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(b, a, atol=1e-6)


def _run_steps(mesh, grad_accum, steps=2):
  cfg = dataclasses.replace(models.get_preset('tiny', vocab_size=64), attention='blockwise',
                            attention_block=8)
  model = models.create(cfg, seed=0, mesh=mesh)
  rows = sft.pack_rows(_encoded(n=40), 16)
  rows = sft.PackedRows(*(x[:8] for x in rows))
  # SGD: Adam's normalisation would magnify the rounding of near-zero gradients.
  optimizer = optax.sgd(0.5)
  params = nnx.state(model, nnx.Param)
  state = sft.SFTState(jnp.zeros((), jnp.int32), params, jax.jit(optimizer.init)(params))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.tree.map(lambda x: x if isinstance(x.sharding, jax.sharding.NamedSharding)
                       else jax.device_put(x, rep), state)
  step = sft.make_train_step(nnx.graphdef(model), optimizer, grad_accum, mesh,
                             ts.shardings_of(state))
  losses = []
  for _ in range(steps):
    state, m = step(state, rows._asdict())
    losses.append(float(m['sft/loss']))
    assert int(m['loss_tokens']) == int(rows.weights.sum()) and not int(m['nonfinite'])
  return jax.device_get(state.params), losses


def test_grad_accumulation_and_a_mesh_do_not_change_the_update():
  one = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  ref, ref_losses = _run_steps(one, 1)
  assert ref_losses[1] < ref_losses[0]
  for mesh, accum in ((one, 4), (shd.make_mesh(2, 2, 2), 2)):
    got, losses = _run_steps(mesh, accum)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
      np.testing.assert_allclose(b, a, atol=2e-6)


def test_a_lora_step_trains_only_the_adapters_and_dropout_draws_from_the_step():
  """LoRA in SFT: the first loss is the base's (B = 0), the base (a step
  argument) is untouched, the adapters move; lora_dropout changes the update
  and is the same for the same (seed, step)."""
  from r1jax.models import lora  # pylint: disable=g-import-not-at-top
  one = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  cfg = dataclasses.replace(models.get_preset('tiny', vocab_size=64), attention='blockwise',
                            attention_block=8)
  model = lora.add(models.create(cfg, seed=0), 4, 8.0, ('q', 'v', 'down'))
  graphdef, adapters, frozen = lora.split(model)
  frozen_before = jax.tree.map(np.array, frozen)
  rows = sft.pack_rows(_encoded(n=40), 16)
  rows = sft.PackedRows(*(x[:8] for x in rows))._asdict()
  optimizer = optax.adam(1e-2)
  _, base_losses = _run_steps(one, 1, steps=1)

  def run(dropout, seed=0):
    fresh = jax.tree.map(jnp.copy, adapters)  # the step donates its state
    state = sft.SFTState(jnp.zeros((), jnp.int32), fresh, optimizer.init(fresh))
    step = sft.make_train_step(graphdef, optimizer, 1, one, None, lora=True,
                               lora_dropout=dropout, seed=seed)
    state, m = step(state, rows, frozen)
    return jax.device_get(state.params), float(m['sft/loss'])

  plain, loss = run(0.0)
  np.testing.assert_allclose(loss, base_losses[0], rtol=1e-6)  # the base's function
  moved = {jax.tree_util.keystr(k): np.abs(a - b).max() for (k, a), b in zip(
      jax.tree_util.tree_leaves_with_path(plain), jax.tree.leaves(adapters))}
  assert all((v > 0) == ('_lora_b' in k) for k, v in moved.items()), moved  # B first (A·0)
  dropped, loss_d = run(0.5)
  again, _ = run(0.5)
  other, _ = run(0.5, seed=1)
  assert loss_d == loss  # B = 0: dropout changes the gradient, not the first loss
  diff = lambda x, y: max(np.abs(a - b).max() for a, b in zip(  # noqa: E731
      jax.tree.leaves(x), jax.tree.leaves(y)))
  assert diff(dropped, plain) > 0 and diff(dropped, again) == 0 and diff(dropped, other) > 0
  # The frozen base is an argument the steps neither donate (a donated array
  # could not be read now) nor change.
  jax.tree.map(np.testing.assert_array_equal, frozen_before, jax.tree.map(np.asarray, frozen))


def test_cosine_schedule_decays_to_the_final_ratio():
  optim = rc.base_config().optim
  optim.update(lr=1.0, schedule='cosine', warmup_steps=2, final_lr_ratio=0.1, grad_clip=0.0,
               b1=0.0, b2=0.0, eps=1e-30)
  tx = ts.make_optimizer(optim, 10)
  p = {'w': jnp.zeros(())}
  s = tx.init(p)
  sizes = []
  for _ in range(11):
    u, s = tx.update({'w': jnp.ones(())}, s, p)
    sizes.append(-float(u['w']))  # Adam with b1 = b2 = 0: the step is the lr
  np.testing.assert_allclose(sizes[:3], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(sizes[10], 0.1, atol=1e-6)
  assert all(a >= b for a, b in zip(sizes[2:], sizes[3:]))


def _sft_config(workdir, tfds_dir, **kw):
  c = config_file('sft', 'smoke')
  c.workdir = str(workdir)
  c.data_dir = tfds_dir
  c.update(kw)
  return c


def test_config_errors_name_the_key(tmp_path, tfds_dir):
  from r1jax import launch  # pylint: disable=g-import-not-at-top
  c = _sft_config(tmp_path / 'a', tfds_dir)
  c.sft.grad_accum = 3
  with pytest.raises(rc.ConfigError, match='sft.batch_size'):
    launch.run(c)
  c = _sft_config(tmp_path / 'b', tfds_dir)
  c.sft.data = str(tmp_path / 'missing.jsonl')
  with pytest.raises(rc.ConfigError, match='sft.data'):
    launch.run(c)
  c = _sft_config(tmp_path / 'c', tfds_dir)
  c.sft.template = 'alpaca'
  with pytest.raises(rc.ConfigError, match='sft.template'):
    launch.run(c)


def test_a_lora_sft_run_exports_the_merged_model_and_the_adapters(tmp_path, tfds_dir):
  """sft with lora.rank (and dropout) on the shipped base: checkpoints hold
  the adapters, the export is the merged model plus adapter/ in PEFT's
  layout, and the trained policy differs from the base."""
  from r1jax import export, launch  # pylint: disable=g-import-not-at-top
  from r1jax.models import lora  # pylint: disable=g-import-not-at-top
  c = _sft_config(tmp_path / 'run', tfds_dir, steps=2)
  c.optim.update(lr=1e-2, warmup_steps=0)
  c.lora.update(rank=4, alpha=8.0, dropout=0.1)
  summary = launch.run(c)
  assert summary['steps'] == 2
  spec = json.load(open(tmp_path / 'run' / 'model' / 'lora.json'))
  assert spec['rank'] == 4 and spec['base'] == rc.model_ckpt(c)
  hf = tmp_path / 'run' / 'hf'
  assert (hf / 'adapter' / 'adapter_config.json').exists()
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 200, (2, 12)), jnp.int32)
  trained = export.load(str(tmp_path / 'run'))
  want = np.asarray(trained(tokens))
  np.testing.assert_allclose(np.asarray(models.load_hf(str(hf))(tokens)), want, atol=1e-4)
  peft = lora.load_peft(models.load_hf(spec['base']), str(hf / 'adapter'))
  np.testing.assert_allclose(np.asarray(peft(tokens)), want, atol=1e-5)
  assert np.abs(want - np.asarray(models.load_hf(spec['base'])(tokens))).max() > 1e-4
  c2 = config_file('zero', 'smoke')
  c2.lora.update(rank=4, dropout=0.1)
  c2.rl.num_iterations = 2
  with pytest.raises(rc.ConfigError, match='lora.dropout'):  # RL: on-policy only
    rc.validate(c2)


def test_an_sft_run_on_a_records_file_resumes_exactly_and_exports(tmp_path, tfds_dir, capsys):
  from r1jax import launch  # pylint: disable=g-import-not-at-top
  data = tmp_path / 'traces.jsonl'
  r = np.random.default_rng(0)
  with open(data, 'w') as f:
    for _ in range(48):
      a, b = (int(x) for x in r.integers(1, 40, 2))
      f.write(json.dumps({'question': f'{a}+{b}',
                          'completion': f' <think>{a}+{b}={a + b}</think> <answer>{a + b}</answer>'}
                         ) + '\n')
  kw = dict(steps=4)
  whole = _sft_config(tmp_path / 'whole', tfds_dir, **kw)
  whole.sft.update(data=str(data), template='r1_zero', held_out=8, max_len=128, batch_size=8)
  summary = launch.run(whole)
  assert summary['steps'] == 4 and summary['eval/loss'] < summary['eval/loss at step 0']
  hf = tmp_path / 'whole' / 'hf'
  assert (hf / 'config.json').exists() and (hf / 'model.safetensors').exists()
  exported = models.load_hf(str(hf))
  rows = [json.loads(x) for x in open(tmp_path / 'whole' / 'metrics.jsonl')]
  assert [x['step'] for x in rows if 'sft/loss' in x] == [1, 2, 3, 4]

  # The same run stopped after step 2 (its later checkpoints and export lost)
  # and rerun: it resumes from 2 and ends with the same weights.
  cut = _sft_config(tmp_path / 'cut', tfds_dir, **kw)
  cut.sft.update(whole.sft.to_dict())
  launch.run(cut)
  shutil.rmtree(tmp_path / 'cut' / 'checkpoints' / '4')
  shutil.rmtree(tmp_path / 'cut' / 'hf')
  capsys.readouterr()
  again = launch.run(cut)
  assert again['steps'] == 4
  # Restored, not retrained: a fresh start would give the same weights too.
  assert f"resumed from {tmp_path / 'cut' / 'checkpoints'}/2" in capsys.readouterr().out
  assert not list((tmp_path / 'cut').glob('metrics.jsonl.*.old'))  # a fresh start's move
  resumed = models.load_hf(str(tmp_path / 'cut' / 'hf'))
  for a, b in zip(jax.tree.leaves(nnx.state(exported)), jax.tree.leaves(nnx.state(resumed))):
    np.testing.assert_array_equal(a, b)
  cut_rows = [json.loads(x) for x in open(tmp_path / 'cut' / 'metrics.jsonl')]
  assert [x['step'] for x in cut_rows if 'sft/loss' in x] == [1, 2, 3, 4]
  assert [x['sft/loss'] for x in cut_rows if 'sft/loss' in x] == [
      x['sft/loss'] for x in rows if 'sft/loss' in x]
  # A finished run rerun does nothing.
  assert launch.run(cut)['eval/loss'] == again['eval/loss']
  assert 'holds a finished run (4 of 4 steps); nothing to do' in capsys.readouterr().out

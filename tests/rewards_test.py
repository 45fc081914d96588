"""Rule-based rewards on hand-written completions, and the scorer's limits."""
import os
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hostile
from r1jax import rewards

R1 = ' <think> 3*4=12, 12+5=17 </think> <answer> {} </answer>'
GOLD17 = {'answer': '17'}


def acc(completion, gold):
  return rewards.accuracy('', completion, {'answer': gold})


def test_extract_answer():
  assert rewards.extract_answer(R1.format(17)) == '17'
  assert rewards.extract_answer('<answer>1</answer> so <answer> 2 </answer>') == '2'
  assert rewards.extract_answer('x = \\boxed{\\frac{1}{2}}.') == '\\frac{1}{2}'
  assert rewards.extract_answer('\\boxed{1} then \\boxed{2}') == '2'
  assert rewards.extract_answer('<answer> \\boxed{17} </answer>') == '17'
  assert rewards.extract_answer('<answer></answer>') == ''
  assert rewards.extract_answer('no answer here') is None
  # Nested and malformed: the innermost closed pair, or nothing; never a crash.
  assert rewards.extract_answer('<answer><answer>5</answer></answer>') == '5'
  assert rewards.extract_answer('<answer>3</answer> <answer>4') == '3'
  assert rewards.extract_answer('<answer>4 </answer') is None
  assert rewards.extract_answer('\\boxed{1} \\boxed{2') == '1'
  assert rewards.extract_answer('\\boxed{') is None


def test_accuracy():
  assert acc(R1.format(17), '17') == 1.0
  assert acc('<answer> 17 </answer>', ' 17 ') == 1.0
  assert acc('<answer>0.5</answer>', '1/2') == 1.0
  assert acc('<answer>\\frac{1}{2}</answer>', '0.5') == 1.0
  assert acc('<answer>$\\frac12$</answer>', '\\frac{1}{2}') == 1.0
  assert acc('<answer>0.75</answer>', '\\frac{3}{4}') == 1.0
  assert acc('<answer>1 + x^2</answer>', 'x^2+1') == 1.0
  assert acc('<answer>1,234</answer>', '1234') == 1.0
  assert acc(R1.format(18), '17') == 0.0
  assert acc('<answer>-17</answer>', '17') == 0.0
  # Raw-text parsing would read 'x^2 + 1' as its last number, 1.
  assert acc('<answer>x^2 + 1</answer>', '1') == 0.0
  assert acc('<think>so \\boxed{17}</think>', '17') == 0.0  # inside the thinking
  assert acc('<think>so</think> \\boxed{17}', '17') == 1.0
  assert acc('<think>I am not sure</think>', '17') == 0.0
  assert acc('<answer></answer>', '17') == 0.0
  assert acc('<answer>17</answer> wait, <answer>18</answer>', '17') == 0.0
  assert acc('<answer>18</answer> wait, <answer>17</answer>', '17') == 1.0
  # Malformed: scored, never a crash; the innermost closed pair counts.
  assert acc('<answer><answer>17</answer>', '17') == 1.0
  for bad in ['</answer>17<answer>', '\\boxed{\\frac{1}{', '<answer>\\frac{</answer>',
              '<answer>}}}{{</answer>']:
    assert acc(bad, '17') == 0.0, bad


def test_accuracy_off_main_thread():
  # math-verify's default SIGALRM timeouts raise ValueError off the main thread.
  out = []
  t = threading.Thread(target=lambda: out.append(acc('<answer>0.5</answer>', '1/2')))
  t.start()
  t.join()
  assert out == [1.0]


def test_exact_match():
  em = lambda c, g='17': rewards.exact_match('', c, {'answer': g})  # noqa: E731
  assert em(R1.format(17)) == 1.0
  assert em('<answer> +17 </answer>') == 1.0
  assert em('<answer>17.0</answer>') == 1.0
  assert em('<answer>1,234</answer>', '1234') == 1.0
  assert em('<answer>-3</answer>', '-3') == 1.0
  assert em('<answer>0.5</answer>', '0.5') == 1.0
  assert em('<answer>18</answer>') == 0.0
  assert em('<answer>17 apples</answer>') == 0.0
  assert em('<answer>12,34</answer>', '1234') == 0.0
  assert em('<answer>1/2</answer>', '0.5') == 0.0  # no sympy, no fractions
  assert em('no answer') == 0.0
  with pytest.raises(ValueError, match='numeric gold'):
    em('<answer>x</answer>', 'x')


def test_format_reward():
  fmt = lambda c, prompt='Assistant:': rewards.format_reward(prompt, c, {})  # noqa: E731
  assert fmt(R1.format(17)) == 1.0
  assert fmt('<think>a</think><answer>b</answer>\n') == 1.0
  assert fmt('<think></think> <answer>b</answer>') == 1.0
  assert fmt(' <answer> 17 </answer>') == 0.0  # missing think
  assert fmt(' <think> 17 </think>') == 0.0  # missing answer
  assert fmt('<answer>1</answer> <think>a</think>') == 0.0  # answer before think
  assert fmt('<think>a</think> <answer>1</answer> <answer>2</answer>') == 0.0
  assert fmt('<think>a <think>b</think> c</think> <answer>1</answer>') == 0.0
  assert fmt('<think>a</think> <answer>x <answer>1</answer></answer>') == 0.0
  assert fmt('<think>a</think> <answer>1</answer> and more') == 0.0
  assert fmt('So: <think>a</think> <answer>1</answer>') == 0.0
  assert fmt('<think>a</think> between <answer>1</answer>') == 0.0
  assert fmt('<think>a</think> <answer>  </answer>') == 0.0
  # A template that opens <think> in the prompt.
  assert fmt(' a </think> <answer>1</answer>', prompt='Assistant: <think>') == 1.0


def test_language_consistency():
  lc = lambda c, lang='en': rewards.language_consistency(  # noqa: E731
      '', c, {'language': lang})
  # en words: we, add, numbers (3 on target); Han: 这, 两, 个 (3 off) -> 3/6.
  assert lc('<think>we add 这 两个 numbers</think> <answer>5</answer>') == 0.5
  # Same words for zh: 3 Han on target out of 6.
  assert lc('<think>we add 这 两个 numbers</think>', 'zh') == 0.5
  # Digits and symbols count for nothing; the answer block is not the CoT.
  assert lc('<think>3*4 = 12, so 12+5 = 17</think> <answer>十七</answer>') == 1.0
  # No think block: the whole completion. 'café' is not ASCII: 2 of 3.
  assert lc('un café noir') == pytest.approx(2 / 3)
  assert lc('<think>1+1=2</think>') == 1.0  # no words at all
  assert lc('<think>加法 is easy') == pytest.approx(2 / 4)  # unclosed think
  assert rewards.language_consistency('', 'hello', {}) == 1.0  # default 'en'
  with pytest.raises(ValueError, match='fr'):
    lc('bonjour', 'fr')


def test_overlong_penalty():
  lengths = np.array([0, 15, 16, 18, 20, 21, 100])
  want = [0, 0, -0.2, -0.6, -1.0, -1.0, -1.0]
  np.testing.assert_allclose(rewards.overlong_penalty(lengths, 20, 5), want, rtol=1e-6)
  jitted = jax.jit(rewards.overlong_penalty, static_argnums=(1, 2))
  np.testing.assert_allclose(jitted(jnp.asarray(lengths, jnp.int32), 20, 5), want, rtol=1e-6)
  np.testing.assert_allclose(rewards.overlong_penalty(lengths, 20, 0),
                             [0, 0, 0, 0, 0, -1, -1])
  with pytest.raises(ValueError, match='cache_len'):
    rewards.overlong_penalty(lengths, 20, 21)


def test_scorer_shapes_and_values():
  scorer = rewards.RewardScorer({'accuracy': 1.0, 'format': 0.5, 'language_consistency': 0.1})
  assert scorer.names == ('accuracy', 'format', 'language_consistency')
  np.testing.assert_allclose(scorer.weights, [1.0, 0.5, 0.1])
  assert scorer.weights.dtype == np.float32
  completions = [R1.format(17), '<answer>17</answer>', '<think>这 is</think> <answer>3</answer>']
  scores = scorer(['p'] * 3, completions, [GOLD17] * 3)
  assert scores.dtype == np.float32 and scores.shape == (3, 3)
  np.testing.assert_allclose(scores, [[1, 1, 1], [1, 0, 1], [0, 1, 0.5]])
  assert scorer.counters() == {'reward/errors': 0, 'reward/timeouts': 0, 'reward/rejected': 0,
                              'reward/unavailable': 0}
  assert scorer([], [], []).shape == (0, 3)
  with pytest.raises(ValueError, match='completions'):
    scorer(['p'], [], [])


def test_scorer_unknown_name():
  with pytest.raises(ValueError, match=r"'acc'.*accuracy"):
    rewards.RewardScorer({'acc': 1.0})


def test_a_users_reward_by_name_runs_like_the_builtins():
  """Issue 12.6: 'package.module:function' (config.reward_fns) is imported
  and scored in the workers, with the same time limit and counters."""
  extra = {'brevity': rewards.load_reward('my_rewards:brevity'),
           'slow': rewards.load_reward('hostile:slow')}
  scorer = rewards.RewardScorer({'brevity': 1.0, 'slow': 1.0}, timeout_s=0.5, workers=2,
                                extra=extra)
  scores = scorer(['p'] * 3, [' <answer> 7 </answer>', 'slow', 'word ' * 20], [{}] * 3)
  np.testing.assert_allclose(scores, [[1, 1], [1, 0], [0, 1]])
  assert scorer.counters()['reward/timeouts'] == 1  # the limit applies to it too
  scorer.close()


def test_scorer_errors_and_timeouts():
  scorer = rewards.RewardScorer({'format': 1.0, 'boom': 1.0, 'slow': 1.0}, timeout_s=0.5,
                                workers=2, extra={'boom': hostile.boom, 'slow': hostile.slow})
  t0 = time.monotonic()
  completions = ['slow', 'fast', 'slow', R1.format(1)]
  scores = scorer([''] * 4, completions, [{}] * 4)
  assert time.monotonic() - t0 < 4.0
  # Both 'slow' calls were killed with their workers; the rest ran.
  np.testing.assert_allclose(scores, [[0, 0, 0], [0, 0, 1], [0, 0, 0], [1, 0, 1]])
  assert scorer.counters() == {'reward/errors': 4, 'reward/timeouts': 2, 'reward/rejected': 0,
                              'reward/unavailable': 0}
  assert scorer.pool.restarts == 2
  t0 = time.monotonic()
  scorer([''], [R1.format(1)], [{}])  # the replacements serve at once
  assert time.monotonic() - t0 < 1.0
  scorer.close()


# Inputs that made sympy (or a regex) run for minutes: each must score 0
# within the time limit + 1 s, be counted if it timed out, and leave the
# process able to exit (no runaway thread).
HOSTILE = [
    ('<answer>9^{9^{9}}</answer>', '17'),
    ('<answer>10^{10^{9}}</answer>', '17'),
    ('<answer>17</answer>', '9^{9^{9}}'),  # the gold itself
    ('<answer>' + '\\frac{' * 10_000 + '</answer>', '17'),
    ('<answer>(10^{10})!</answer>', '17'),
    ('<answer>2^{100000000}</answer>', '17'),
]


@pytest.mark.parametrize('completion,gold', HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_answers_score_zero_in_bounded_time(completion, gold):
  scorer = rewards.RewardScorer({'accuracy': 1.0, 'format': 1.0}, timeout_s=2.0, workers=1)
  t0 = time.monotonic()
  scores = scorer([''], [completion], [{'answer': gold}])
  assert time.monotonic() - t0 < 3.0
  assert scores[0, 0] == 0.0
  assert scorer.rejected + scorer.timeouts == 1  # counted
  scorer.close()


def test_sympy_hang_is_killed_and_counted():
  """A hang past the cheap guards (math-verify parsing a huge factorial
  directly) is killed at the limit and counted as a timeout."""
  scorer = rewards.RewardScorer({'hang': 1.0}, timeout_s=1.0, workers=1,
                                extra={'hang': hostile.sympy_hang})
  assert scorer([''], ['warm up'], [{}])[0, 0] == 0.0  # imports the module in the worker
  t0 = time.monotonic()
  scores = scorer([''], ['hang'], [{}])
  assert time.monotonic() - t0 < 2.0 and scores[0, 0] == 0.0
  assert scorer.timeouts == 1
  scorer.close()


def test_process_exits_after_a_timeout():
  """A thread-based limit leaked the runaway thread and the interpreter could
  not exit; with worker processes it exits at once."""
  code = ('import hostile\nfrom r1jax import rewards\n'
          's = rewards.RewardScorer({"hang": 1.0}, timeout_s=1.0, workers=1, '
          'extra={"hang": hostile.sympy_hang})\n'
          'print(s([""], ["hang"], [{}])[0, 0], s.timeouts)\n')
  t0 = time.monotonic()
  out = subprocess.run([sys.executable, '-c', code], cwd=os.path.dirname(__file__),
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ['0.0', '1']
  assert time.monotonic() - t0 < 30


def test_workers_do_not_import_the_main_module():
  """multiprocessing children import the parent's __main__; under `python -m
  r1jax.launch` that costs each worker seconds (jax, flax, TFDS)."""
  out = subprocess.run([sys.executable, '-m', 'main_probe'], cwd=os.path.dirname(__file__),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split()[-1] == '0.0'


def test_format_reward_and_extraction_stay_fast_on_many_tags():
  """A guard against quadratic (or worse) scans of hostile outputs: 32,000
  tags and 20,000 unclosed openers in under half a second (0.01 s here)."""
  text = '<think>a</think><answer>1</answer>' * 8000
  t0 = time.monotonic()
  assert rewards.format_reward('', text, {}) == 0.0
  assert rewards.extract_answer('<answer>' * 20_000 + '1') is None
  assert rewards.extract_answer('\\boxed{' * 20_000) is None
  assert time.monotonic() - t0 < 0.5


def test_answer_inside_thinking_does_not_count():
  """Issue 10.10: the last <answer> anywhere counted, also inside <think>."""
  assert acc('<think><answer>18</answer></think>', '18') == 0.0
  assert acc('<think><answer>18</answer></think> <answer>17</answer>', '18') == 0.0
  assert acc('<think>hmm <answer>18</answer>', '18') == 0.0  # still thinking
  assert acc('<think>ok</think> <answer>18</answer>', '18') == 1.0
  assert rewards.exact_match('', '<think><answer>18</answer></think>', {'answer': '18'}) == 0.0
  assert rewards.extract_answer('<think><answer>18</answer></think>') is None


@pytest.mark.parametrize('hedge', ['17 \\lor 18', '17 \\wedge 18', '17 \\cup 18', '17 = 18',
                                   '{17 \\atop 18}', '17, 18', '\\{17, 18\\}', '17 \\pm 1',
                                   '17 \\text{ or } 18', '17 < 18', '18 \\text{ and } 17',
                                   '17 \\vee 18', '17 \\land 18', '(17, 18)'])
def test_hedged_answers_score_zero_for_a_scalar_gold(hedge):
  """Issue 10.10: math-verify accepted these for gold 18."""
  assert acc(f'<answer>{hedge}</answer>', '18') == 0.0


def test_single_values_still_score():
  assert acc('<answer>x = 18</answer>', '18') == 1.0  # one symbol assigned one value
  assert acc('<answer>1,234</answer>', '1234') == 1.0  # thousands, not a set
  assert acc('<answer>\\frac{36}{2}</answer>', '18') == 1.0
  assert acc('<answer>5!</answer>', '120') == 1.0
  assert acc('<answer>2^{10}</answer>', '1024') == 1.0
  # A gold that is itself a set or an interval is compared as such.
  assert acc('<answer>\\{1, 2\\}</answer>', '\\{1, 2\\}') == 1.0
  assert acc('<answer>(1, 3)</answer>', '(1, 3)') == 1.0


def test_countdown():
  ex = {'numbers': '3,8,1,5', 'answer': '24'}
  def cd(answer, example=ex):
    return rewards.REWARDS['countdown']('', f'<think> </think> <answer> {answer} </answer>',
                                        example)
  for good in ('3*8', '3*8*1', '(5-3+1)*8', ' ( 8 ) * 3 ', '\\boxed{8*3}'):
    assert cd(good) == 1.0, good
  assert cd('(8-5)*8') == 0.0  # 8 used twice
  assert cd('(5-1)*(8-3+1)') == 0.0  # 1 used twice
  assert cd('4*6') == 0.0  # numbers not given
  assert cd('3*8+1') == 0.0  # wrong value
  assert cd('24') == 0.0  # the bare target is not an expression over the numbers
  assert cd('24', {'numbers': '24,2', 'answer': '24'}) == 1.0  # unless it is given
  # Exact division, fractions in between, and division by zero.
  assert cd('8/(1-5/3)', {'numbers': '8,1,5,3', 'answer': '-12'}) == 1.0
  assert cd('5/3*3', {'numbers': '5,3,3', 'answer': '5'}) == 1.0
  assert cd('8/3', {'numbers': '8,3', 'answer': '2'}) == 0.0
  assert cd('8/(5-5)', {'numbers': '8,5,5', 'answer': '0'}) == 0.0
  # Not arithmetic over integer literals: never evaluated.
  for bad in ("__import__('os').system('true')", '3*8 if 1 else 0', '-3*-8', '3**2',
              '3.0*8', '3*8=24', 'True*24', '8*3 # comment', '[3*8][0]', '08*3',
              '1e1', '3*8;1', '3 8', '', '(' * 150 + '3' + ')' * 150, 'x'):
    assert cd(bad) == 0.0, bad
  assert rewards.REWARDS['countdown']('', 'no answer', ex) == 0.0


def test_countdown_all_needs_every_number_exactly_once():
  """Issue 10.10: `countdown` (r1jax's task: each number at most once)
  takes 3+5 for 8 from {3, 5, 7}; `countdown_all` (TinyZero) does not."""
  ex = {'numbers': '3,5,7', 'answer': '8'}
  done = lambda fn, a: rewards.REWARDS[fn]('', f'<think> </think> <answer> {a} </answer>', ex)  # noqa: E731
  assert done('countdown', '3+5') == 1.0
  assert done('countdown_all', '3+5') == 0.0
  assert done('countdown_all', '3+5+7-7') == 0.0  # 7 twice
  assert done('countdown_all', '(7-5)*3+5-3') == 0.0  # 5 and 3 twice
  assert done('countdown_all', '5*3-7') == 1.0
  assert done('countdown', '<think><answer>3+5</answer></think>') == 0.0

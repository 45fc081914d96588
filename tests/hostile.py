"""Reward functions for the scorer's tests: one that hangs like sympy on
hostile input (holding the GIL), one that raises, one that sleeps. A module
of their own, importable by the reward worker processes without importing
jax (a test module would make every fresh worker import it)."""


def sympy_hang(prompt, completion, example):
  """math-verify parsing (10^{10})! directly, past the cheap guards: minutes."""
  from math_verify import parse, verify
  if completion != 'hang':
    return 0.0
  return float(verify(parse('$17$'), parse('$(10^{10})!$', parsing_timeout=None),
                      timeout_seconds=None))


def boom(prompt, completion, example):
  raise RuntimeError('bug')


def slow(prompt, completion, example):
  if completion == 'slow':
    import time
    time.sleep(60)
  return 1.0


def jax_imported(prompt, completion, example):
  """1.0 if jax is imported in this worker (main_probe imports it, so it is
  there iff the worker imported the parent's __main__)."""
  import sys
  return float('jax' in sys.modules)


def no_verdict(prompt, completion, example):
  """None (what the code reward returns when its sandbox failed) for
  'none', else 1."""
  return None if completion == 'none' else 1.0

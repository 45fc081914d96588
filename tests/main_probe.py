"""Run as `python -m main_probe` (from tests/): prints whether a reward
worker imported this main module (it must not: under `python -m
r1jax.launch` that would be jax and flax in every worker)."""
import jax  # noqa: F401  # what r1jax.launch brings
import hostile
from r1jax import rewards

if __name__ == '__main__':
  scorer = rewards.RewardScorer({'probe': 1.0}, workers=1, extra={'probe': hostile.jax_imported})
  print(scorer([''], [''], [{}])[0, 0])

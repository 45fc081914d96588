"""r1jax: the DeepSeek-R1 recipe (GRPO with rule-based rewards) in JAX."""
__version__ = '0.1.0'

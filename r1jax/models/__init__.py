"""The policy: one decoder family (Qwen2/2.5, Llama 3.x), presets, HF I/O."""
import jax
from flax import nnx

from r1jax import sharding as shd
from r1jax.models.config import PRESETS, ModelConfig, get_preset
from r1jax.models.decoder import Cache, Decoder
from r1jax.models.hf import CheckpointError, config_from_hf, config_to_hf, load_hf, save_hf

__all__ = [
    'PRESETS', 'ModelConfig', 'get_preset', 'Cache', 'Decoder', 'create',
    'CheckpointError', 'config_from_hf', 'config_to_hf', 'load_hf', 'save_hf',
]


def create(cfg: ModelConfig, seed: int = 0, mesh: jax.sharding.Mesh | None = None,
           rules: shd.Rules = shd.TRAIN_RULES) -> Decoder:
  """A randomly initialised decoder; with a mesh, every weight is created
  directly in its sharding (never materialised whole on one device)."""
  if mesh is None:
    return Decoder(cfg, rngs=nnx.Rngs(seed))
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(seed)))
  graphdef, abs_state = nnx.split(abstract)
  shardings = shd.state_shardings(abs_state, mesh, rules)
  init = jax.jit(lambda: nnx.state(Decoder(cfg, rngs=nnx.Rngs(seed))),
                 out_shardings=shardings)
  return nnx.merge(graphdef, init())

"""Load weights trained in torch / Paddle into jax_bigsoftmax's Flax heads."""

# --- adaptive softmax (issue 4) ---
from jax_bigsoftmax._adaptive_head import adaptive_params_from_paddle
from jax_bigsoftmax._adaptive_head import adaptive_params_from_torch

__all__ = (
    # adaptive
    "adaptive_params_from_paddle",
    "adaptive_params_from_torch",
)

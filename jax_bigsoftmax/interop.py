"""Converters from torch / Paddle state dicts to this library's Flax params."""

# --- hierarchical sigmoid (issue 3) ---
from jax_bigsoftmax._hsigmoid_head import hsigmoid_params_from_paddle

__all__ = (
    # hsigmoid
    "hsigmoid_params_from_paddle",
)

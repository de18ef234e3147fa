"""Converters from torch / Paddle state dicts (numpy values) to this library's Flax params."""

# --- hierarchical sigmoid (issue 3) ---
from jax_bigsoftmax._hsigmoid_head import hsigmoid_params_from_paddle

# --- adaptive softmax (issue 4) ---
from jax_bigsoftmax._adaptive_head import adaptive_params_from_paddle
from jax_bigsoftmax._adaptive_head import adaptive_params_from_torch

__all__ = (
    # hsigmoid
    "hsigmoid_params_from_paddle",
    # adaptive
    "adaptive_params_from_paddle",
    "adaptive_params_from_torch",
)

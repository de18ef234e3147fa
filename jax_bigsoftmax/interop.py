"""Converters from torch / Paddle state dicts (numpy values) to this library's Flax params."""

from jax_bigsoftmax.adaptive._interop import adaptive_params_from_paddle
from jax_bigsoftmax.adaptive._interop import adaptive_params_from_torch
from jax_bigsoftmax.hsigmoid._interop import hsigmoid_params_from_paddle

__all__ = (
    "adaptive_params_from_paddle",
    "adaptive_params_from_torch",
    "hsigmoid_params_from_paddle",
)

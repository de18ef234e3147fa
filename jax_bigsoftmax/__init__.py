"""jax_bigsoftmax: large-vocabulary output layers for JAX and Flax."""

from jax_bigsoftmax._checks import checked

# --- exact losses (issue 2) ---

# --- hierarchical sigmoid (issue 3) ---

# --- adaptive softmax (issue 4) ---

# --- sampled softmax (issue 5) ---

__version__ = "0.1.0"

__all__ = (
    "checked",
    # exact
    # hsigmoid
    # adaptive
    # sampled
)

"""jax_bigsoftmax: large-vocabulary output layers for JAX and Flax."""

from jax_bigsoftmax._checks import checked

# --- exact losses (issue 2) ---

# --- hierarchical sigmoid (issue 3) ---

# --- adaptive softmax (issue 4) ---
from jax_bigsoftmax._adaptive import adaptive_log_prob
from jax_bigsoftmax._adaptive import adaptive_log_softmax_with_loss
from jax_bigsoftmax._adaptive import adaptive_predict
from jax_bigsoftmax._adaptive_cutoffs import adaptive_cost
from jax_bigsoftmax._adaptive_cutoffs import frequency_sort
from jax_bigsoftmax._adaptive_cutoffs import suggest_cutoffs
from jax_bigsoftmax._adaptive_head import AdaptiveLogSoftmaxWithLoss
from jax_bigsoftmax._adaptive_head import ASMOutput

# --- sampled softmax (issue 5) ---

__version__ = "0.1.0"

__all__ = (
    "checked",
    # exact
    # hsigmoid
    # adaptive
    "adaptive_log_prob",
    "adaptive_log_softmax_with_loss",
    "adaptive_predict",
    "adaptive_cost",
    "frequency_sort",
    "suggest_cutoffs",
    "AdaptiveLogSoftmaxWithLoss",
    "ASMOutput",
    # sampled
)

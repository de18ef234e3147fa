"""jax_bigsoftmax: large-vocabulary output layers for JAX and Flax."""

from jax_bigsoftmax._checks import checked

# --- exact losses (issue 2) ---
from jax_bigsoftmax._exact import cross_entropy
from jax_bigsoftmax._exact import nll_loss
from jax_bigsoftmax._full_head import FullSoftmaxLoss
from jax_bigsoftmax._linear_ce import linear_argmax
from jax_bigsoftmax._linear_ce import linear_cross_entropy
from jax_bigsoftmax._vocab_parallel import vocab_parallel_cross_entropy

# --- hierarchical sigmoid (issue 3) ---

# --- adaptive softmax (issue 4) ---

# --- sampled softmax (issue 5) ---
from jax_bigsoftmax._sampled import sampled_softmax_loss
from jax_bigsoftmax._sampled import sampled_softmax_with_cross_entropy
from jax_bigsoftmax._sampled_head import SampledSoftmaxLoss
from jax_bigsoftmax._sampled_samplers import fixed_unigram_candidate_sampler
from jax_bigsoftmax._sampled_samplers import log_uniform_candidate_sampler
from jax_bigsoftmax._sampled_samplers import uniform_candidate_sampler

__version__ = "0.1.0"

__all__ = (
    "checked",
    # exact
    "FullSoftmaxLoss",
    "cross_entropy",
    "linear_argmax",
    "linear_cross_entropy",
    "nll_loss",
    "vocab_parallel_cross_entropy",
    # hsigmoid
    # adaptive
    # sampled
    "SampledSoftmaxLoss",
    "fixed_unigram_candidate_sampler",
    "log_uniform_candidate_sampler",
    "sampled_softmax_loss",
    "sampled_softmax_with_cross_entropy",
    "uniform_candidate_sampler",
)

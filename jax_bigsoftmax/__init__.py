"""jax_bigsoftmax: large-vocabulary output layers for JAX and Flax."""

from jax_bigsoftmax._checks import checked

# --- exact losses (issue 2) ---
from jax_bigsoftmax._exact import cross_entropy
from jax_bigsoftmax._exact import nll_loss
from jax_bigsoftmax._full_head import FullSoftmaxLoss
from jax_bigsoftmax._linear_ce import linear_argmax
from jax_bigsoftmax._linear_ce import linear_cross_entropy
from jax_bigsoftmax._linear_ce import linear_top_k
from jax_bigsoftmax._vocab_parallel import vocab_parallel_cross_entropy
from jax_bigsoftmax._vocab_parallel_heads import PackedAdaptiveTails
from jax_bigsoftmax._vocab_parallel_heads import pack_adaptive_tails
from jax_bigsoftmax._vocab_parallel_heads import unpack_adaptive_tails
from jax_bigsoftmax._vocab_parallel_heads import vocab_parallel_adaptive_log_softmax_with_loss
from jax_bigsoftmax._vocab_parallel_heads import vocab_parallel_sampled_softmax_loss

# --- hierarchical sigmoid (issue 3) ---
from jax_bigsoftmax._hsigmoid import hsigmoid_log_prob
from jax_bigsoftmax._hsigmoid import hsigmoid_loss
from jax_bigsoftmax._hsigmoid import hsigmoid_predict
from jax_bigsoftmax._hsigmoid_head import HSigmoidLoss
from jax_bigsoftmax._hsigmoid_tree import default_tree
from jax_bigsoftmax._hsigmoid_tree import huffman_tree

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
from jax_bigsoftmax._nce_head import NCELoss
from jax_bigsoftmax._sampled import SampledRows
from jax_bigsoftmax._sampled import compute_accidental_hits
from jax_bigsoftmax._sampled import compute_sampled_logits
from jax_bigsoftmax._sampled import gather_sampled_rows
from jax_bigsoftmax._sampled import nce_loss
from jax_bigsoftmax._sampled import sampled_softmax_loss
from jax_bigsoftmax._sampled import sampled_softmax_loss_from_rows
from jax_bigsoftmax._sampled import sampled_softmax_with_cross_entropy
from jax_bigsoftmax._sampled import scatter_add_sampled_rows
from jax_bigsoftmax._sampled_head import SampledSoftmaxLoss
from jax_bigsoftmax._sampled_samplers import all_candidate_sampler
from jax_bigsoftmax._sampled_samplers import fixed_unigram_candidate_sampler
from jax_bigsoftmax._sampled_samplers import log_uniform_candidate_sampler
from jax_bigsoftmax._sampled_samplers import uniform_candidate_sampler

# --- Flax NNX twins of the heads (a submodule, like flax.nnx) ---
from jax_bigsoftmax import nnx  # noqa: E402, F401  (jbs.nnx.FullSoftmaxLoss, ...)

__version__ = "0.1.0"

__all__ = (
    "checked",
    # exact
    "FullSoftmaxLoss",
    "cross_entropy",
    "linear_argmax",
    "linear_cross_entropy",
    "linear_top_k",
    "nll_loss",
    "vocab_parallel_cross_entropy",
    "PackedAdaptiveTails",
    "pack_adaptive_tails",
    "unpack_adaptive_tails",
    "vocab_parallel_adaptive_log_softmax_with_loss",
    "vocab_parallel_sampled_softmax_loss",
    # hsigmoid
    "HSigmoidLoss",
    "default_tree",
    "hsigmoid_log_prob",
    "hsigmoid_loss",
    "hsigmoid_predict",
    "huffman_tree",
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
    "NCELoss",
    "SampledRows",
    "SampledSoftmaxLoss",
    "all_candidate_sampler",
    "compute_accidental_hits",
    "compute_sampled_logits",
    "fixed_unigram_candidate_sampler",
    "gather_sampled_rows",
    "log_uniform_candidate_sampler",
    "nce_loss",
    "sampled_softmax_loss",
    "sampled_softmax_loss_from_rows",
    "sampled_softmax_with_cross_entropy",
    "scatter_add_sampled_rows",
    "uniform_candidate_sampler",
)

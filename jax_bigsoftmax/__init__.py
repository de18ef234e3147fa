"""jax_bigsoftmax: large-vocabulary output layers for JAX and Flax."""

from jax_bigsoftmax._core.checks import checked

# --- exact losses ---
from jax_bigsoftmax.exact import (FullSoftmaxLoss, cross_entropy, linear_argmax,
                                  linear_cross_entropy, linear_top_k, nll_loss,
                                  vocab_parallel_cross_entropy)

# --- hierarchical sigmoid ---
from jax_bigsoftmax.hsigmoid import (HSigmoidLoss, default_tree, hsigmoid_log_prob,
                                     hsigmoid_loss, hsigmoid_predict, huffman_tree)

# --- adaptive softmax ---
from jax_bigsoftmax.adaptive import (ASMOutput, AdaptiveLogSoftmaxWithLoss, PackedAdaptiveTails,
                                     adaptive_cost, adaptive_log_prob,
                                     adaptive_log_softmax_with_loss, adaptive_predict,
                                     frequency_sort, pack_adaptive_tails, suggest_cutoffs,
                                     unpack_adaptive_tails,
                                     vocab_parallel_adaptive_log_softmax_with_loss)

# --- candidate sampling: sampled softmax and NCE ---
from jax_bigsoftmax.sampled import (NCELoss, SampledRows, SampledSoftmaxLoss,
                                    all_candidate_sampler, compute_accidental_hits,
                                    compute_sampled_logits, fixed_unigram_candidate_sampler,
                                    gather_sampled_rows, log_uniform_candidate_sampler, nce_loss,
                                    sampled_softmax_loss, sampled_softmax_loss_from_rows,
                                    sampled_softmax_with_cross_entropy, scatter_add_sampled_rows,
                                    uniform_candidate_sampler, vocab_parallel_sampled_softmax_loss)

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

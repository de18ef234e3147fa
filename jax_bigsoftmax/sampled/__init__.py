"""Candidate sampling: sampled softmax and NCE (TensorFlow's and Paddle's), their samplers,
the vocabulary-parallel sampled loss and the sampled heads.

* :mod:`._samplers`: log-uniform, uniform, fixed-unigram and all-candidate samplers.
* :mod:`._functional`: the losses, sampled logits, accidental hits, row gathers.
* :mod:`._vocab_parallel`: the same losses with the table split over a mesh axis.
* :mod:`._head`: the heads' configurations and pure methods (exact outside
  training); :mod:`._linen` and :mod:`._nnx` their shells.
"""
from jax_bigsoftmax.sampled._functional import (SampledRows, compute_accidental_hits,
                                                compute_sampled_logits, gather_sampled_rows,
                                                nce_loss, sampled_softmax_loss,
                                                sampled_softmax_loss_from_rows,
                                                sampled_softmax_with_cross_entropy,
                                                scatter_add_sampled_rows)
from jax_bigsoftmax.sampled._linen import NCELoss, SampledSoftmaxLoss
from jax_bigsoftmax.sampled._samplers import (all_candidate_sampler,
                                              fixed_unigram_candidate_sampler,
                                              log_uniform_candidate_sampler,
                                              uniform_candidate_sampler)
from jax_bigsoftmax.sampled._vocab_parallel import vocab_parallel_sampled_softmax_loss

__all__ = ("NCELoss", "SampledRows", "SampledSoftmaxLoss", "all_candidate_sampler",
           "compute_accidental_hits", "compute_sampled_logits", "fixed_unigram_candidate_sampler",
           "gather_sampled_rows", "log_uniform_candidate_sampler", "nce_loss",
           "sampled_softmax_loss", "sampled_softmax_loss_from_rows",
           "sampled_softmax_with_cross_entropy", "scatter_add_sampled_rows",
           "uniform_candidate_sampler", "vocab_parallel_sampled_softmax_loss")

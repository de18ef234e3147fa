"""Exact softmax losses: torch-compatible dense losses, the chunked linear cross-entropy
(one device or vocabulary-parallel) and the full-softmax head.

* :mod:`._dense`: ``nll_loss``, ``cross_entropy`` over given logits.
* :mod:`._linear`: ``linear_cross_entropy``, ``linear_argmax``, ``linear_top_k``,
  ``vocab_parallel_cross_entropy`` (the statistics walk of ``_core``).
* :mod:`._head`: the head's configuration and pure methods; :mod:`._linen` and
  :mod:`._nnx` its two shells.
"""
from jax_bigsoftmax.exact._dense import cross_entropy, nll_loss
from jax_bigsoftmax.exact._linear import (linear_argmax, linear_cross_entropy, linear_top_k,
                                          vocab_parallel_cross_entropy)
from jax_bigsoftmax.exact._linen import FullSoftmaxLoss

__all__ = ("FullSoftmaxLoss", "cross_entropy", "linear_argmax", "linear_cross_entropy",
           "linear_top_k", "nll_loss", "vocab_parallel_cross_entropy")

"""Adaptive softmax (Grave et al. 2016): torch's and Paddle's ``AdaptiveLogSoftmaxWithLoss``.

* :mod:`._cutoffs`: choosing cutoffs from frequencies.
* :mod:`._functional`: the single-device functions (padded cluster gathers).
* :mod:`._vocab_parallel`: whole clusters per device, packed (``shard_map``).
* :mod:`._head`: the head's configuration and pure methods (one device, or its
  class axes split over a mesh axis); :mod:`._linen` and :mod:`._nnx` its shells.
* :mod:`._interop`: torch / Paddle weights.
"""
from jax_bigsoftmax.adaptive._cutoffs import adaptive_cost, frequency_sort, suggest_cutoffs
from jax_bigsoftmax.adaptive._functional import (adaptive_log_prob, adaptive_log_softmax_with_loss,
                                                 adaptive_predict)
from jax_bigsoftmax.adaptive._head import ASMOutput
from jax_bigsoftmax.adaptive._linen import AdaptiveLogSoftmaxWithLoss
from jax_bigsoftmax.adaptive._vocab_parallel import (PackedAdaptiveTails, pack_adaptive_tails,
                                                     unpack_adaptive_tails,
                                                     vocab_parallel_adaptive_log_softmax_with_loss)

__all__ = ("ASMOutput", "AdaptiveLogSoftmaxWithLoss", "PackedAdaptiveTails", "adaptive_cost",
           "adaptive_log_prob", "adaptive_log_softmax_with_loss", "adaptive_predict",
           "frequency_sort", "pack_adaptive_tails", "suggest_cutoffs", "unpack_adaptive_tails",
           "vocab_parallel_adaptive_log_softmax_with_loss")

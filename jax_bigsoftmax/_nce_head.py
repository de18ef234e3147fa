"""Flax head for noise-contrastive estimation (NCE loss in training, exact softmax in evaluation)."""
from __future__ import annotations

from jax_bigsoftmax._sampled import nce_loss
from jax_bigsoftmax._sampled_head import SampledSoftmaxLoss


class NCELoss(SampledSoftmaxLoss):
  """NCE output layer (Gutmann & Hyvarinen 2010), TF ``nce_loss`` in training.

  ``__call__(inputs [..., D], labels, *, deterministic=False) -> [...]``
  per-example losses. In training it is :func:`nce_loss` with S log-uniform
  noise classes drawn from the ``"sampler"`` rng stream (pass
  ``rngs={"sampler": key}``); with ``deterministic=True`` it is the exact
  full-softmax loss ``-(1/T) sum_t log softmax(x W^T + b)[y_t]`` (computed by
  ``linear_cross_entropy``, no ``[..., V]`` logits). ``nll``, ``log_prob``
  and ``predict`` are exact, as for :class:`SampledSoftmaxLoss`, whose
  attributes, parameters (``weight`` ``[num_classes, features]``, ``bias``
  ``[num_classes]``) and ``ignore_index`` handling it shares; only the
  training loss differs, and ``remove_accidental_hits`` defaults to False
  (TF's ``nce_loss`` default). NCE's training loss is not a log-likelihood:
  compare models with ``nll``.

  Attributes:
    num_classes: vocabulary size V.
    features: input feature size D.
    num_sampled: S, noise classes per step (shared by the batch, ``< V``).
    num_true: T, targets per example.
    remove_accidental_hits: mask sampled classes equal to a target.
    ignore_index: label value of padded positions (loss 0).
    dtype: computation dtype (None: the inputs' dtype).
    param_dtype: dtype of the parameters.

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> head = jbs.NCELoss(num_classes=100, features=8, num_sampled=10)
    >>> x, y = jnp.ones((2, 3, 8)), jnp.zeros((2, 3), jnp.int32)
    >>> params = head.init(jax.random.key(0), x, y, deterministic=True)
    >>> head.apply(params, x, y, rngs={"sampler": jax.random.key(1)}).shape
    (2, 3)

  References:
    Gutmann & Hyvarinen 2010, "Noise-contrastive estimation: A new estimation
    principle for unnormalized statistical models"; Mnih & Teh 2012;
    TensorFlow ``nn_impl.nce_loss``.
  """

  remove_accidental_hits: bool = False

  def _sampled_loss(self, w, b, labels_T, x):
    return nce_loss(w, b, labels_T, x, self.num_sampled, self.num_classes, self.num_true, None,
                    self.remove_accidental_hits, key=self.make_rng("sampler"))

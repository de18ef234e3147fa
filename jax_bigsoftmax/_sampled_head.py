"""Flax head for sampled softmax (sampled loss in training, exact softmax in evaluation)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jax_bigsoftmax import _checks, _sharded_heads
from jax_bigsoftmax._full_head import default_weight_init
from jax_bigsoftmax._linear_ce import linear_argmax, linear_cross_entropy
from jax_bigsoftmax._sampled import sampled_softmax_loss


class SampledSoftmaxLoss(nn.Module):
  """Sampled softmax output layer (Jean et al. 2014), TF ``sampled_softmax_loss`` in training.

  ``__call__(inputs [..., D], labels, *, deterministic=False) -> [...]``
  per-example losses. In training (``deterministic=False``) it is
  ``sampled_softmax_loss`` with S log-uniform negatives drawn from the
  ``"sampler"`` rng stream (pass ``rngs={"sampler": key}``); with
  ``deterministic=True`` it is the exact full-softmax loss
  ``-(1/T) sum_t log softmax(x W^T + b)[y_t]`` computed by
  ``linear_cross_entropy`` without materialising ``[..., V]`` logits.
  ``labels`` is ``[...]`` (T = 1) or ``[..., num_true]``. A position whose
  labels all equal ``ignore_index`` (padding) gives loss 0 and no gradient in
  both modes (an extension: TF's function has no ignore_index).

  ``nll(x, labels) -> [...]``, ``log_prob(x) -> [..., V]`` and
  ``predict(x) -> [...]`` are exact (the common head interface). The
  log-uniform sampler assumes class ids sorted by decreasing frequency.

  Params: ``weight`` ``[num_classes, features]``, ``bias`` ``[num_classes]``
  (TF's ``weights``/``biases``).

  Attributes:
    num_classes: vocabulary size V.
    features: input feature size D.
    num_sampled: S, negatives per step (shared by the batch, ``< V``).
    num_true: T, targets per example.
    remove_accidental_hits: mask sampled classes equal to a target.
    ignore_index: label value of padded positions (loss 0).
    dtype: computation dtype (None: ``jnp.result_type`` of the inputs and the
      params, as ``flax.linen.Dense``: params are never cast down to the
      inputs' dtype, integer inputs are promoted to float).
    param_dtype: dtype of the parameters.
    mesh: the ``jax.sharding.Mesh`` (Auto axes) of a vocabulary-sharded head.
    vocab_axis: mesh axis to shard the vocabulary on. When set, ``weight`` and
      ``bias`` carry ``nn.with_partitioning`` metadata on V (same names and
      shapes as unsharded) and every method runs a vocabulary-parallel kernel:
      the sampled loss is :func:`vocab_parallel_sampled_softmax_loss` (the
      same samples for the same ``"sampler"`` key), the exact paths
      :func:`vocab_parallel_cross_entropy`; ``log_prob`` returns ``[..., V]``
      sharded on V. Same values and gradients as the unsharded head. V must
      divide by the size of the axis.
    data_axis: optional mesh axis the rows of the inputs are split on.

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> head = jbs.SampledSoftmaxLoss(num_classes=100, features=8, num_sampled=10)
    >>> x, y = jnp.ones((2, 3, 8)), jnp.zeros((2, 3), jnp.int32)
    >>> params = head.init(jax.random.key(0), x, y, deterministic=True)
    >>> head.apply(params, x, y, rngs={"sampler": jax.random.key(1)}).shape
    (2, 3)

  References:
    Jean et al. 2014, "On Using Very Large Target Vocabulary for Neural Machine
    Translation".
  """

  num_classes: int
  features: int
  num_sampled: int
  num_true: int = 1
  remove_accidental_hits: bool = True
  ignore_index: int = -100
  dtype: Any = None
  param_dtype: Any = jnp.float32
  weight_init: Any = default_weight_init
  mesh: Any = None
  vocab_axis: str | None = None
  data_axis: str | None = None

  def setup(self):
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be >= 2; got {self.num_classes}.")
    if self.features < 1:
      raise ValueError(f"features must be >= 1; got {self.features}.")
    if not 1 <= self.num_sampled < self.num_classes:
      raise ValueError(
          f"num_sampled must be in [1, num_classes) = [1, {self.num_classes}); got"
          f" {self.num_sampled}.")
    if self.num_true < 1:
      raise ValueError(f"num_true must be >= 1; got {self.num_true}.")
    shard = _sharded_heads.vocab_partitioner(self)
    v, d = self.num_classes, self.features
    self.weight = self.param("weight", shard(self.weight_init, (v, d), 0, name="weight"), (v, d),
                             self.param_dtype)
    self.bias = self.param("bias", shard(nn.initializers.zeros, (v,), 0, name="bias"), (v,),
                           self.param_dtype)

  def _cast(self, x):
    return _checks.promote_head_operands(x, self.weight, self.bias, dtype=self.dtype)

  def _labels(self, x, labels):
    lead = tuple(jnp.shape(x)[:-1])
    shape = tuple(jnp.shape(labels))
    if self.num_true == 1 and shape == lead:
      return _checks.as_index(labels)[..., None]
    if shape != lead + (self.num_true,):
      raise ValueError(
          f"labels must have shape {lead + (self.num_true,)} ([..., num_true])"
          + (f" or {lead}" if self.num_true == 1 else "") + f"; got {shape}.")
    return _checks.as_index(labels)

  def __call__(self, inputs: ArrayLike, labels: ArrayLike, *,
               deterministic: bool = False) -> jax.Array:
    x, w, b = self._cast(inputs)
    labels_T = self._labels(x, labels)
    _checks.check_integer("labels", labels_T)
    _checks.check_ignore_index(self.ignore_index, labels_T)
    ignored = jnp.all(labels_T == self.ignore_index, axis=-1)
    labels_T = jnp.where(ignored[..., None], 0, labels_T)
    # Every true column (not only the first) is checked, on both paths.
    _checks.check_labels_in_range(labels_T, self.num_classes, name="labels")
    if deterministic and self.vocab_axis is not None:
      loss = _sharded_heads.mean_true_nll(self, x, w, b, labels_T)
    elif deterministic:
      loss = self._exact_loss(x, w, b, labels_T)
    elif self.vocab_axis is not None:
      loss = _sharded_heads.sampled_loss(
          self, x, w, b, labels_T, num_sampled=self.num_sampled, num_classes=self.num_classes,
          num_true=self.num_true, remove_accidental_hits=self.remove_accidental_hits,
          key=self.make_rng("sampler"))
    else:
      loss = self._sampled_loss(w, b, labels_T, x)
    return jnp.where(ignored, jnp.zeros((), loss.dtype), loss)

  def _sampled_loss(self, w, b, labels_T, x):
    """The training loss (``NCELoss`` overrides this one method)."""
    return sampled_softmax_loss(w, b, labels_T, x, self.num_sampled, self.num_classes,
                                self.num_true, None, self.remove_accidental_hits,
                                key=self.make_rng("sampler"))

  def _exact_loss(self, x, w, b, labels_T):
    """-(1/T) sum_t log p(y_t) = lse - mean_t z_t, with one pass for the lse."""
    nll0 = linear_cross_entropy(x, w, labels_T[..., 0], b, reduction="none")
    if self.num_true == 1:
      return nll0
    acc = _checks.compute_dtype(x, w)
    lab = jnp.clip(labels_T, 0, self.num_classes - 1)
    z = jnp.einsum("...d,...td->...t", x, jnp.take(w, lab, axis=0),
                   preferred_element_type=acc) + jnp.take(b, lab).astype(acc)
    lse = nll0.astype(acc) + z[..., 0]
    bad = jnp.any((labels_T < 0) | (labels_T >= self.num_classes), axis=-1)
    return jnp.where(bad, jnp.nan, lse - jnp.mean(z, axis=-1))

  def nll(self, inputs: ArrayLike, labels: ArrayLike) -> jax.Array:
    x, w, b = self._cast(inputs)
    if self.vocab_axis is not None:
      return _sharded_heads.cross_entropy(self, x, w, b, labels, reduction="none")
    return linear_cross_entropy(x, w, labels, b, ignore_index=self.ignore_index,
                                reduction="none")

  def log_prob(self, inputs: ArrayLike) -> jax.Array:
    x, w, b = self._cast(inputs)
    if self.vocab_axis is not None:
      return _sharded_heads.log_softmax(self, x, w, b)
    acc = _checks.compute_dtype(x, w)  # float32 for half inputs, float64 under x64
    logits = jnp.dot(x, w.T, preferred_element_type=acc)
    logits = logits + b.astype(acc).reshape((1,) * (logits.ndim - 1) + (-1,))
    return jax.nn.log_softmax(logits, axis=-1)

  def predict(self, inputs: ArrayLike) -> jax.Array:
    x, w, b = self._cast(inputs)
    if self.vocab_axis is not None:
      return _sharded_heads.argmax(self, x, w, b)
    return linear_argmax(x, w, b)

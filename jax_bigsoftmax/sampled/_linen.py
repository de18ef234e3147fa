"""The linen shells of the sampled-softmax and NCE heads (:class:`SampledSoftmax`, :class:`NCE`)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jax_bigsoftmax._core.heads import LinearLinenHead, linear_weight_init
from jax_bigsoftmax.sampled._head import NCE, SampledSoftmax


class SampledSoftmaxLoss(LinearLinenHead):
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
      Memory: one fwd+bwd step needs at most 1/6 of the unsharded head's
      memory per device on an 8-way vocabulary mesh (compiled-memory test at
      N=4096, D=1024, V=2**20; table in docs/benchmarks.md).
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
  weight_init: Any = linear_weight_init
  mesh: Any = None
  vocab_axis: str | None = None
  data_axis: str | None = None

  config_class = SampledSoftmax


  def __call__(self, inputs: ArrayLike, labels: ArrayLike, *,
               deterministic: bool = False) -> jax.Array:
    """Per-example loss ``[...]``: sampled in training (rng ``"sampler"``), exact when
    ``deterministic``."""
    key = None if deterministic else self.make_rng("sampler")
    return self.config.loss(self.params_, inputs, labels, deterministic=deterministic, key=key)


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
  config_class = NCE

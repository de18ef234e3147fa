"""The head base: parameters declared once, and the linen / NNX shells' shared plumbing.

A head is a static configuration (a frozen dataclass of its constructor
keywords, validated once when it is built) with

* ``param_specs()``: ``{name: ParamSpec}``, every parameter's shape,
  initialiser and class axis (the one a vocabulary-sharded head splits), and
* pure methods ``loss`` / ``nll`` / ``log_prob`` / ``predict`` of
  ``(params, inputs, ...)``.

The linen module (:class:`LinenHead`) declares the specs with
``Module.param`` (:func:`declare`) and the NNX module (:class:`NNXHead`) holds
them as ``nnx.Param`` attributes (:func:`init_nnx_params`); both call the same
pure methods, so each piece of math exists once, and the sharded/unsharded
choice is made once, when the configuration is built (its ``placement``).
An NNX head draws the initial values the linen head's ``init`` draws for the
same key (the declarations run through linen's public ``Module.init``), so the
two APIs are interchangeable at any step.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import meta

from jax_bigsoftmax._core.checks import promote_head_operands
from jax_bigsoftmax._core.sharding import Placement


class ParamSpec(NamedTuple):
  """One parameter of a head.

  Attributes:
    shape: its shape.
    init: a Flax initialiser ``init(key, shape, dtype)``.
    vocab_dim: its class axis, split over ``vocab_axis`` in a sharded head
      (None: always replicated).
    must_divide: the class count must divide by the size of ``vocab_axis``
      (else the parameter stays replicated).
  """
  shape: tuple[int, ...]
  init: Callable
  vocab_dim: int | None = None
  must_divide: bool = True


def _initializer(name: str, spec: ParamSpec, placement: Placement | None) -> Callable:
  """``spec.init``, with ``nn.with_partitioning`` on its class axis in a sharded head."""
  if placement is None or spec.vocab_dim is None:
    return spec.init
  count = spec.shape[spec.vocab_dim]
  if count % placement.num_shards:
    if spec.must_divide:
      raise ValueError(f"{name} has {count} classes, which does not divide by the size of mesh"
                       f" axis {placement.vocab_axis!r} ({placement.num_shards}); pick a multiple"
                       " of it to shard the head on the vocabulary.")
    return spec.init
  names = tuple(placement.vocab_axis if i == spec.vocab_dim else None
                for i in range(len(spec.shape)))
  # The mesh makes init place the param (a sharding constraint).
  return nn.with_partitioning(spec.init, names, mesh=placement.mesh)


def declare(module: nn.Module, specs: Mapping[str, ParamSpec], placement: Placement | None,
            dtype: Any) -> dict[str, jax.Array]:
  """Declares ``specs`` as the linen params of ``module`` (in its ``setup``)."""
  return {name: module.param(name, _initializer(name, s, placement), s.shape, dtype)
          for name, s in specs.items()}


class _Declarations(nn.Module):
  """A root linen module declaring the given params, as a head's ``setup`` does."""
  specs: tuple[tuple[str, ParamSpec], ...]
  placement: Placement | None
  dtype: Any

  @nn.compact
  def __call__(self):
    return declare(self, dict(self.specs), self.placement, self.dtype)


def _linen_boxes(specs, placement, dtype, key: jax.Array) -> dict[str, Any]:
  """The linen ``params`` (boxed where partitioned) of ``specs`` for ``key``."""
  module = _Declarations(tuple(specs.items()), placement, dtype)
  return dict(module.init(key).get("params", {}))


def _unbox(value: Any) -> Any:
  return value.value if isinstance(value, meta.AxisMetadata) else value


def _to_param(value: Any, like: Any, mesh: Any) -> nnx.Param:
  """``nnx.Param`` holding ``value`` with the sharding metadata of linen's box ``like``.

  An annotation without a mesh takes the head's ``mesh``, if it has one.
  """
  if not isinstance(like, meta.AxisMetadata):
    return nnx.Param(value)
  metadata = like.to_nnx_metadata() if hasattr(like, "to_nnx_metadata") else dict(vars(like))
  metadata.pop("value", None)
  if metadata.get("mesh") is None and mesh is not None:
    metadata["mesh"] = mesh
  return nnx.Param(value, **metadata, linen_meta_type=type(like))


def init_nnx_params(module: nnx.Module, specs: Mapping[str, ParamSpec],
                    placement: Placement | None, dtype: Any, rngs: Any, *, mesh: Any = None,
                    values: Mapping[str, Any] | None = None) -> tuple[str, ...]:
  """Sets ``specs`` as ``nnx.Param`` attributes of ``module``; returns their names.

  The values are ``values`` when given (checked by the caller), else drawn
  with one key of ``rngs.params()``: those linen's ``init`` gives for that key.
  """
  if values is not None:
    boxes = jax.eval_shape(lambda: _linen_boxes(specs, placement, dtype, jax.random.key(0)))
  else:
    if not isinstance(rngs, nnx.Rngs):
      raise TypeError(f"{type(module).__name__} needs rngs=nnx.Rngs(...) to initialise its"
                      f" parameters; got rngs={rngs!r}.")
    boxes = _linen_boxes(specs, placement, dtype, rngs.params())
    values = {name: _unbox(box) for name, box in boxes.items()}
  mesh = placement.mesh if placement is not None else mesh
  for name in specs:
    setattr(module, name, _to_param(values[name], boxes[name], mesh))
  return tuple(specs)


def nnx_values(module: nnx.Module, names: tuple[str, ...]) -> dict[str, jax.Array]:
  """The current values of an NNX head's params, as the pure methods take them."""
  return {name: getattr(module, name)[...] for name in names}


class LinenHead(nn.Module):
  """Base of the linen shells: ``setup`` builds the configuration ``config_class(**keywords)``
  from the module's attributes (``self.config``) and declares its parameters (``self.params_``).

  A subclass sets ``config_class`` (a plain class attribute: not a field of the module).
  """

  def setup(self):
    fields = tuple(self.config_class.__dataclass_fields__)
    self.config = self.config_class(**config_of(self, fields))
    self.params_ = declare(self, self.config.param_specs(), self.config.placement,
                           self.config.param_dtype)


class LinearLinenHead(LinenHead):
  """The exact ``nll``/``log_prob``/``predict`` of a linen head over one ``[V, D]`` matrix."""

  def nll(self, inputs, labels):
    """Exact per-token ``-log p(label | x)`` ``[...]`` (0 at ``ignore_index``)."""
    return self.config.nll(self.params_, inputs, labels)

  def log_prob(self, inputs):
    """``[..., V]`` exact log-probabilities (sharded on V in a sharded head)."""
    return self.config.log_prob(self.params_, inputs)

  def predict(self, inputs):
    """``[...]`` arg-max class."""
    return self.config.predict(self.params_, inputs)


class NNXHead(nnx.Module):
  """Base of the NNX shells: a head configuration (``self.config``) and its ``nnx.Param``s.

  A subclass's ``__init__`` builds its configuration and calls
  :meth:`_init_head`; its methods call the configuration's pure methods
  with :meth:`_params`.
  """

  linen_class: ClassVar[type[nn.Module]]

  def _init_head(self, config: Any, rngs: Any, values: Mapping[str, Any] | None = None) -> None:
    self.config = config
    self.param_names = init_nnx_params(self, config.param_specs(), config.placement,
                                       config.param_dtype, rngs,
                                       mesh=getattr(config, "mesh", None), values=values)

  def _params(self) -> dict[str, jax.Array]:
    return nnx_values(self, self.param_names)

  @property
  def linen(self) -> nn.Module:
    """The linen twin of this head (same configuration; apply it to :func:`to_linen_params`)."""
    return self.linen_class(**config_of(self.config, tuple(self.config.__dataclass_fields__)))


class LinearNNXHead(NNXHead):
  """The exact ``nll``/``log_prob``/``predict`` of an NNX head over one ``[V, D]`` matrix."""

  def nll(self, inputs, labels):
    """Exact per-token ``-log p(label | x)`` ``[...]`` (0 at ``ignore_index``)."""
    return self.config.nll(self._params(), inputs, labels)

  def log_prob(self, inputs):
    """``[..., V]`` exact log-probabilities (sharded on V in a sharded head)."""
    return self.config.log_prob(self._params(), inputs)

  def predict(self, inputs):
    """``[...]`` arg-max class."""
    return self.config.predict(self._params(), inputs)


def check_linen_params(specs: Mapping[str, ParamSpec], placement: Placement | None, dtype: Any,
                       params: Any, head_name: str) -> dict[str, jax.Array]:
  """``params`` (``init``'s variables or their ``"params"``, boxed or not) checked against ``specs``."""
  if not isinstance(params, Mapping):
    raise TypeError(f"params must be a mapping of parameter names to arrays; got"
                    f" {type(params).__name__}.")
  if set(params) == {"params"} and isinstance(params["params"], Mapping):
    params = params["params"]
  if set(params) != set(specs):
    raise ValueError(f"params must have exactly the parameters of {head_name}"
                     f" {sorted(specs)}; got {sorted(params)}.")
  values = {}
  for name, spec in specs.items():
    value = _unbox(params[name])
    if tuple(jnp.shape(value)) != tuple(spec.shape):
      raise ValueError(f"params[{name!r}] must have shape {tuple(spec.shape)}; got"
                       f" {tuple(jnp.shape(value))}.")
    values[name] = jnp.asarray(value)
  return values


def linen_params(module: nnx.Module, names: tuple[str, ...]) -> dict[str, Any]:
  """The linen ``params`` of an NNX head, boxed where its params carry linen metadata."""
  out = {}
  for name in names:
    var = getattr(module, name)
    metadata = dict(var.get_metadata())
    linen_type = metadata.pop("linen_meta_type", None)
    value = var[...]
    if linen_type is not None and hasattr(linen_type, "from_nnx_metadata"):
      out[name] = linen_type.from_nnx_metadata({"value": value, **metadata})
    elif linen_type is not None:
      fields = {f.name for f in dataclasses.fields(linen_type)}
      out[name] = linen_type(**{k: v for k, v in {"value": value, **metadata}.items()
                                if k in fields})
    else:
      out[name] = value
  return out


def config_of(module: Any, fields: tuple[str, ...]) -> dict[str, Any]:
  """``{field: module.field}``: a linen module's constructor keywords."""
  return {f: getattr(module, f) for f in fields}


# torch nn.Linear-like fan-in scaling for a [V, D] matrix (fan-in is the last axis): the
# initialiser of every head over one [V, D] matrix.
linear_weight_init = nn.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal", in_axis=-1, out_axis=-2)


class LinearHeadMethods:
  """``param_specs``, ``nll``, ``log_prob`` and ``predict`` of a head over one ``[V, D]``
  matrix (``weight``, optional ``bias``): the full-softmax head, and the sampled heads,
  which are exact outside training.

  A configuration using it has ``num_classes``, ``features``, ``use_bias``,
  ``weight_init``, ``ignore_index``, ``dtype`` and ``ops`` (its
  :class:`~jax_bigsoftmax._core.linear.LinearSoftmax`).
  """

  def param_specs(self) -> dict[str, ParamSpec]:
    v, d = self.num_classes, self.features
    specs = {"weight": ParamSpec((v, d), self.weight_init, vocab_dim=0)}
    if self.use_bias:
      specs["bias"] = ParamSpec((v,), nn.initializers.zeros, vocab_dim=0)
    return specs

  def cast(self, params, inputs):
    """``(x, weight, bias)`` in one computation dtype (params never cast down)."""
    return promote_head_operands(inputs, params["weight"], params.get("bias"), dtype=self.dtype)

  def nll(self, params, inputs, labels):
    """Exact per-token ``-log p(label | x)`` ``[...]`` (0 at ``ignore_index``)."""
    x, w, b = self.cast(params, inputs)
    return self.ops.cross_entropy(x, w, b, labels, ignore_index=self.ignore_index)

  def log_prob(self, params, inputs):
    """``[..., V]`` exact log-probabilities."""
    return self.ops.log_softmax(*self.cast(params, inputs))

  def predict(self, params, inputs):
    """``[...]`` arg-max class."""
    return self.ops.argmax(*self.cast(params, inputs))


def check_sizes(**sizes: Any) -> None:
  """``num_classes >= 2`` and every other size ``>= 1``, named in the error."""
  for name, value in sizes.items():
    low = 2 if name == "num_classes" else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"{name} must be >= {low}; got {value!r}.")

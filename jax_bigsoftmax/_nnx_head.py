"""The machinery shared by the Flax NNX heads (``jax_bigsoftmax.nnx``).

An NNX head keeps its linen twin as the spec: the linen ``setup`` validates the
configuration and declares the parameters (names, shapes, initialisers,
sharding annotations); the NNX head turns them into ``nnx.Param``s and applies
the linen methods to their current values.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import meta


def _declare(module: nn.Module) -> None:
  """Runs a linen head's ``setup`` (validation and ``self.param`` declarations)."""
  module._try_setup()  # pylint: disable=protected-access


def _linen_params(spec: nn.Module, key: jax.Array | None) -> dict[str, Any]:
  """The linen head's own ``params`` for ``key`` (abstract when ``key`` is None)."""
  if key is None:
    variables = jax.eval_shape(lambda: spec.init(jax.random.key(0), method=_declare))
  else:
    variables = spec.init(key, method=_declare)
  params = dict(variables.get("params", {}))
  for name, value in params.items():
    if isinstance(value, Mapping):
      raise TypeError(f"{type(spec).__name__} declares a nested parameter collection {name!r};"
                      " NNX twins support flat parameters only.")
  return params


def _to_param(value: Any, like: Any, spec: nn.Module) -> nnx.Param:
  """``nnx.Param`` holding ``value`` with the (sharding) metadata of linen's ``like``.

  A sharding annotation without a mesh takes the head's ``mesh`` attribute
  (the sharded heads' option), if it has one.
  """
  if isinstance(like, meta.AxisMetadata):
    metadata = (like.to_nnx_metadata() if hasattr(like, "to_nnx_metadata")
                else dict(vars(like)))
    metadata.pop("value", None)
    if metadata.get("mesh") is None and getattr(spec, "mesh", None) is not None:
      metadata["mesh"] = spec.mesh
    return nnx.Param(value, **metadata, linen_meta_type=type(like))
  return nnx.Param(value)


def _unbox(value: Any) -> Any:
  """The array inside linen's axis metadata box (the NNX ``Param`` applies its sharding)."""
  return value.value if isinstance(value, meta.AxisMetadata) else value


class FromLinen:
  """Constructor argument of an NNX head built from a linen head and its params."""

  def __init__(self, spec: nn.Module, params: Mapping[str, Any]):
    self.spec, self.params = spec, params


class Head(nnx.Module):
  """Common base: parameters from the linen twin's setup, methods applied through it."""

  linen_class: ClassVar[type[nn.Module]]

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    # The signature of the linen dataclass plus ``rngs``, for help() and IDEs.
    params = [p for p in inspect.signature(cls.linen_class).parameters.values()
              if p.name not in ("parent", "name")]
    params.append(inspect.Parameter("rngs", inspect.Parameter.KEYWORD_ONLY,
                                    annotation="nnx.Rngs"))
    params += [p for p in inspect.signature(cls.__init__).parameters.values()
               if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name != "rngs"]
    cls.__signature__ = inspect.Signature(params)

  def __init__(self, *args: Any, rngs: nnx.Rngs | None = None, **kwargs: Any):
    if len(args) == 1 and not kwargs and isinstance(args[0], FromLinen):
      spec, values = args[0].spec, args[0].params
      declared = _linen_params(spec, None)
    else:
      if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"{type(self).__name__} needs rngs=nnx.Rngs(...) to initialise its"
                        f" parameters; got rngs={rngs!r}.")
      spec = self.linen_class(*args, **kwargs)
      declared = _linen_params(spec, rngs.params())
      values = {name: _unbox(v) for name, v in declared.items()}
    self.linen = spec
    self._param_names = tuple(sorted(declared))
    for name in self._param_names:
      setattr(self, name, _to_param(values[name], declared[name], spec))

  def _apply(self, method: str, *args: Any, rngs: dict[str, jax.Array] | None = None,
             **kwargs: Any) -> Any:
    params = {name: getattr(self, name)[...] for name in self._param_names}
    return self.linen.apply({"params": params}, *args, method=method, rngs=rngs, **kwargs)


def params_from_linen(spec: nn.Module, params: Any) -> dict[str, jax.Array]:
  """``params`` (``init``'s variables or their ``"params"``) checked against ``spec``'s."""
  if not isinstance(params, Mapping):
    raise TypeError(f"params must be a mapping of parameter names to arrays; got"
                    f" {type(params).__name__}.")
  if set(params) == {"params"} and isinstance(params["params"], Mapping):
    params = params["params"]
  declared = _linen_params(spec, None)
  if set(params) != set(declared):
    raise ValueError(f"params must have exactly the parameters of {type(spec).__name__}"
                     f" {sorted(declared)}; got {sorted(params)}.")
  values = {}
  for name, like in declared.items():
    value = _unbox(params[name])
    want = tuple(_unbox(like).shape)
    if tuple(jnp.shape(value)) != want:
      raise ValueError(f"params[{name!r}] must have shape {want}; got"
                       f" {tuple(jnp.shape(value))}.")
    values[name] = jnp.asarray(value)
  return values


def linen_params(nnx_head: Head) -> dict[str, Any]:
  """The linen ``params`` of ``nnx_head``, boxed where the params carry linen metadata."""
  out = {}
  for name in nnx_head._param_names:  # pylint: disable=protected-access
    var = getattr(nnx_head, name)
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

"""torch / Paddle ``AdaptiveLogSoftmaxWithLoss`` weights -> the params of
:class:`jax_bigsoftmax.AdaptiveLogSoftmaxWithLoss`."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _strip(state_dict: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
  if not isinstance(state_dict, Mapping):
    raise TypeError(
        f"state_dict must be a mapping of names to arrays; got"
        f" {type(state_dict).__name__}."
    )
  out = {}
  for k, v in state_dict.items():
    if k.startswith(prefix):
      out[k[len(prefix):]] = np.asarray(v)
  return out


def _tail_indices(keys, pattern_prefix: str) -> list[int]:
  idx = set()
  for k in keys:
    if k.startswith(pattern_prefix):
      head = k[len(pattern_prefix):].split(".")[0]
      if head.isdigit():
        idx.add(int(head))
  ids = sorted(idx)
  if ids != list(range(len(ids))):
    raise ValueError(
        f"state_dict tail entries {pattern_prefix}<i> must be numbered 0..n-1;"
        f" got {ids}."
    )
  return ids


def _need(sd: Mapping[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
  if key not in sd:
    raise ValueError(
        f"state_dict has no entry {key!r}; keys present: {sorted(sd)}."
    )
  v = sd[key]
  if v.ndim != ndim:
    raise ValueError(f"state_dict[{key!r}] must have rank {ndim}; got shape {v.shape}.")
  return v


def _finish(params: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  d, h = params["head_weight"].shape
  n_tail = sum(k.endswith("_proj") for k in params)
  if "head_bias" in params and params["head_bias"].shape != (h,):
    raise ValueError(f"head bias must have shape ({h},); got {params['head_bias'].shape}.")
  for i in range(n_tail):
    p, o = params[f"tail_{i}_proj"], params[f"tail_{i}_out"]
    if p.shape[0] != d or o.shape[0] != p.shape[1]:
      raise ValueError(
          f"tail {i}: projection {p.shape} and output {o.shape} do not chain"
          f" from in_features={d}."
      )
  return {k: jnp.asarray(v) for k, v in params.items()}


def adaptive_params_from_torch(
    state_dict: Mapping[str, Any], *, prefix: str = ""
) -> dict[str, jax.Array]:
  """Params of :class:`AdaptiveLogSoftmaxWithLoss` from a torch state dict.

  Maps ``head.weight [H, D]`` -> ``head_weight [D, H]``, ``head.bias`` ->
  ``head_bias``, ``tail.{i}.0.weight [hsz, D]`` -> ``tail_{i}_proj [D, hsz]``
  and ``tail.{i}.1.weight [osz, hsz]`` -> ``tail_{i}_out [hsz, osz]``.

  Args:
    state_dict: ``{name: numpy array}``, e.g. ``{k: v.numpy() for k, v in
      m.state_dict().items()}``.
    prefix: leading part of the keys to strip (e.g. ``"decoder.asm."``).

  Returns:
    The ``params`` collection: ``module.apply({"params": p}, x, y)``.
  """
  sd = _strip(state_dict, prefix)
  params = {"head_weight": _need(sd, "head.weight", 2).T}
  if "head.bias" in sd:
    params["head_bias"] = _need(sd, "head.bias", 1)
  for i in _tail_indices(sd, "tail."):
    params[f"tail_{i}_proj"] = _need(sd, f"tail.{i}.0.weight", 2).T
    params[f"tail_{i}_out"] = _need(sd, f"tail.{i}.1.weight", 2).T
  return _finish(params)


def adaptive_params_from_paddle(
    state_dict: Mapping[str, Any], *, prefix: str = ""
) -> dict[str, jax.Array]:
  """Params of :class:`AdaptiveLogSoftmaxWithLoss` from Paddle weights.

  Paddle's layouts are ours: ``head_weight [D, H]``, ``head_bias [H]``, and
  ``tail_weights.{i}.0 [D, hsz]`` / ``tail_weights.{i}.1 [hsz, osz]``.
  Paddle 3.x keeps the tail weights in a plain Python list, so
  ``layer.state_dict()`` holds only the head; add the tails yourself::

    sd = {k: v.numpy() for k, v in layer.state_dict().items()}
    sd |= {f"tail_weights.{i}.{j}": w.numpy()
           for i, pair in enumerate(layer.tail_weights)
           for j, w in enumerate(pair)}

  (A ``"tail_weights"`` entry holding the nested list of pairs also works.)

  Args:
    state_dict: ``{name: numpy array}`` as above.
    prefix: leading part of the keys to strip.

  Returns:
    The ``params`` collection: ``module.apply({"params": p}, x, y)``.
  """
  if not isinstance(state_dict, Mapping):
    raise TypeError(
        f"state_dict must be a mapping of names to arrays; got"
        f" {type(state_dict).__name__}."
    )
  raw = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  pairs = raw.pop("tail_weights", ())
  for i, pair in enumerate(pairs):
    for j, w in enumerate(pair):
      raw[f"tail_weights.{i}.{j}"] = w
  sd = {k: np.asarray(v) for k, v in raw.items() if v is not None}
  params = {"head_weight": _need(sd, "head_weight", 2)}
  if "head_bias" in sd:
    params["head_bias"] = _need(sd, "head_bias", 1)
  for i in _tail_indices(sd, "tail_weights."):
    params[f"tail_{i}_proj"] = _need(sd, f"tail_weights.{i}.0", 2)
    params[f"tail_{i}_out"] = _need(sd, f"tail_weights.{i}.1", 2)
  return _finish(params)

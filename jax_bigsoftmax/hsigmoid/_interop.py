"""Paddle ``HSigmoidLoss`` weights -> the params of :class:`jax_bigsoftmax.HSigmoidLoss`."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def hsigmoid_params_from_paddle(state_dict: Mapping[str, Any]) -> dict[str, jax.Array]:
  """``paddle.nn.HSigmoidLoss.state_dict()`` -> ``params`` of :class:`HSigmoidLoss`.

  Values may be Paddle tensors or numpy arrays (convert with ``.numpy()``);
  keys may carry a prefix (``"head.weight"``). Without a bias entry (Paddle's
  ``bias_attr=False``) build the module with ``use_bias=False``.

  Returns:
    ``{"weight": [num_nodes, D], "bias": [num_nodes, 1]}`` (bias only when
    present): use as ``module.apply({"params": params}, ...)``.

  Examples:
    >>> import numpy as np
    >>> from jax_bigsoftmax import interop
    >>> sd = {"weight": np.zeros((9, 4), np.float32), "bias": np.zeros((9, 1), np.float32)}
    >>> sorted(interop.hsigmoid_params_from_paddle(sd))
    ['bias', 'weight']
  """
  found = {}
  for key, value in state_dict.items():
    leaf = str(key).rsplit(".", 1)[-1]
    if leaf in ("weight", "bias"):
      if leaf in found:
        raise ValueError(f"state_dict has more than one '{leaf}' entry (e.g. {key!r}); pass the"
                         " HSigmoidLoss layer's own state_dict.")
      found[leaf] = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
  if "weight" not in found:
    raise ValueError(f"state_dict has no 'weight' entry; got keys {sorted(state_dict)}.")
  w = found["weight"]
  if w.ndim != 2:
    raise ValueError(f"state_dict['weight'] must have rank 2 [num_nodes, D]; got {w.shape}.")
  params = {"weight": jnp.asarray(w)}
  if "bias" in found:
    b = found["bias"]
    if b.shape not in ((w.shape[0], 1), (w.shape[0],)):
      raise ValueError(f"state_dict['bias'] must have shape ({w.shape[0]}, 1); got {b.shape}.")
    params["bias"] = jnp.asarray(b.reshape(w.shape[0], 1))
  return params

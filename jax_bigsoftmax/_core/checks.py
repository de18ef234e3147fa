"""Shared argument validation and dtype policy for every loss family.

Static metadata (rank, shape, dtype, options) is checked at trace time and
raises ``ValueError``/``TypeError`` naming the argument, the value seen and the
value expected. Label *values* are data: they are checked eagerly when the
labels are concrete (not traced), and inside ``jit`` by a
``checkify.debug_check`` that :func:`checked` turns into an error; otherwise
an out-of-range label yields NaN, never a plausible number. Integer ids are
range-checked at their own width, never after narrowing to int32.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

_REDUCTIONS = ("mean", "sum", "none")


def checked(fn: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
  """Wraps ``fn`` so that label-range checks raise even under ``jit``.

  The returned function is ``checkify.checkify(fn, errors=user_checks)``: it
  returns ``(error, out)``; call ``error.throw()`` to raise a clear
  ``JaxRuntimeError`` when any label (or tree node, or sample id) handed to a
  jax_bigsoftmax function inside ``fn`` was out of range.

  Every traced range check is a ``checkify.debug_check``, part of the traced
  function itself: a no-op when the function is not checkified, an error
  under :func:`checked`. Nothing depends on *when* a function was traced, so
  ``checked(g)`` of an already-jitted ``g`` checks it, and leaves ``g``'s
  own (unchecked) calls working as before.

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> f = jax.jit(jbs.checked(lambda x, y: jbs.cross_entropy(x, y)))
    >>> err, loss = f(jnp.zeros((2, 3)), jnp.array([0, 2]))
    >>> err.throw()  # no error: labels are in range
    >>> err, loss = f(jnp.zeros((2, 3)), jnp.array([0, 7]))
    >>> print(err.get().splitlines()[0])
    labels must lie in [0, 3); found out-of-range value 7 (`check` failed)
  """
  return checkify.checkify(fn, errors=checkify.user_checks)


def is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def index_dtype(x: Any) -> np.dtype:
  """The integer dtype ``x`` has (or will have once JAX holds it)."""
  if isinstance(x, (jax.Array, jax.core.Tracer)):
    return np.dtype(x.dtype)
  dtype = getattr(x, "dtype", None)
  return np.dtype(jax.dtypes.canonicalize_dtype(np.result_type(x) if dtype is None else dtype))


def check_ignore_index(ignore_index: Any, labels: Any, name: str = "labels") -> None:
  """``ignore_index`` must be a Python int that the labels' dtype can hold.

  A value the dtype cannot hold (``2**40`` for int32 labels) would otherwise
  overflow inside JAX or, for NumPy int64 labels narrowed to int32, wrap onto
  a real class.
  """
  if ignore_index is None:
    return
  if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
    raise TypeError(f"ignore_index must be a Python int; got {ignore_index!r} of type"
                    f" {type(ignore_index).__name__}.")
  dtype = index_dtype(labels)
  if not jnp.issubdtype(dtype, jnp.integer):
    return  # the caller's dtype check names the labels
  info = np.iinfo(dtype)
  if not info.min <= int(ignore_index) <= info.max:
    raise ValueError(
        f"ignore_index={int(ignore_index)} does not fit in the dtype of {name} ({dtype}, range"
        f" [{info.min}, {info.max}]); use an ignore_index in that range (or int64 {name} with"
        " jax_enable_x64).")


def addressable_chunks(x: Any) -> list[tuple[np.ndarray, tuple[int, ...]]]:
  """Host values of ``x`` this process can read, with their offsets in ``x``.

  A NumPy array or a fully addressable ``jax.Array`` is one chunk (NumPy
  values keep their own width: int64 is not narrowed). A global array that
  spans other processes' devices is never fetched: only its addressable
  shards are returned (so eager checks look at the local part only).
  """
  if getattr(x, "is_fully_addressable", True) is False:
    chunks = []
    for shard in x.addressable_shards:
      offset = tuple(0 if s.start is None else s.start for s in shard.index)
      chunks.append((np.asarray(shard.data), offset))
    return chunks
  arr = np.asarray(x)
  return [(arr, (0,) * arr.ndim)]


def as_index(ids: Any) -> jax.Array:
  """``jnp.asarray`` for integer ids that never wraps.

  Host (NumPy / Python) values wider than JAX's canonical integer (int64
  without ``jax_enable_x64``) are clipped to its range first, so
  ``2**32 + 1`` stays out of range instead of becoming ``1``.
  """
  if isinstance(ids, (jax.Array, jax.core.Tracer)):
    return ids
  arr = np.asarray(ids)
  dtype = np.dtype(jax.dtypes.canonicalize_dtype(arr.dtype))
  if jnp.issubdtype(arr.dtype, jnp.integer) and dtype != arr.dtype:
    info = np.iinfo(dtype)
    arr = np.clip(arr, info.min, info.max).astype(dtype)
  return jnp.asarray(arr)


def saturate_int32(ids: Any) -> jax.Array:
  """int32 copy of integer ``ids`` that clips instead of wrapping.

  ``2**32 + 1`` becomes ``2**31 - 1`` (still out of range for any real table)
  rather than ``1``. Compute range masks on the original ids; use this only
  for the gather/scatter indices.
  """
  ids = as_index(ids)
  info, i32 = jnp.iinfo(ids.dtype), jnp.iinfo(jnp.int32)
  if info.min < i32.min or info.max > i32.max:
    lo = max(info.min, i32.min)
    ids = jnp.clip(ids, jnp.asarray(lo, ids.dtype), jnp.asarray(i32.max, ids.dtype))
  return ids.astype(jnp.int32)


def check_labels_in_range(
    labels: Any,
    upper: int,
    *,
    name: str,
    ignore_index: int | None = None,
    lower: int = 0,
) -> None:
  """Checks ``lower <= labels < upper`` (entries equal to ignore_index pass).

  Pass the labels as the caller received them (before ``jnp.asarray``), so
  NumPy int64 values are checked before JAX narrows them to int32.

  Raises ``ValueError`` at once for concrete labels (looking only at the
  shards this process can address); for traced labels emits a
  ``checkify.debug_check`` (an error under :func:`checked`, a no-op
  otherwise: callers turn out-of-range labels into NaN).
  """
  check_ignore_index(ignore_index, labels, name)
  if not is_traced(labels):
    for arr, offset in addressable_chunks(labels):
      bad = (arr < lower) | (arr >= upper)
      if ignore_index is not None:
        bad &= arr != ignore_index
      if bad.any():
        where = (np.argwhere(bad)[:3] + np.asarray(offset, np.int64)).tolist()
        vals = arr[bad][:3].tolist()
        extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise ValueError(
            f"{name} must lie in [{lower}, {upper}){extra}; got {vals} at"
            f" positions {where} (showing at most 3)."
        )
    return
  labels = jnp.asarray(labels)
  if labels.size == 0:
    return
  ok = (labels >= lower) & (labels < upper)
  if ignore_index is not None:
    ok |= labels == ignore_index
  flat_ok, flat = ok.ravel(), labels.ravel()
  checkify.debug_check(
      jnp.all(ok),
      f"{name} must lie in [{lower}, {upper}); found out-of-range value {{v}}",
      v=flat[jnp.argmin(flat_ok)],
  )


def check_reduction(reduction: str) -> None:
  if reduction not in _REDUCTIONS:
    raise ValueError(
        f"reduction must be one of {_REDUCTIONS}; got {reduction!r}."
    )


def check_floating(name: str, x: Any) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array; got dtype {dtype}.")


def check_integer(name: str, x: Any) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array; got dtype {dtype}.")


def check_ndim(name: str, x: Any, *, ndim: int | None = None, min_ndim: int | None = None) -> None:
  shape = jnp.shape(x)
  if ndim is not None and len(shape) != ndim:
    raise ValueError(
        f"{name} must have rank {ndim}; got rank {len(shape)} (shape {tuple(shape)})."
    )
  if min_ndim is not None and len(shape) < min_ndim:
    raise ValueError(
        f"{name} must have rank >= {min_ndim}; got rank {len(shape)} (shape {tuple(shape)})."
    )


def check_shape(name: str, x: Any, expected: Sequence[int | None], what: str = "") -> None:
  """Checks ``x.shape`` against ``expected`` (None entries match anything)."""
  shape = tuple(jnp.shape(x))
  exp = tuple(expected)
  ok = len(shape) == len(exp) and all(e is None or e == s for s, e in zip(shape, exp))
  if not ok:
    pretty = "(" + ", ".join("*" if e is None else str(e) for e in exp) + ("," if len(exp) == 1 else "") + ")"
    why = f" ({what})" if what else ""
    raise ValueError(f"{name} must have shape {pretty}{why}; got {shape}.")


def check_batch_match(
    input_name: str, input_shape: Sequence[int], label_name: str, label_shape: Sequence[int]
) -> None:
  """Labels ``[...]`` must match the input's leading dims ``[..., D]``."""
  lead = tuple(input_shape[:-1])
  if tuple(label_shape) != lead:
    raise ValueError(
        f"{label_name} must have shape {lead} (the leading dims of {input_name}"
        f" {tuple(input_shape)}); got {tuple(label_shape)}."
    )


def check_label_smoothing(label_smoothing: float) -> None:
  if is_traced(label_smoothing):
    return
  if not 0.0 <= float(label_smoothing) <= 1.0:
    raise ValueError(
        f"label_smoothing must be in [0.0, 1.0]; got {label_smoothing}."
    )


def compute_dtype(*xs: Any) -> jnp.dtype:
  """float32 for half-precision inputs, else the inputs' float dtype."""
  dtype = jnp.result_type(*xs)
  if not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype


def promote_head_operands(inputs: Any, *params: Any, dtype: Any = None) -> tuple[Any, ...]:
  """Inputs and parameters of a head cast to one floating computation dtype.

  ``dtype=None``: ``jnp.result_type(inputs, *params)`` (as ``flax.linen.Dense``
  promotes), so parameters are never cast down to the inputs' dtype: integer
  inputs are promoted to the parameters' float dtype, half-precision inputs
  meet float32 parameters in float32. An explicit ``dtype`` (a mixed-precision
  choice) must be floating. ``None`` params pass through.
  """
  present = [p for p in params if p is not None]
  if dtype is None:
    dtype = jnp.result_type(inputs, *present)
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"the head's computation dtype must be floating; got {dtype} (inputs dtype"
                    f" {jnp.result_type(inputs)}, dtype attribute {dtype}).")
  return tuple(None if a is None else jnp.asarray(a, dtype) for a in (inputs, *params))


def check_div_value(div_value: Any) -> float:
  """Adaptive softmax's ``div_value``: a finite real number > 0 (hsz = D // div**(i+1))."""
  if isinstance(div_value, bool) or not isinstance(div_value, (int, float, np.integer,
                                                               np.floating)):
    raise TypeError(f"div_value must be a real number; got {div_value!r} of type"
                    f" {type(div_value).__name__}.")
  if not (np.isfinite(div_value) and div_value > 0):
    raise ValueError(f"div_value must be a finite number > 0; got {div_value!r}.")
  return float(div_value)


def check_positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int; got {value!r}.")
  return int(value)


def check_count(name: str, v: Any, lo: int = 1) -> None:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
    raise ValueError(f"{name} must be an int >= {lo}; got {v!r}.")


def check_bool(name: str, v: Any) -> None:
  if not isinstance(v, (bool, np.bool_)):
    raise TypeError(f"{name} must be a Python bool; got {v!r}.")

"""Shared argument validation and dtype policy for every loss family.

Static metadata (rank, shape, dtype, options) is checked at trace time and
raises ``ValueError``/``TypeError`` naming the argument, the value seen and the
value expected. Label *values* are data: they are checked eagerly when the
labels are concrete (not traced), and inside ``jit`` only when the function is
wrapped by :func:`checked` (``checkify``); otherwise an out-of-range label
yields NaN, never a plausible number.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

_REDUCTIONS = ("mean", "sum", "none")

_state = threading.local()


def _checks_enabled() -> bool:
  return getattr(_state, "enabled", 0) > 0


@contextlib.contextmanager
def _enable_checks():
  _state.enabled = getattr(_state, "enabled", 0) + 1
  try:
    yield
  finally:
    _state.enabled -= 1


def checked(fn: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
  """Wraps ``fn`` so that label-range checks run even under ``jit``.

  The returned function has ``checkify.checkify``'s calling convention: it
  returns ``(error, out)``; call ``error.throw()`` to raise a clear
  ``JaxRuntimeError`` when any label handed to a jax_bigsoftmax loss inside
  ``fn`` was out of range.

  Examples:
    >>> import jax, jax.numpy as jnp, jax_bigsoftmax as jbs
    >>> f = jax.jit(jbs.checked(lambda x, y: jbs.cross_entropy(x, y)))
    >>> err, loss = f(jnp.zeros((2, 3)), jnp.array([0, 2]))
    >>> err.throw()  # no error: labels are in range
  """

  @functools.wraps(fn)
  def with_checks(*args, **kwargs):
    with _enable_checks():
      return fn(*args, **kwargs)

  return checkify.checkify(with_checks, errors=checkify.user_checks)


def is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def check_labels_in_range(
    labels: jax.Array,
    upper: int,
    *,
    name: str,
    ignore_index: int | None = None,
    lower: int = 0,
) -> None:
  """Checks ``lower <= labels < upper`` (entries equal to ignore_index pass).

  Raises ``ValueError`` at once for concrete labels (skipped for global arrays
  that are not fully addressable by this process); emits a ``checkify`` check
  for traced labels inside :func:`checked`; otherwise does nothing (callers
  turn out-of-range labels into NaN).
  """
  if (isinstance(labels, jax.Array) and not is_traced(labels)
      and not labels.is_fully_addressable):
    return  # a global array spanning other processes: its values cannot be fetched here
  if not is_traced(labels):
    arr = np.asarray(labels)
    bad = (arr < lower) | (arr >= upper)
    if ignore_index is not None:
      bad &= arr != ignore_index
    if bad.any():
      where = np.argwhere(bad)[:3].tolist()
      vals = arr[bad][:3].tolist()
      extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
      raise ValueError(
          f"{name} must lie in [{lower}, {upper}){extra}; got {vals} at"
          f" positions {where} (showing at most 3)."
      )
  elif _checks_enabled():
    ok = (labels >= lower) & (labels < upper)
    if ignore_index is not None:
      ok |= labels == ignore_index
    checkify.check(
        jnp.all(ok),
        f"{name} must lie in [{lower}, {upper}); found out-of-range value {{v}}",
        v=jnp.where(ok, lower, labels).ravel()[jnp.argmin(ok.ravel())],
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

"""Sharding helpers: values typed inside ``shard_map``, and where a computation runs.

Inside ``shard_map`` every value is typed with the mesh axes it varies over.
Loop carries and custom-VJP cotangents must keep their type, so initial
values built from constants are cast to vary like the operands they combine
with. Outside ``shard_map`` these helpers do nothing.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def varying_axes(x) -> frozenset:
  aval = jax.typeof(x)
  mat = getattr(aval, "manual_axis_type", None)  # newer jax
  if mat is not None:
    return frozenset(mat.varying)
  return frozenset(getattr(aval, "vma", frozenset()))


def varying_like(init, *refs):
  """Marks loop-carry initial values as varying over the mesh axes the operands
  vary over (needed inside ``shard_map``; a no-op elsewhere)."""
  vma = frozenset().union(*(varying_axes(r) for r in jax.tree.leaves(refs)))
  return make_varying(init, vma)


def make_varying(tree, axes):
  """``lax.pcast(..., to="varying")`` every leaf over the ``axes`` it lacks."""
  def cast(a):
    missing = tuple(sorted(frozenset(axes) - varying_axes(a)))
    return lax.pcast(a, missing, to="varying") if missing else a

  return jax.tree.map(cast, tree)


# --- placement of a vocabulary-sharded computation --------------------------------

class Placement(NamedTuple):
  """Where a vocabulary-parallel computation runs: ``weight`` rows split over
  ``vocab_axis`` of ``mesh``, input rows over ``data_axis`` (optional)."""
  mesh: Mesh
  vocab_axis: str
  data_axis: str | None = None

  @property
  def num_shards(self) -> int:
    return self.mesh.shape[self.vocab_axis]

  @property
  def axes(self) -> tuple[str, ...]:
    return tuple(a for a in (self.data_axis, self.vocab_axis) if a is not None)

  def local_rows(self, n: int) -> int:
    return n // (self.mesh.shape[self.data_axis] if self.data_axis else 1)


def check_mesh_axes(mesh: Any, vocab_axis: str, data_axis: str | None) -> Placement:
  """The :class:`Placement` of a vocabulary-parallel function's arguments, checked."""
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
  for name, axis in (("vocab_axis", vocab_axis), ("data_axis", data_axis)):
    if axis is not None and axis not in mesh.axis_names:
      raise ValueError(f"{name}={axis!r} is not an axis of the mesh {mesh.axis_names}.")
  if vocab_axis == data_axis:
    raise ValueError(f"vocab_axis and data_axis must differ; both are {vocab_axis!r}.")
  return Placement(mesh, vocab_axis, data_axis)


def check_divides(what: str, count: int, mesh: Mesh, axis: str) -> None:
  if count % mesh.shape[axis]:
    raise ValueError(f"{what} {count}, which does not divide by the size of mesh axis"
                     f" {axis!r} ({mesh.shape[axis]}).")


def check_rows_divide(n: int, placement: Placement) -> None:
  axis = placement.data_axis
  if axis is not None and n % placement.mesh.shape[axis]:
    raise ValueError(f"inputs have {n} rows, which does not divide by the size of mesh"
                     f" axis {axis!r} ({placement.mesh.shape[axis]}).")


def head_placement(mesh: Any, vocab_axis: str | None, data_axis: str | None) -> Placement | None:
  """A head's ``mesh``/``vocab_axis``/``data_axis`` configuration, checked once.

  None (unsharded) without ``vocab_axis``. A sharded head needs a mesh with
  Auto axes: it places its params with sharding constraints.
  """
  if vocab_axis is None:
    if data_axis is not None:
      raise ValueError(f"data_axis={data_axis!r} needs vocab_axis (the head is sharded on the"
                       " vocabulary); got vocab_axis=None.")
    return None
  if not isinstance(mesh, Mesh):
    raise TypeError(f"vocab_axis={vocab_axis!r} needs mesh, a jax.sharding.Mesh; got"
                    f" {type(mesh).__name__}.")
  types = getattr(mesh, "axis_types", None) or ()
  if any(t != jax.sharding.AxisType.Auto for t in types):
    raise ValueError(f"mesh must have Auto axes (the heads place their params with sharding"
                     f" constraints), e.g. jax.make_mesh(shape, names, axis_types="
                     f"(jax.sharding.AxisType.Auto,) * len(names)); got axis_types={types}.")
  return check_mesh_axes(mesh, vocab_axis, data_axis)


# Bias of a padding row: exp(PAD_LOGIT - max) is exactly 0, so a padded row adds
# nothing to any sum of exp and never wins an arg-max.
PAD_LOGIT = -1e9


def padded_size(vocab: int, num_shards: int) -> int:
  return -(-vocab // num_shards) * num_shards


def pad_vocab(weight: jax.Array, bias: jax.Array | None, num_shards: int, *,
              force_bias: bool = False) -> tuple[jax.Array, jax.Array | None]:
  """Pads ``weight`` ``[V, D]`` (and ``bias``) to a multiple of ``num_shards`` rows.

  Padding rows have weight 0 and bias :data:`PAD_LOGIT`; a bias is created
  when padding is needed (or ``force_bias``). Without padding the arrays are
  returned as they are.
  """
  vocab = weight.shape[0]
  extra = padded_size(vocab, num_shards) - vocab
  if extra == 0 and not (force_bias and bias is None):
    return weight, bias
  if bias is None:
    bias = jnp.zeros((vocab,), weight.dtype)
  weight = jnp.pad(weight, ((0, extra), (0, 0)))
  bias = jnp.pad(bias, (0, extra), constant_values=PAD_LOGIT)
  return weight, bias


def constrain_vocab_sharded(x: jax.Array, placement: Placement) -> jax.Array:
  """Places ``[..., V]`` sharded on V (and its leading rows on ``data_axis``)."""
  mesh, data_axis = placement.mesh, placement.data_axis
  spec = P(*([None] * (x.ndim - 1)), placement.vocab_axis)
  if data_axis is not None and x.ndim > 1 and x.shape[0] % mesh.shape[data_axis] == 0:
    spec = P(data_axis, *([None] * (x.ndim - 2)), placement.vocab_axis)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

"""Helpers for code that must also run inside ``shard_map``.

Inside ``shard_map`` every value is typed with the mesh axes it varies over.
Loop carries and custom-VJP cotangents must keep their type, so initial
values built from constants are cast to vary like the operands they combine
with. Outside ``shard_map`` these helpers do nothing.
"""
from __future__ import annotations

import jax
from jax import lax


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

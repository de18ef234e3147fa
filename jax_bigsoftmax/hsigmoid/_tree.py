"""Trees for the hierarchical sigmoid: Paddle's SimpleCode tree and Huffman trees.

A tree is described, as in Paddle, leaf to root: for class ``c`` position
``j`` of its path names the row of ``weight`` (a non-leaf node) at height
``j + 1`` above the leaf and the bit (0: left, 1: right) of the branch taken
there. Tables are padded with ``-1``; a negative entry in ``path_table`` ends
the path.

The default tree is never materialised by the losses: its nodes and bits are
computed from the class id with shifts (``_default_paths``), as Paddle's
``SimpleCode`` does, so a 1M-class tree costs no constant tables.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jax_bigsoftmax._core import checks as _checks


def check_num_classes(num_classes, name: str = "num_classes") -> int:
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
    raise TypeError(f"{name} must be a Python int; got {num_classes!r}"
                    f" of type {type(num_classes).__name__}.")
  if num_classes < 2:
    raise ValueError(f"Expected {name} >= 2 (got {num_classes}).")
  return int(num_classes)


def default_code_length(num_classes: int) -> int:
  """Paddle's ``FindLastSet(num_classes - 1)``: the longest default path."""
  return int(num_classes - 1).bit_length()


def default_paths(classes: jax.Array, num_classes: int):
  """Nodes, bits and validity ``[..., L]`` of the SimpleCode paths of ``classes``.

  ``code = c + num_classes``; position ``j`` is row ``(code >> (j+1)) - 1``
  with bit ``(code >> j) & 1``, valid while ``code >> (j+1) > 0``.
  """
  length = default_code_length(num_classes)
  code = classes.astype(jnp.int32)[..., None] + num_classes
  j = jnp.arange(length, dtype=jnp.int32).reshape((1,) * classes.ndim + (length,))
  prefix = jnp.right_shift(code, j + 1)
  valid = prefix > 0
  nodes = jnp.where(valid, prefix - 1, 0)
  bits = valid & (jnp.bitwise_and(jnp.right_shift(code, j), 1) == 1)
  return nodes, bits, valid


def table_paths(path_table: jax.Array, path_code: jax.Array):
  """Nodes, bits and validity ``[..., L]`` of explicit tables.

  A position is valid while no negative ``path_table`` entry came before it
  (Paddle's ``CustomCode::get_length``); any non-zero code is bit 1.
  """
  path_table = _checks.as_index(path_table)
  valid = lax.cummin((path_table >= 0).astype(jnp.int32), axis=path_table.ndim - 1) > 0
  # Saturate, never wrap: an int64 node 2**32 + 1 must stay out of range.
  nodes = _checks.saturate_int32(jnp.where(valid, path_table, 0))
  bits = valid & (_checks.as_index(path_code) != 0)
  return nodes, bits, valid


def as_tables(path_table, path_code):
  """Tables as JAX integer arrays, host int64 values clipped rather than wrapped."""
  if path_table is None:
    return None, None
  return _checks.as_index(path_table), _checks.as_index(path_code)


def check_tables(path_table, path_code, lead, *, per: str):
  """Both or neither, integer, same shape ``lead + (L,)``."""
  if (path_table is None) != (path_code is None):
    given, missing = ("path_table", "path_code") if path_code is None else ("path_code", "path_table")
    raise ValueError(f"{given} was given without {missing}: a custom tree needs both"
                     " (or neither, for the default tree).")
  if path_table is None:
    return
  _checks.check_integer("path_table", path_table)
  _checks.check_integer("path_code", path_code)
  pt, pc = tuple(jnp.shape(path_table)), tuple(jnp.shape(path_code))
  if pt != pc:
    raise ValueError(f"path_table and path_code must have the same shape; got"
                     f" path_table {pt} and path_code {pc}.")
  if lead is not None and (len(pt) != len(lead) + 1 or pt[:-1] != tuple(lead)):
    raise ValueError(f"path_table must have shape {tuple(lead) + ('L',)} (one path per"
                     f" {per}); got {pt}.")
  if pt[-1] < 1:
    raise ValueError(f"path_table must have at least one column; got shape {pt}.")


def check_nodes_in_range(path_table, num_nodes: int) -> None:
  """Node rows on a path (before its first negative entry) must be < ``num_nodes``.

  Concrete tables: ``ValueError`` at once (addressable shards only, at the
  tables' own integer width). Traced tables: a ``checkify.debug_check``, an
  error under :func:`jax_bigsoftmax.checked` (callers give NaN otherwise).
  """
  if _checks.is_traced(path_table):
    valid = lax.cummin((path_table >= 0).astype(jnp.int32), axis=path_table.ndim - 1) > 0
    on_path = jnp.where(valid, path_table, 0)
    _checks.check_labels_in_range(on_path, num_nodes, name="path_table (node rows of weight)")
    return
  for table, offset in _checks.addressable_chunks(path_table):
    valid = np.minimum.accumulate(table >= 0, axis=-1)
    bad = valid & (table >= num_nodes)
    if bad.any():
      pos = (np.argwhere(bad)[:3] + np.asarray(offset, np.int64)).tolist()
      vals = table[bad][:3].tolist()
      raise ValueError(f"path_table names node {vals} at positions {pos}, but weight has only"
                       f" {num_nodes} rows (node indices must lie in [0, {num_nodes})).")


def default_tree(num_classes: int) -> tuple[jax.Array, jax.Array]:
  """Paddle's default (SimpleCode) tree as per-class tables.

  Class ``c`` is encoded ``code = c + num_classes``; position ``j`` of its path
  is the non-leaf node (row of ``weight``) ``(code >> (j + 1)) - 1`` and its
  bit ``(code >> j) & 1``, for ``j < code.bit_length() - 1``. The tree has
  ``num_classes - 1`` non-leaf nodes; row 0 is the root.

  Args:
    num_classes: number of classes C (>= 2).

  Returns:
    ``(path_table, path_code)``, int32 ``[C, L]`` with
    ``L = (num_classes - 1).bit_length()``, padded with -1. Indexing them by
    the labels gives per-example tables equivalent to the default tree.

  Examples:
    >>> import jax_bigsoftmax as jbs
    >>> table, code = jbs.default_tree(3)
    >>> table.tolist(), code.tolist()
    ([[0, -1], [1, 0], [1, 0]], [[1, -1], [0, 0], [1, 0]])
  """
  c = check_num_classes(num_classes)
  code = np.arange(c, 2 * c, dtype=np.int64)[:, None]  # NumPy: no compile for a static table
  j = np.arange(default_code_length(c))[None, :]
  prefix = code >> (j + 1)
  valid = prefix > 0
  return (jnp.asarray(np.where(valid, prefix - 1, -1), jnp.int32),
          jnp.asarray(np.where(valid, (code >> j) & 1, -1), jnp.int32))


def huffman_tree(counts: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """Huffman tree from class frequencies (word2vec / fastText construction).

  The two least frequent nodes are merged repeatedly (two-queue method of
  word2vec's ``CreateBinaryTree`` over the classes sorted by decreasing count;
  ties keep the input order). The ``a``-th merge creates non-leaf node ``a``
  (row ``a`` of ``weight``); the root is node ``C - 2``. Of the two merged
  nodes, the less frequent takes bit 0 and the other bit 1. The expected code
  length ``sum_c p_c len_c`` is minimal over binary trees.

  Args:
    counts: ``[C]`` non-negative class counts or frequencies (concrete, C >= 2).

  Returns:
    ``(path_table, path_code)``, int32 ``[C, L]`` (L the longest code),
    leaf to root, padded with -1.

  Examples:
    >>> import jax_bigsoftmax as jbs
    >>> table, code = jbs.huffman_tree([5, 1, 1, 3])
    >>> table.tolist(), code.tolist()
    ([[2, -1, -1], [0, 1, 2], [0, 1, 2], [1, 2, -1]], [[1, -1, -1], [1, 0, 0], [0, 0, 0], [1, 0, -1]])

  References:
    Mikolov et al. 2013, "Distributed Representations of Words and Phrases
    and their Compositionality" (word2vec); Huffman 1952.
  """
  if _checks.is_traced(counts):
    raise TypeError("huffman_tree needs concrete counts (it builds a static tree);"
                    " got a traced array. Build the tree outside jit.")
  counts = np.asarray(counts)
  if counts.ndim != 1:
    raise ValueError(f"counts must have rank 1; got shape {counts.shape}.")
  if counts.shape[0] < 2:
    raise ValueError(f"counts must have at least 2 classes; got {counts.shape[0]}.")
  if not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)):
    raise TypeError(f"counts must be a real array; got dtype {counts.dtype}.")
  if not np.all(np.isfinite(counts)) or np.any(counts < 0):
    raise ValueError("counts must be finite and non-negative; got"
                     f" min {counts.min()} (finite: {bool(np.all(np.isfinite(counts)))}).")
  c = counts.shape[0]
  order = np.argsort(-counts, kind="stable")  # decreasing counts (word2vec's vocab order)
  weight = np.concatenate([counts[order].astype(np.float64), np.zeros(c - 1)])
  parent = np.zeros(2 * c - 1, np.int64)
  bit = np.zeros(2 * c - 1, np.int64)
  pos1, pos2 = c - 1, c  # leaves are read from the end (smallest), merges from c on

  def pop_min():
    nonlocal pos1, pos2
    if pos1 >= 0 and (pos2 >= c + a or weight[pos1] < weight[pos2]):
      pos1 -= 1
      return pos1 + 1
    pos2 += 1
    return pos2 - 1

  for a in range(c - 1):
    m1 = pop_min()
    m2 = pop_min()
    weight[c + a] = weight[m1] + weight[m2]
    parent[m1] = parent[m2] = c + a
    bit[m2] = 1
  root = 2 * c - 2
  paths = []
  for leaf in range(c):
    nodes, bits, cur = [], [], leaf
    while cur != root:
      nodes.append(parent[cur] - c)
      bits.append(bit[cur])
      cur = parent[cur]
    paths.append((nodes, bits))
  width = max(len(n) for n, _ in paths)
  table = -np.ones((c, width), np.int32)
  code = -np.ones((c, width), np.int32)
  for k, (nodes, bits) in enumerate(paths):
    table[order[k], : len(nodes)] = nodes
    code[order[k], : len(bits)] = bits
  return jnp.asarray(table), jnp.asarray(code)


# ---------------------------------------------------------------------------
# Tree structure for the arg-max search. Node ids: non-leaf rows 0..M-1, leaf
# of class c is M + c. ``children(ids, bit)`` gives a child id (-1: missing),
# ``min_class(ids)`` the smallest class under a node (for first-index ties).


def default_structure(num_classes: int):
  """Children and subtree minima of the SimpleCode tree, by shifts.

  Heap code of id k is k + 1: internal codes 1..C-1, leaf codes C..2C-1, so
  the child of id k along ``bit`` is id ``2k + 1 + bit`` in both cases.
  """
  c = num_classes

  def children(ids, bit):
    return 2 * ids + 1 + bit

  def bit_length(v):
    return 32 - lax.clz(v.astype(jnp.int32))

  def min_class(ids):
    q = ids + 1
    k = jnp.maximum(bit_length(jnp.int32(c)) - bit_length(q), 0)
    lo = jnp.left_shift(q, k)
    lo = jnp.where(lo >= c, lo, jnp.left_shift(lo, 1))
    return lo - c

  return children, min_class, jnp.int32(0)


def table_structure(path_table: jax.Array, path_code: jax.Array, num_nodes: int):
  """Children and subtree minima from per-class tables ``[C, L]`` (traceable)."""
  nodes, bits, valid = table_paths(path_table, path_code)
  c = nodes.shape[0]
  classes = jnp.arange(c, dtype=jnp.int32)
  below = jnp.concatenate([num_nodes + classes[:, None], nodes[:, :-1]], axis=1)
  parent = jnp.where(valid, nodes, num_nodes)  # out of bounds: dropped
  child = jnp.full((num_nodes, 2), -1, jnp.int32).at[parent, bits.astype(jnp.int32)].set(
      below, mode="drop")
  minc = jnp.full((num_nodes,), c, jnp.int32).at[parent].min(
      jnp.broadcast_to(classes[:, None], parent.shape), mode="drop")
  length0 = jnp.sum(valid[0])
  root = jnp.where(length0 > 0, nodes[0, jnp.maximum(length0 - 1, 0)], num_nodes)

  def children(ids, bit):
    return child[ids, bit]

  def min_class(ids):
    return jnp.where(ids >= num_nodes, ids - num_nodes, minc[jnp.clip(ids, 0, num_nodes - 1)])

  return children, min_class, root

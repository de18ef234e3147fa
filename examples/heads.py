"""Builds a jax_bigsoftmax output layer from a config, behind one interface.

Every head of the library has ``nll(x, labels)``, ``log_prob(x)`` and
``predict(x)``; :class:`Head` adds what a trainer needs on top:

* ``full``: ``jax_bigsoftmax.FullSoftmaxLoss`` (exact softmax, the baseline).
* ``adaptive``: ``jax_bigsoftmax.AdaptiveLogSoftmaxWithLoss`` with the
  configured cutoffs (the vocabulary is sorted by frequency).
* ``hsigmoid``: ``jax_bigsoftmax.HSigmoidLoss`` over the default complete
  binary tree (``hsigmoid_tree="default"``) or a Huffman tree built from the
  training counts with ``jax_bigsoftmax.huffman_tree`` (``"huffman"``).
* ``sampled``: ``jax_bigsoftmax.SampledSoftmaxLoss``: the sampled loss while
  training (rng stream ``"sampler"``), the exact full-softmax NLL otherwise.

Evaluation always uses exact normalised log-probabilities: for ``full``,
``adaptive`` and ``hsigmoid`` the training NLL already is one; for
``sampled`` the exact path is used whenever ``train=False``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jax_bigsoftmax as jbs

HEADS = ("full", "adaptive", "hsigmoid", "sampled")
TREES = ("default", "huffman")
_CLASS_NAMES = {
    "full": "FullSoftmaxLoss",
    "adaptive": "AdaptiveLogSoftmaxWithLoss",
    "hsigmoid": "HSigmoidLoss",
    "sampled": "SampledSoftmaxLoss",
}


# Config fields of the head (shared by every trainer).
SCHEMA = {
    "head": (str, lambda v: v in HEADS, f"one of {HEADS}"),
    "hsigmoid_tree": (str, lambda v: v in TREES, f"one of {TREES}"),
    "adaptive_cutoffs": ((tuple, list), lambda v: all(isinstance(c, int) and c > 0 for c in v),
                         "a sequence of positive ints"),
    "adaptive_div_value": ((int, float), lambda v: v > 0, "a float > 0"),
    "sampled_num_samples": (int, lambda v: v > 0, "an int > 0"),
}


def spec_from_config(config, *, num_classes: int, features: int, counts) -> "HeadSpec":
  """``make_head_spec`` with the options read from a config (see ``SCHEMA``)."""
  return make_head_spec(
      config.head, num_classes=num_classes, features=features, counts=counts,
      cutoffs=config.adaptive_cutoffs, div_value=config.adaptive_div_value,
      num_sampled=config.sampled_num_samples, tree=config.hsigmoid_tree)


class _Table:
  """A numpy table carried as a static (hashed by identity) module attribute."""

  def __init__(self, array: np.ndarray):
    self.array = np.asarray(array)

  def __repr__(self):
    return f"_Table(shape={self.array.shape})"


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """Everything needed to build a head (static: hashable, no arrays traced).

  Attributes:
    kind: one of ``HEADS``.
    num_classes: vocabulary size V.
    features: input feature size D.
    cutoffs: adaptive softmax cluster boundaries (without V).
    div_value: adaptive softmax projection size divisor.
    num_sampled: negatives per step for the sampled head.
    tree: hsigmoid tree, ``"default"`` or ``"huffman"``.
    path_table: Huffman per-class node table ``[V, L]`` (``tree="huffman"``).
    path_code: Huffman per-class bit table ``[V, L]``.
  """
  kind: str
  num_classes: int
  features: int
  cutoffs: tuple[int, ...] = ()
  div_value: float = 4.0
  num_sampled: int = 0
  tree: str = "default"
  path_table: _Table | None = None
  path_code: _Table | None = None
  mesh: Any = None
  vocab_axis: str | None = None
  data_axis: str | None = None


SHARDABLE = ("full", "adaptive", "sampled")


def shard_spec(spec: HeadSpec, mesh, *, vocab_axis: str, data_axis: str | None) -> HeadSpec:
  """``spec`` with its vocabulary sharded on ``vocab_axis`` of ``mesh`` (rows on ``data_axis``).

  Raises:
    ValueError: the head cannot be sharded (``hsigmoid``).
  """
  if spec.kind not in SHARDABLE:
    raise ValueError(f"head={spec.kind!r} cannot be sharded on a model axis; use one of "
                     f"{SHARDABLE} or a mesh_shape without model")
  return dataclasses.replace(spec, mesh=mesh, vocab_axis=vocab_axis, data_axis=data_axis)


def library_class(kind: str):
  """The jax_bigsoftmax module class implementing head ``kind``."""
  if kind not in HEADS:
    raise ValueError(f"head={kind!r} is not a known head; expected one of {HEADS}")
  name = _CLASS_NAMES[kind]
  cls = getattr(jbs, name, None)
  if cls is None:
    raise ValueError(
        f"head={kind!r} needs jax_bigsoftmax.{name}, which the installed "
        f"jax_bigsoftmax {jbs.__version__} does not provide")
  return cls


def make_head_spec(kind: str, *, num_classes: int, features: int, counts: np.ndarray | None = None,
                   cutoffs=(), div_value: float = 4.0, num_sampled: int = 0,
                   tree: str = "default") -> HeadSpec:
  """Validates the head options and precomputes what the head needs from the counts.

  Args:
    kind: ``"full" | "adaptive" | "hsigmoid" | "sampled"``.
    num_classes: vocabulary size.
    features: feature size of the model's output.
    counts: ``[V]`` training frequencies (needed for the Huffman tree).
    cutoffs: adaptive cutoffs, strictly increasing in ``[1, V-1]``.
    div_value: adaptive projection divisor (> 1 shrinks tail projections).
    num_sampled: sampled-softmax negatives, in ``[1, V-1]``.
    tree: ``"default"`` or ``"huffman"`` (hsigmoid only).

  Raises:
    ValueError: an option out of range or a head the library lacks.
  """
  library_class(kind)
  if num_classes < 2:
    raise ValueError(f"num_classes={num_classes} must be >= 2")
  table = code = None
  cutoffs = tuple(int(c) for c in cutoffs)
  if kind == "adaptive":
    if (not cutoffs or list(cutoffs) != sorted(set(cutoffs)) or cutoffs[0] < 1
        or cutoffs[-1] > num_classes - 1):
      raise ValueError(
          f"adaptive_cutoffs={cutoffs} must be non-empty, strictly increasing and "
          f"within [1, {num_classes - 1}] for a vocabulary of {num_classes} words; "
          "lower them or raise max_vocab")
  if kind == "sampled" and not 1 <= num_sampled < num_classes:
    raise ValueError(f"sampled_num_samples={num_sampled} must be in [1, {num_classes - 1}]")
  if kind == "hsigmoid":
    if tree not in TREES:
      raise ValueError(f"hsigmoid_tree={tree!r}; expected one of {TREES}")
    if tree == "huffman":
      if counts is None or len(counts) != num_classes:
        raise ValueError("a Huffman tree needs counts of length num_classes")
      table, code = jbs.huffman_tree(np.asarray(counts))
      table, code = _Table(np.asarray(table, np.int32)), _Table(np.asarray(code, np.int32))
  return HeadSpec(kind, num_classes, features, cutoffs, float(div_value), int(num_sampled),
                  tree, table, code)


class Head(nn.Module):
  """A config-chosen jax_bigsoftmax head with ``nll``, ``log_prob`` and ``predict``."""
  spec: HeadSpec

  def setup(self):
    s = self.spec
    cls = library_class(s.kind)
    shard = ({} if s.vocab_axis is None else
             dict(mesh=s.mesh, vocab_axis=s.vocab_axis, data_axis=s.data_axis))
    if s.kind == "full":
      self.impl = cls(s.num_classes, s.features, **shard)
    elif s.kind == "adaptive":
      self.impl = cls(s.features, s.num_classes, s.cutoffs, div_value=s.div_value, **shard)
      # hsz_i = features // div_value**(i+1) must stay >= 1 (checked by the head).
    elif s.kind == "hsigmoid":
      custom = s.tree == "huffman"
      # A custom tree has V-1 internal nodes; HSigmoidLoss then takes that count.
      self.impl = cls(s.features, s.num_classes - 1 if custom else s.num_classes,
                      is_custom=custom)
    else:
      self.impl = cls(s.num_classes, s.features, s.num_sampled, **shard)

  def _huffman(self) -> bool:
    return self.spec.kind == "hsigmoid" and self.spec.tree == "huffman"

  def _tables(self):
    """Per-class Huffman tables ``[V, L]`` as constants."""
    return jnp.asarray(self.spec.path_table.array), jnp.asarray(self.spec.path_code.array)

  def nll(self, x: jax.Array, labels: jax.Array, *, train: bool = False) -> jax.Array:
    """Per-token loss ``[...]``: exact NLL, except the sampled head's training loss."""
    if self.spec.kind == "sampled" and train:
      return self.impl(x, labels, deterministic=False)
    if self._huffman():
      table_VxL, code_VxL = self._tables()
      # HSigmoidLoss.nll takes one path per example: gather each label's row.
      return self.impl.nll(x, labels, path_table=jnp.take(table_VxL, labels, axis=0),
                           path_code=jnp.take(code_VxL, labels, axis=0))
    return self.impl.nll(x, labels)

  def log_prob(self, x: jax.Array) -> jax.Array:
    """Exact log-probabilities ``[..., V]``."""
    if self._huffman():
      table_VxL, code_VxL = self._tables()
      return self.impl.log_prob(x, path_table=table_VxL, path_code=code_VxL)
    return self.impl.log_prob(x)

  def predict(self, x: jax.Array) -> jax.Array:
    """Arg-max class ``[...]``."""
    if self._huffman():
      table_VxL, code_VxL = self._tables()
      return self.impl.predict(x, path_table=table_VxL, path_code=code_VxL)
    return self.impl.predict(x)

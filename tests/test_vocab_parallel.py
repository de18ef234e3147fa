"""Vocabulary-parallel cross-entropy over the 8 CPU devices == single device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jax_bigsoftmax as jbs


def _problem(n=32, d=8, v=96, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(v, d)) / np.sqrt(d), jnp.float32)
  b = jnp.asarray(rng.normal(size=(v,)), jnp.float32)
  y = rng.integers(0, v, size=n)
  y[::5] = -100
  cw = jnp.asarray(rng.uniform(0.5, 2.0, size=v), jnp.float32)
  return x, w, b, jnp.asarray(y, jnp.int32), cw


@pytest.mark.parametrize("shape,names,data_axis", [
    ((8,), ("vocab",), None),
    ((8, 1), ("data", "vocab"), "data"),
    ((4, 2), ("data", "vocab"), "data"),
    ((2, 4), ("data", "vocab"), "data"),
])
@pytest.mark.parametrize("smoothing,weighted,use_bias", [(0.0, False, True), (0.1, True, False)])
def test_equals_single_device(shape, names, data_axis, smoothing, weighted, use_bias):
  x, w, b, y, cw = _problem()
  b = b if use_bias else None
  cw = cw if weighted else None
  mesh = Mesh(np.array(jax.devices()).reshape(shape), names)

  def single(x, w, b):
    return jbs.linear_cross_entropy(x, w, y, b, class_weight=cw, label_smoothing=smoothing,
                                    chunk_size=7)

  def sharded(x, w, b):
    return jbs.vocab_parallel_cross_entropy(x, w, y, b, mesh=mesh, data_axis=data_axis,
                                            class_weight=cw, label_smoothing=smoothing,
                                            chunk_size=7)

  argnums = (0, 1, 2) if use_bias else (0, 1)
  ref = jax.value_and_grad(single, argnums=argnums)(x, w, b)
  got = jax.jit(jax.value_and_grad(sharded, argnums=argnums))(x, w, b)
  for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, r, rtol=2e-5, atol=1e-6)


def test_reduction_none_and_leading_dims():
  x, w, b, y, _ = _problem()
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "vocab"))
  out = jbs.vocab_parallel_cross_entropy(x.reshape(4, 8, -1), w, y.reshape(4, 8), b, mesh=mesh,
                                         data_axis="data", reduction="none")
  ref = jbs.linear_cross_entropy(x.reshape(4, 8, -1), w, y.reshape(4, 8), b, reduction="none")
  assert out.shape == (4, 8)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_errors():
  x, w, b, y, _ = _problem(v=90)
  mesh = Mesh(np.array(jax.devices()), ("vocab",))
  with pytest.raises(ValueError, match="V=90 rows, which does not divide by the size of mesh axis 'vocab' \\(8\\)"):
    jbs.vocab_parallel_cross_entropy(x, w, y, b, mesh=mesh)
  with pytest.raises(ValueError, match="vocab_axis='model' is not an axis of the mesh"):
    jbs.vocab_parallel_cross_entropy(x, w, y, b, mesh=mesh, vocab_axis="model")
  mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "vocab"))
  x, w, b, y, _ = _problem(n=30)
  with pytest.raises(ValueError, match="30 rows, which does not divide by the size of mesh axis 'data'"):
    jbs.vocab_parallel_cross_entropy(x, w, y, b, mesh=mesh2, data_axis="data")

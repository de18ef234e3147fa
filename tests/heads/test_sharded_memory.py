"""Compiled per-device memory of the vocabulary-sharded heads against their stated bound.

Compile-only (``memory_analysis`` of one fwd+bwd step on abstract inputs), nothing of the
benchmark's size is allocated: ``benchmarks/bench_vocab_parallel.py --heads`` prints the same
numbers. Each sharded head on an 8-way vocabulary mesh must stay within the bound its
docstring states: at most 1/6 of the unsharded head's memory per device (arguments, outputs
and temporaries) at N=4096, D=1024, V=2**20.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import helpers
import jax_bigsoftmax as jbs

pytestmark = pytest.mark.slow

N, D, V, S = 4096, 1024, 1 << 20, 8192
BOUND = 1 / 6
# 8 tails so that every adaptive piece (head: shortlist + 8 columns; each tail) divides by 8.
CUTOFFS = tuple(int(V * f) // 8 * 8 for f in (0.02, 0.04, 0.07, 0.12, 0.2, 0.3, 0.45, 0.7))


def _heads(**shard):
  return {
      "full": jbs.FullSoftmaxLoss(V, D, **shard),
      "sampled": jbs.SampledSoftmaxLoss(V, D, S, **shard),
      "adaptive": jbs.AdaptiveLogSoftmaxWithLoss(D, V, CUTOFFS, div_value=2.0, **shard),
  }


def _memory(head, mesh=None):
  """Bytes per device of value_and_grad(mean loss) w.r.t. (params, x), compiled only."""
  x = jax.ShapeDtypeStruct((N, D), jnp.float32)
  y = jax.ShapeDtypeStruct((N,), jnp.int32)
  boxed = jax.eval_shape(lambda: head.init(jax.random.key(0), jnp.zeros((8, D)),
                                           jnp.zeros((8,), jnp.int32)))["params"]
  params = jax.tree.map(lambda b: b.unbox(apply_constraint=False) if isinstance(b, nn.Partitioned)
                        else b, boxed, is_leaf=lambda b: isinstance(b, nn.Partitioned))
  if mesh is not None:
    specs = nn.get_partition_spec(boxed)
    params = jax.tree.map(lambda a, sp: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                             sharding=NamedSharding(mesh, sp)),
                          params, specs)
    x = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P()))
    y = jax.ShapeDtypeStruct(y.shape, y.dtype, sharding=NamedSharding(mesh, P()))
  rngs = {"sampler": jax.random.key(0)} if isinstance(head, jbs.SampledSoftmaxLoss) else None

  def step(p, x, y):
    def loss(p, x):
      out = head.apply({"params": p}, x, y, rngs=rngs)
      return jnp.mean(out.loss if isinstance(out, jbs.ASMOutput) else out)
    return jax.value_and_grad(loss, (0, 1))(p, x)

  m = jax.jit(step).lower(params, x, y).compile().memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


@pytest.mark.parametrize("name", ["full", "sampled", "adaptive"])
def test_sharded_head_memory_per_device_is_within_its_bound(name):
  mesh = helpers.mesh((8,), ("vocab",))
  plain = _memory(_heads()[name])
  sharded = _memory(_heads(mesh=mesh, vocab_axis="vocab")[name], mesh)
  assert sharded <= BOUND * plain, (
      f"{name}: {sharded / 2**20:,.0f} MiB per device sharded vs {plain / 2**20:,.0f} MiB"
      f" unsharded = {sharded / plain:.3f}, above the stated bound {BOUND:.3f}")

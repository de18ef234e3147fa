"""Vocabulary-parallel heads: memory per device vs unsharded, and step time on 8 CPU devices.

    python benchmarks/bench_vocab_parallel.py           # memory at V=1M, D=1024; time at V=64k
    python benchmarks/bench_vocab_parallel.py --quick   # small sizes, smoke test
    python benchmarks/bench_vocab_parallel.py --heads   # the sharded Flax heads only (memory)

Heads (``--heads``): the same memory analysis for one fwd+bwd step of each
Flax head (``FullSoftmaxLoss``, ``SampledSoftmaxLoss``,
``AdaptiveLogSoftmaxWithLoss``) with ``vocab_axis`` set on an 8-way mesh, the
params placed by ``nn.get_partition_spec``, vs the same head unsharded on one
device (target: <= 1/6 per device).

Memory: ``jax.jit(step).lower(abstract inputs).compile().memory_analysis()`` of
one fwd+bwd step (loss and gradients of inputs and weights), with
``jax.ShapeDtypeStruct`` inputs (carrying their ``NamedSharding``), so nothing
of that size is allocated. For an SPMD program XLA reports the sizes of ONE
device's program: arguments (its weight shard, its rows), outputs (its
gradient shard) and temporaries. "unsharded" is the same step compiled for one
device.

Time: the same steps at a size that runs here, unsharded (1 device) vs sharded
(8 devices), alternated each round, medians. The 8 devices are FAKE
(``--xla_force_host_platform_device_count=8``) on the cores of this machine:
the sharded step does the same total work plus collectives, so its time is
NOT a parallel speed-up; it only shows the overhead of the sharded program.
"""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import argparse  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import common  # noqa: E402
import jax_bigsoftmax as jbs  # noqa: E402


def adaptive_config(v, d):
  """Shortlist of 2% of V, 6 tails, hsz = D / 2**(i+1) (div_value 2)."""
  fr = [0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0]
  cut = [int(v * f) for f in fr]
  hs = [max(1, d // 2 ** (i + 1)) for i in range(len(cut) - 1)]
  return cut, hs


def problems(n, d, v, s, mesh, data_axis):
  """name -> (unsharded step, sharded step, abstract args (single), abstract args (sharded))."""
  f32, i32 = jnp.float32, jnp.int32
  vocab = "vocab"
  n_vocab = mesh.shape[vocab]

  def sds(shape, dtype, spec=None):
    return jax.ShapeDtypeStruct(shape, dtype,
                                sharding=None if spec is None else NamedSharding(mesh, spec))

  rows = P(data_axis)
  out = {}

  # Exact (Megatron-style) cross-entropy.
  def exact1(x, w, y):
    return jax.value_and_grad(lambda x, w: jbs.linear_cross_entropy(x, w, y), (0, 1))(x, w)

  def exactp(x, w, y):
    return jax.value_and_grad(lambda x, w: jbs.vocab_parallel_cross_entropy(
        x, w, y, mesh=mesh, data_axis=data_axis), (0, 1))(x, w)

  out["exact (linear_cross_entropy)"] = (
      exact1, exactp, (sds((n, d), f32), sds((v, d), f32), sds((n,), i32)),
      (sds((n, d), f32, P(data_axis, None)), sds((v, d), f32, P(vocab, None)),
       sds((n,), i32, rows)))

  # Sampled softmax, S shared samples (given, as from the sampler).
  def samp1(x, w, b, y, sv):
    return jax.value_and_grad(lambda x, w, b: jbs.sampled_softmax_loss(
        w, b, y, x, s, v, 1, sv).mean(), (0, 1, 2))(x, w, b)

  def sampp(x, w, b, y, sv):
    return jax.value_and_grad(lambda x, w, b: jbs.vocab_parallel_sampled_softmax_loss(
        w, b, y, x, s, v, 1, sv, mesh=mesh, data_axis=data_axis).mean(), (0, 1, 2))(x, w, b)

  sv1 = (sds((s,), i32), sds((n, 1), f32), sds((s,), f32))
  svp = (sds((s,), i32, P()), sds((n, 1), f32, P(data_axis, None)), sds((s,), f32, P()))
  out[f"sampled (S={s})"] = (
      samp1, sampp,
      (sds((n, d), f32), sds((v, d), f32), sds((v,), f32), sds((n, 1), i32), sv1),
      (sds((n, d), f32, P(data_axis, None)), sds((v, d), f32, P(vocab, None)),
       sds((v,), f32, P(vocab)), sds((n, 1), i32, P(data_axis, None)), svp))

  # Adaptive softmax, tails packed per shard.
  cut, hs = adaptive_config(v, d)
  n_head = cut[0] + len(hs)

  def adap1(x, head, tails, y):
    return jax.value_and_grad(lambda x, h, t: jbs.adaptive_log_softmax_with_loss(
        x, y, h, t, cut)[1], (0, 1, 2))(x, head, tails)

  def adapp(x, head, packed, y):
    return jax.value_and_grad(lambda x, h, t: jbs.vocab_parallel_adaptive_log_softmax_with_loss(
        x, y, h, t, cut, mesh=mesh, data_axis=data_axis)[1], (0, 1, 2))(x, head, packed)

  tails = [(sds((d, h), f32), sds((h, cut[i + 1] - cut[i]), f32)) for i, h in enumerate(hs)]
  packed = jax.eval_shape(lambda t: jbs.pack_adaptive_tails(t, n_vocab), tails)
  packed = jbs.PackedAdaptiveTails(sds(packed.buffer.shape, f32, P(vocab, None)),
                                   *[getattr(packed, f) for f in (
                                       "in_features", "hidden_sizes", "out_sizes", "owner",
                                       "offsets")])
  out[f"adaptive ({len(hs)} tails)"] = (
      adap1, adapp, (sds((n, d), f32), sds((d, n_head), f32), tails, sds((n,), i32)),
      (sds((n, d), f32, P(data_axis, None)), sds((d, n_head), f32, P()), packed,
       sds((n,), i32, rows)))
  return out


def memory(step, args):
  ma = jax.jit(step).lower(*args).compile().memory_analysis()
  return ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.temp_size_in_bytes


def materialize(args, key):
  """Random arrays for abstract args (ints: valid class ids given per leaf bound)."""
  leaves, tree = jax.tree.flatten(args)
  vals = []
  for i, a in enumerate(leaves):
    k = jax.random.fold_in(key, i)
    if jnp.issubdtype(a.dtype, jnp.integer):
      val = jax.random.randint(k, a.shape, 0, a.bound, jnp.int32)
    else:
      val = jax.random.uniform(k, a.shape, a.dtype, 0.01, 0.1)  # > 0: also valid expected counts
    vals.append(jax.device_put(val, a.sharding) if a.sharding is not None else val)
  return jax.tree.unflatten(tree, vals)


def head_problems(n, d, v, s, mesh):
  """name -> (unsharded head, sharded head, call kwargs, labels shape)."""
  import flax.linen as nn  # noqa: F401  (the heads are linen modules)
  # 8 tails so that every adaptive piece (head: shortlist + 8 columns; each tail) divides by 8.
  fr = [0.02, 0.04, 0.07, 0.12, 0.2, 0.3, 0.45, 0.7]
  cutoffs = tuple(int(v * f) // 8 * 8 for f in fr)
  shard = dict(mesh=mesh, vocab_axis="vocab")
  return {
      "FullSoftmaxLoss": (jbs.FullSoftmaxLoss(v, d), jbs.FullSoftmaxLoss(v, d, **shard), {}),
      f"SampledSoftmaxLoss (S={s})": (jbs.SampledSoftmaxLoss(v, d, s),
                                      jbs.SampledSoftmaxLoss(v, d, s, **shard), {}),
      f"AdaptiveLogSoftmaxWithLoss ({len(cutoffs)} tails, div 2)": (
          jbs.AdaptiveLogSoftmaxWithLoss(d, v, cutoffs, div_value=2.0),
          jbs.AdaptiveLogSoftmaxWithLoss(d, v, cutoffs, div_value=2.0, **shard), {}),
  }


def head_memory(head, n, d, mesh=None):
  """memory_analysis of value_and_grad(mean loss) w.r.t. (params, x) of ``head``."""
  import flax.linen as nn
  f32, i32 = jnp.float32, jnp.int32
  x = jax.ShapeDtypeStruct((n, d), f32)
  y = jax.ShapeDtypeStruct((n,), i32)
  sampled = isinstance(head, jbs.SampledSoftmaxLoss)
  rngs = {"sampler": jax.random.key(0)}
  boxed = jax.eval_shape(lambda: head.init(jax.random.key(0), jnp.zeros((8, d)),
                                           jnp.zeros((8,), i32)))["params"]
  params = jax.tree.map(lambda b: b.unbox(apply_constraint=False) if isinstance(b, nn.Partitioned)
                        else b, boxed, is_leaf=lambda b: isinstance(b, nn.Partitioned))
  if mesh is not None:
    specs = nn.get_partition_spec(boxed)
    params = jax.tree.map(lambda a, sp: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                             sharding=NamedSharding(mesh, sp)),
                          params, specs)
    x = jax.ShapeDtypeStruct(x.shape, f32, sharding=NamedSharding(mesh, P()))
    y = jax.ShapeDtypeStruct(y.shape, i32, sharding=NamedSharding(mesh, P()))

  def step(p, x, y):
    def loss(p, x):
      out = head.apply({"params": p}, x, y, rngs=rngs if sampled else None)
      out = out.loss if isinstance(out, jbs.ASMOutput) else out
      return jnp.mean(out)
    return jax.value_and_grad(loss, (0, 1))(p, x)

  return memory(step, (params, x, y))


def heads_main(quick: bool, devs):
  n, d, v, s = (512, 256, 16384, 512) if quick else (4096, 1024, 1 << 20, 8192)
  mesh = Mesh(devs, ("vocab",))
  print(f"\n## Sharded Flax heads: compiled memory per device, one fwd+bwd step (grads of params"
        f" and inputs), N={n}, D={d}, V={v}, 8-way vocab mesh")
  print("| head | placement | args (params, x) / device | outputs (grads) / device |"
        " temp / device | total / device | vs unsharded |")
  print("|---|---|---|---|---|---|---|")
  for name, (plain, sharded, _) in head_problems(n, d, v, s, mesh).items():
    m1 = head_memory(plain, n, d)
    mp = head_memory(sharded, n, d, mesh)
    for label, m in (("unsharded (1 device)", m1), ("vocab_axis, 8 devices", mp)):
      print(f"| {name} | {label} | {common.fmt_bytes(m[0])} | {common.fmt_bytes(m[1])} |"
            f" {common.fmt_bytes(m[2])} | {common.fmt_bytes(sum(m))} |"
            f" {sum(m) / sum(m1):.3f} |", flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--heads", action="store_true", help="only the sharded Flax heads' memory")
  ap.add_argument("--rounds", type=int, default=5)
  args = ap.parse_args()
  devs = np.array(jax.devices())
  assert devs.size == 8, f"need 8 devices, got {devs.size}"
  if args.heads:
    print("# bench_vocab_parallel --heads: sharded Flax heads vs unsharded, float32")
    print(f"# machine: {common.machine_description()}")
    print("# compiled (not run) for 8 FAKE CPU devices; sizes are XLA's memory_analysis of one"
          " device's program")
    heads_main(args.quick, devs)
    return
  print("# bench_vocab_parallel: one fwd+bwd step (loss + grads of inputs and weights), float32")
  print(f"# machine: {common.machine_description()}")
  print("# 8 FAKE CPU devices (--xla_force_host_platform_device_count=8) sharing the cores above;"
        f" load average at start: {os.getloadavg()}")

  n, d, v, s = (512, 128, 16384, 512) if args.quick else (4096, 1024, 1 << 20, 8192)
  print(f"\n## Compiled memory per device (memory_analysis, abstract inputs): N={n}, D={d},"
        f" V={v}")
  print("| head | mesh | weights+args / device | outputs (grads) / device | temp / device |"
        " total / device | vs unsharded |")
  print("|---|---|---|---|---|---|---|")
  for mesh_shape, names, data_axis in [((8,), ("vocab",), None),
                                       ((4, 2), ("data", "vocab"), "data")]:
    mesh = Mesh(devs.reshape(mesh_shape), names)
    for name, (f1, fp, a1, ap_) in problems(n, d, v, s, mesh, data_axis).items():
      if mesh_shape == (8,):
        m1 = memory(f1, a1)
        single = sum(m1)
        print(f"| {name} | unsharded (1 device) | {common.fmt_bytes(m1[0])} |"
              f" {common.fmt_bytes(m1[1])} | {common.fmt_bytes(m1[2])} |"
              f" {common.fmt_bytes(single)} | 1.00 |")
        problems_single[name] = single
      mp = memory(fp, ap_)
      mesh_txt = "x".join(map(str, mesh_shape)) + " (" + " x ".join(names) + ")"
      print(f"| {name} | {mesh_txt} | {common.fmt_bytes(mp[0])} | {common.fmt_bytes(mp[1])} |"
            f" {common.fmt_bytes(mp[2])} | {common.fmt_bytes(sum(mp))} |"
            f" {sum(mp) / problems_single[name]:.3f} |", flush=True)

  n, d, v, s = (256, 64, 4096, 256) if args.quick else (1024, 256, 65536, 2048)
  rounds = 2 if args.quick else args.rounds
  print(f"\n## Step time, N={n}, D={d}, V={v}; medians of {rounds} alternated rounds")
  print("| head | unsharded (1 device) | 8 (vocab) | 4x2 (data x vocab) |"
        " 8 / unsharded | 4x2 / unsharded |")
  print("|---|---|---|---|---|---|")
  key = jax.random.key(0)
  meshes = {"8": (Mesh(devs, ("vocab",)), None),
            "4x2": (Mesh(devs.reshape(4, 2), ("data", "vocab")), "data")}
  built = {k: problems(n, d, v, s, m, da) for k, (m, da) in meshes.items()}
  cut, _ = adaptive_config(v, d)
  for name in built["8"]:
    calls = {}
    f1, _, a1, _ = built["8"][name]
    a1 = _with_bounds(a1, v, s, cut)
    x1 = materialize(a1, key)
    j1 = jax.jit(f1)
    calls["unsharded"] = lambda j=j1, x=x1: common.time_call(lambda: j(*x))
    for k in meshes:
      _, fp, _, ap_ = built[k][name]
      ap_ = _with_bounds(ap_, v, s, cut)
      xp = materialize(ap_, key)
      jp = jax.jit(fp)
      calls[k] = lambda j=jp, x=xp: common.time_call(lambda: j(*x))
    for c in calls.values():  # compile + warm-up, excluded
      c()
    t = common.alternate(calls, rounds, sleep_s=0.2)
    print(f"| {name} | {t['unsharded'] * 1e3:.1f} ms | {t['8'] * 1e3:.1f} ms |"
          f" {t['4x2'] * 1e3:.1f} ms | {t['8'] / t['unsharded']:.2f} |"
          f" {t['4x2'] / t['unsharded']:.2f} |", flush=True)


class _Bounded:
  """An abstract int array with the exclusive upper bound of its values."""

  def __init__(self, a, bound):
    self.shape, self.dtype, self.sharding, self.bound = a.shape, a.dtype, a.sharding, bound


def _with_bounds(args, v, s, cut):
  """Marks integer leaves with their value range (labels < V; samples < V, distinct not needed)."""
  del s, cut
  return jax.tree.map(
      lambda a: _Bounded(a, v) if jnp.issubdtype(a.dtype, jnp.integer) else a, args,
      is_leaf=lambda a: isinstance(a, jax.ShapeDtypeStruct))


problems_single = {}

if __name__ == "__main__":
  main()

"""fwd+bwd of the exact output layer: linear_cross_entropy vs jax-cce vs optax dense vs torch.

    python benchmarks/bench_exact.py            # N=4096, D=512, V in {32k, 128k}
    python benchmarks/bench_exact.py --quick    # small sizes, smoke test

Contenders, alternated each round (medians reported), no bias (jax-cce has none):
  ours      jax_bigsoftmax.linear_cross_entropy (one-pass gradient), jit
  ours+opt  the same with logit_softcap=30 and z_loss=1e-4
  jax-cce   jax_cce.linear_cross_entropy (pip jax-cce, default chunk), jit
  dense     x @ W.T, optax.softmax_cross_entropy_with_integer_labels, jit
  torch     F.linear + F.cross_entropy (torch venv, subprocess worker)
  torch-lce torch's chunked F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())
            (torch >= 2.13, its own subprocess)
The machine's matmul peak is the best rate of float32 products timed alone
(the [N, D] x [D, V] product itself, a 2048^3 square one and the
[512, D] x [D, 4096] blocks the one-pass gradient uses; 3 tries each); "% peak"
counts the 3 products a dense step needs (6 N D V flops).
Memory: XLA's compiled temporary allocation for the JAX programs (arguments and
outputs excluded); peak RSS increase over the inputs for torch (includes its
gradient buffers).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import common  # noqa: E402
import jax_bigsoftmax as jbs  # noqa: E402

try:
  import jax_cce  # noqa: E402  (pip install jax-cce)
except ImportError:
  jax_cce = None


@jax.jit
def matmul(x, w):
  return x @ w.T


def matmul_peak(x, w) -> float:
  """Best float32 matmul rate (flop/s) over a few shapes, 3 tries each."""
  rng = np.random.default_rng(1)
  shapes = [(x, w), (x[:512], w[:4096])]
  sq = jnp.asarray(rng.normal(size=(2048, 2048)), jnp.float32)
  shapes.append((sq, sq))
  best = 0.0
  for a, b in shapes:
    matmul(a, b).block_until_ready()
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[0]
    best = max(best, max(flops / common.time_call(lambda: matmul(a, b)) for _ in range(3)))  # noqa: B023
  return best


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--vocabs", type=str, default="32768,131072", help="comma-separated V values")
  args = ap.parse_args()
  n, d = (512, 128) if args.quick else (4096, 512)
  vocabs = (4096, 16384) if args.quick else tuple(int(v) for v in args.vocabs.split(","))
  rounds = 2 if args.quick else args.rounds
  print(f"# bench_exact: fwd+bwd, N={n}, D={d}, float32")
  print(f"# machine: {common.machine_description()}")
  rows = []
  for v in vocabs:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(v, d)) / np.sqrt(d), jnp.float32)
    y = jnp.asarray(rng.integers(0, v, size=n), jnp.int32)

    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1)))  # noqa: E731
    fns = {
        "ours": grad(lambda x, w: jbs.linear_cross_entropy(x, w, y)),
        "ours+opt": grad(lambda x, w: jbs.linear_cross_entropy(x, w, y, logit_softcap=30.0,
                                                               z_loss=1e-4)),
        "dense": grad(lambda x, w: optax.softmax_cross_entropy_with_integer_labels(
            x @ w.T, y).mean()),
    }
    if jax_cce is not None:
      fns["jax-cce"] = grad(lambda x, w: jax_cce.linear_cross_entropy(x, w, y))
    mem = {k: common.jax_temp_bytes(f, x, w) for k, f in fns.items()}
    ref = float(fns["dense"](x, w)[0])
    for k, f in fns.items():  # compile + warm up + agree
      got = float(f(x, w)[0])
      if k != "ours+opt":
        assert abs(got - ref) < 1e-3 * abs(ref), (k, got, ref)
    contenders = {k: (lambda f=f: common.time_call(lambda: f(x, w))) for k, f in fns.items()}
    peak = matmul_peak(x, w)
    workers = {}
    py = None if args.no_torch else common.peer_python("torch")
    if py:
      for name, chunked in (("torch", False), ("torch-lce", True)):
        workers[name] = common.Worker(py, os.path.join(common.HERE, "workers", "torch_exact.py"),
                                      {"n": n, "d": d, "v": v, "chunked": chunked})
        workers[name].time()  # warm up
      torch_peak = dict.fromkeys(workers, 0.0)

      def run_torch(name):
        out = workers[name].call({"op": "time"})
        torch_peak[name] = max(torch_peak[name], out["peak_rss_increase_mib"])
        return out["seconds"]
      for name in workers:
        contenders[name] = lambda name=name: run_torch(name)
    raw = {}
    med = common.alternate(contenders, rounds, peer_names=tuple(workers), raw=raw)
    for name, worker in workers.items():
      mem[name] = int(torch_peak[name] * 2**20)
      torch_version = worker.version
      worker.close()
    rows.append((v, med, mem, peak))
    print(f"# V={v} every round (s): " + "; ".join(
        f"{k} " + " ".join(f"{t:.2f}" for t in ts) for k, ts in raw.items()), flush=True)
    print(f"V={v}: " + ", ".join(f"{k} {t*1e3:.0f} ms" for k, t in med.items())
          + f"; matmul peak {peak / 1e9:.0f} GFLOP/s", flush=True)

  names = [k for k in ("ours", "ours+opt", "jax-cce", "dense", "torch", "torch-lce")
           if k in rows[0][1]]
  print()
  print("| V | " + " | ".join(f"{k} (ms)" for k in names) + " | " +
        " | ".join(f"{k} / ours" for k in names[1:]) +
        " | ours % of matmul peak | ours temp mem | dense temp mem | dense / ours mem |")
  print("|---" * (2 * len(names) + 4) + "|")
  for v, med, mem, peak in rows:
    ours = med["ours"]
    print(f"| {v:,} | " + " | ".join(f"{med[k]*1e3:,.0f}" for k in names) + " | " +
          " | ".join(f"{med[k] / ours:.2f}x" for k in names[1:]) +
          f" | {100 * 6 * n * d * v / ours / peak:.0f}% | {common.fmt_bytes(mem['ours'])} | "
          f"{common.fmt_bytes(mem['dense'])} | {mem['dense'] / mem['ours']:.1f}x |")
    if "torch" in mem:
      print(f"# V={v:,}: peak RSS increase, torch {common.fmt_bytes(mem['torch'])}, torch-lce "
            f"{common.fmt_bytes(mem['torch-lce'])} (includes the gradient buffers)")
  print(f"# jax-cce {'not installed' if jax_cce is None else 'installed'}")
  if "torch" in rows[0][1]:
    print(f"# torch {torch_version}; rounds={rounds} (alternated, medians)")


if __name__ == "__main__":
  main()

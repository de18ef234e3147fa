"""fwd+bwd of the exact output layer: linear_cross_entropy vs optax dense vs torch.

    python benchmarks/bench_exact.py            # N=4096, D=512, V in {32k, 128k}
    python benchmarks/bench_exact.py --quick    # small sizes, smoke test

Contenders, alternated each round (medians reported):
  ours   jax_bigsoftmax.linear_cross_entropy (chunked, custom_vjp), jit
  dense  x @ W.T + b, optax.softmax_cross_entropy_with_integer_labels, jit
  torch  F.linear + F.cross_entropy (torch venv, subprocess worker)
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


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--no-torch", action="store_true")
  args = ap.parse_args()
  n, d = (512, 128) if args.quick else (4096, 512)
  vocabs = (4096, 16384) if args.quick else (32768, 131072)
  rounds = 2 if args.quick else args.rounds
  print(f"# bench_exact: fwd+bwd, N={n}, D={d}, float32")
  print(f"# machine: {common.machine_description()}")
  rows = []
  for v in vocabs:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(v, d)) / np.sqrt(d), jnp.float32)
    b = jnp.zeros((v,), jnp.float32)
    y = jnp.asarray(rng.integers(0, v, size=n), jnp.int32)

    ours = jax.jit(jax.value_and_grad(
        lambda x, w, b: jbs.linear_cross_entropy(x, w, y, b), argnums=(0, 1, 2)))
    dense = jax.jit(jax.value_and_grad(
        lambda x, w, b: optax.softmax_cross_entropy_with_integer_labels(
            x @ w.T + b[None], y).mean(), argnums=(0, 1, 2)))
    mem = {"ours": common.jax_temp_bytes(ours, x, w, b),
           "dense": common.jax_temp_bytes(dense, x, w, b)}
    la, lb = ours(x, w, b)[0], dense(x, w, b)[0]  # compile + warm up
    assert abs(float(la) - float(lb)) < 1e-3 * abs(float(lb)), (la, lb)
    contenders = {"ours": lambda: common.time_call(lambda: ours(x, w, b)),
                  "dense": lambda: common.time_call(lambda: dense(x, w, b))}
    worker = None
    py = None if args.no_torch else common.peer_python("torch")
    if py:
      worker = common.Worker(py, os.path.join(common.HERE, "workers", "torch_exact.py"),
                             {"n": n, "d": d, "v": v})
      worker.time()  # warm up
      torch_peak = [0.0]

      def run_torch():
        out = worker.call({"op": "time"})
        torch_peak[0] = max(torch_peak[0], out["peak_rss_increase_mib"])
        return out["seconds"]
      contenders["torch"] = run_torch
    med = common.alternate(contenders, rounds, peer_names=("torch",))
    if worker:
      mem["torch"] = int(torch_peak[0] * 2**20)
      torch_version = worker.version
      worker.close()
    rows.append((v, med, mem))
    print(f"V={v}: " + ", ".join(f"{k} {t*1e3:.0f} ms" for k, t in med.items()), flush=True)

  print()
  print("| V | ours (ms) | optax dense (ms) | torch (ms) | ours / dense time | ours / torch time "
        "| ours temp mem | dense temp mem | dense / ours mem | torch peak RSS increase |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for v, med, mem in rows:
    t = med.get("torch")
    t_ms = "n/a" if t is None else f"{t * 1e3:,.0f}"
    vs_torch = "n/a" if t is None else f"{med['ours'] / t:.2f}"
    print(f"| {v:,} | {med['ours']*1e3:,.0f} | {med['dense']*1e3:,.0f} | "
          f"{t_ms} | {med['ours']/med['dense']:.2f} | "
          f"{vs_torch} | {common.fmt_bytes(mem['ours'])} | "
          f"{common.fmt_bytes(mem['dense'])} | {mem['dense']/mem['ours']:.1f}x | "
          f"{common.fmt_bytes(mem.get('torch'))} |")
  if "torch" in rows[0][1]:
    print(f"# torch {torch_version}; rounds={rounds} (alternated, medians)")


if __name__ == "__main__":
  main()

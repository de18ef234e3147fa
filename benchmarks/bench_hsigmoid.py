"""fwd+bwd of the hierarchical sigmoid: ours vs Paddle's CPU kernel vs dense softmax.

    python benchmarks/bench_hsigmoid.py            # N=4096, D=512, V in {10k, 100k, 1M}
    python benchmarks/bench_hsigmoid.py --quick    # small sizes, smoke test

Contenders, alternated each round (medians reported), gradients w.r.t. input,
weight and bias of the mean loss:
  ours    jax_bigsoftmax.hsigmoid_loss (default tree, exact mode), jit
  paddle  paddle.nn.functional.hsigmoid_loss on CPU (Paddle venv, subprocess worker)
  dense   x @ W.T + b, optax.softmax_cross_entropy_with_integer_labels, jit
          (skipped, with the reason, where its working set does not fit in memory)
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import common  # noqa: E402
import jax_bigsoftmax as jbs  # noqa: E402


def mem_available() -> int:
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable"):
        return int(line.split()[1]) * 1024
  return 0


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--no-paddle", action="store_true")
  ap.add_argument("--vocabs", type=int, nargs="*", default=None)
  args = ap.parse_args()
  n, d = (256, 64) if args.quick else (4096, 512)
  vocabs = args.vocabs or ((1_000, 10_000) if args.quick else (10_000, 100_000, 1_000_000))
  rounds = 2 if args.quick else args.rounds
  print(f"# bench_hsigmoid: fwd+bwd, N={n}, D={d}, float32, default (SimpleCode) tree")
  print(f"# machine: {common.machine_description()}")
  print(f"# load average at start: {os.getloadavg()}")
  rows, paddle_version = [], None
  for v in vocabs:
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (n, d), jnp.float32)
    w = jax.random.normal(k[1], (v - 1, d), jnp.float32) / jnp.sqrt(d)
    b = jnp.zeros((v - 1, 1), jnp.float32)
    y = jax.random.randint(k[2], (n,), 0, v)
    ours = jax.jit(jax.value_and_grad(
        lambda x, w, b: jbs.hsigmoid_loss(x, y, v, w, b).mean(), argnums=(0, 1, 2)))
    ours(x, w, b)  # compile + warm up
    contenders = {"ours": lambda: common.time_call(lambda: ours(x, w, b))}
    notes = []

    # Dense full softmax over V classes (weight [V, D]).
    wd = jnp.zeros((v, d), jnp.float32)
    bd = jnp.zeros((v,), jnp.float32)
    dense = jax.jit(jax.value_and_grad(
        lambda x, w, b: optax.softmax_cross_entropy_with_integer_labels(
            x @ w.T + b[None], y).mean(), argnums=(0, 1, 2)))
    need = 3 * n * v * 4 + 2 * v * d * 4  # logits, softmax, its cotangent; W, dW
    if need > 0.6 * mem_available():
      notes.append(f"dense skipped at V={v:,}: needs ~{need / 2**30:.1f} GiB ([N, V] logits,"
                   f" softmax and cotangent), {mem_available() / 2**30:.1f} GiB available")
      del wd, bd
    else:
      temp = common.jax_temp_bytes(dense, x, wd, bd)
      dense(x, wd, bd)
      contenders["dense"] = lambda: common.time_call(lambda: dense(x, wd, bd))
      notes.append(f"dense XLA temp memory at V={v:,}: {common.fmt_bytes(temp)}")

    worker = None
    py = None if args.no_paddle else common.peer_python("paddle")
    if py:
      worker = common.Worker(py, os.path.join(common.HERE, "workers", "paddle_hsigmoid.py"),
                             {"n": n, "d": d, "v": v})
      paddle_version = worker.version
      worker.time()  # warm up
      contenders["paddle"] = worker.time
    med = common.alternate(contenders, rounds, peer_names=("paddle",))
    if worker:
      worker.close()
    rows.append((v, med))
    print(f"V={v:,}: " + ", ".join(f"{k} {t * 1e3:,.0f} ms" for k, t in med.items()), flush=True)
    for note in notes:
      print(f"#   {note}")
    del ours, dense, w, b, x

  print()
  print("| V | ours (ms) | Paddle CPU (ms) | optax dense (ms) | Paddle / ours | dense / ours |")
  print("|---|---|---|---|---|---|")
  for v, med in rows:
    cell = lambda k: f"{med[k] * 1e3:,.0f}" if k in med else "skipped"
    ratio = lambda k: f"{med[k] / med['ours']:.1f}x" if k in med else "n/a"
    print(f"| {v:,} | {cell('ours')} | {cell('paddle')} | {cell('dense')} | {ratio('paddle')} |"
          f" {ratio('dense')} |")
  print(f"# paddle {paddle_version}; rounds={rounds} (alternated A B A B, medians);"
        f" load average at end: {os.getloadavg()}")


if __name__ == "__main__":
  main()

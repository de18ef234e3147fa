"""Adaptive softmax fwd+bwd: jax_bigsoftmax vs torch vs dense full softmax.

  PYTHONPATH=. python benchmarks/bench_adaptive.py [--quick]   # torch from .peers/torch

One training step (loss and gradients w.r.t. the input and every weight) at
N=4096 tokens, D=512, Zipf(1.0) targets, for
  V=100,000 with cutoffs [2000, 10000, 50000] and
  V=267,735 (WikiText-103) with fairseq's cutoffs [20000, 60000], div_value 4.
Contenders:
  ours   jax.jit(value_and_grad) of AdaptiveLogSoftmaxWithLoss (this process)
  torch  torch.nn.AdaptiveLogSoftmaxWithLoss, loss.backward() (a worker in the
         torch venv, driven over a pipe, timing itself)
  dense  jax.jit(value_and_grad) of a full softmax cross-entropy x @ W [D, V]
         (skipped with the reason printed when its logits would not fit)
Rounds alternate ours / torch / dense with a 1 s pause between contenders;
compile and warm-up are excluded; medians over rounds are reported.
Breakdown: each round also times the head alone (the [D, shortlist + clusters]
GEMM, its log-softmax and the head target's log-probability, fwd+bwd) in both
frameworks; "tails" = full step - head.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_bigsoftmax as jbs
import common  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)
from common import time_jax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = [
    # (name, V, cutoffs)
    ("V=100k", 100_000, [2000, 10000, 50000]),
    ("V=267,735", 267_735, [20000, 60000]),
]
QUICK = [("quick V=20k", 20_000, [500, 2000, 8000])]


def zipf_targets(rng, n, v):
  p = 1.0 / np.arange(1, v + 1)
  return rng.choice(v, size=n, p=p / p.sum()).astype(np.int64)


def mem_available_bytes():
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="small sizes, smoke test")
  ap.add_argument("--rounds", type=int, default=5, help="alternating rounds")
  ap.add_argument("--reps", type=int, default=3, help="steps per contender per round")
  ap.add_argument("--dense-rounds", type=int, default=2, help="rounds that include dense")
  ap.add_argument("--n", type=int, default=4096)
  ap.add_argument("--d", type=int, default=512)
  ap.add_argument("--no-torch", action="store_true")
  args = ap.parse_args()
  n, d = (512, 64) if args.quick else (args.n, args.d)
  configs = QUICK if args.quick else CONFIGS
  rounds = 2 if args.quick else args.rounds
  print("machine:", common.machine_description())
  print(f"N={n} D={d} div_value=4.0 head_bias=False, Zipf(1.0) targets, fwd+bwd,"
        f" {rounds} rounds x {args.reps} steps, medians")
  rows = []
  for name, v, cutoffs in configs:
    rows.append(bench_one(name, v, cutoffs, n, d, rounds, args))
  print()
  print("| config | ours (ms) | torch (ms) | dense (ms) | torch / ours | dense / ours |")
  print("|---|---|---|---|---|---|")
  f = lambda t: "skipped" if t is None else f"{t * 1e3:.1f}"
  for r in rows:
    ratio = lambda t: "-" if t is None else f"{t / r['ours']:.2f}x"
    print(f"| {r['name']} | {f(r['ours'])} | {f(r['torch'])} | {f(r['dense'])} |"
          f" {ratio(r['torch'])} | {ratio(r['dense'])} |")
  print()
  print("| config | ours head (ms) | torch head (ms) | ours tails (ms) | torch tails (ms) |"
        " torch total / 1.5 (ms) |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    if r["head"] is None or r["torch"] is None or r["torch_head"] is None:
      continue
    print(f"| {r['name']} | {f(r['head'])} | {f(r['torch_head'])} |"
          f" {f(r['ours'] - r['head'])} | {f(r['torch'] - r['torch_head'])} |"
          f" {f(r['torch'] / 1.5)} |")
  for r in rows:
    if r.get("note"):
      print(f"note ({r['name']}): {r['note']}")


def bench_one(name, v, cutoffs, n, d, rounds, args):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = zipf_targets(rng, n, v)
  bounds = [*cutoffs, v]
  shares = [np.mean((y >= lo) & (y < hi)) for lo, hi in zip([0, *cutoffs], bounds)]
  print(f"\n== {name}: cutoffs {cutoffs}; target share head/tails:"
        f" {', '.join(f'{s:.3f}' for s in shares)}")

  head = jbs.AdaptiveLogSoftmaxWithLoss(d, v, tuple(cutoffs))
  params = jax.jit(head.init)(jax.random.PRNGKey(0), x[:2], y[:2])

  @jax.jit
  def ours(params, x, y):
    return jax.value_and_grad(
        lambda p, x: head.apply(p, x, y).loss, argnums=(0, 1))(params, x)

  xj, yj = jnp.asarray(x), jnp.asarray(y)
  jax.block_until_ready(ours(params, xj, yj))
  jax.block_until_ready(ours(params, xj, yj))

  # The head alone: the same function with no tail clusters, targets = head columns.
  head_cols = cutoffs[0] + len(cutoffs)
  head_idx = jnp.asarray(np.where(
      y < cutoffs[0], y, cutoffs[0] + np.searchsorted(bounds, y, side="right") - 1), jnp.int32)

  @jax.jit
  def ours_head(w, x):
    return jax.value_and_grad(lambda w, x: jbs.adaptive_log_softmax_with_loss(
        x, head_idx, w, [], [head_cols])[1], argnums=(0, 1))(w, x)

  head_w = params["params"]["head_weight"]
  jax.block_until_ready(ours_head(head_w, xj))

  dense = None
  note = ""
  need = 3 * n * v * 4 + 2 * d * v * 4  # logits, softmax/grad, W and dW
  avail = mem_available_bytes()
  if avail is not None and need > 0.5 * avail:
    note = (f"dense skipped: needs ~{need / 2**30:.1f} GiB, more than half of the"
            f" {avail / 2**30:.1f} GiB available")
  elif args.dense_rounds > 0:
    w = jnp.asarray(rng.normal(size=(d, v)).astype(np.float32) / np.sqrt(d))

    @jax.jit
    def dense(w, x, y):
      def loss(w, x):
        logits = x @ w
        lse = jax.nn.logsumexp(logits, axis=-1)
        return jnp.mean(lse - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])
      return jax.value_and_grad(loss, argnums=(0, 1))(w, x)

    jax.block_until_ready(dense(w, xj, yj))

  # Two torch workers: full steps, and the head alone. Separate processes, so the
  # head-only runs cannot change the allocator state the full steps see.
  workers = {}
  if not args.no_torch:
    torch_py = os.environ.get("TORCH_PYTHON") or common.require_peer("torch")
    tmp = tempfile.NamedTemporaryFile(suffix=".npz", delete=False)
    np.savez(tmp, x=x, y=y, cutoffs=np.array(cutoffs), n_classes=v, div_value=4.0)
    tmp.close()
    for key in ("torch", "torch_head"):
      workers[key] = subprocess.Popen(
          [torch_py, os.path.join(HERE, "_adaptive_torch_worker.py")],
          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
      workers[key].stdin.write(f"setup {tmp.name}\n")
      workers[key].stdin.flush()
      info = json.loads(workers[key].stdout.readline())
    print(f"torch {info['version']} with {info['threads']} threads")

  def torch_times(key, cmd):
    workers[key].stdin.write(f"{cmd} {args.reps}\n")
    workers[key].stdin.flush()
    return json.loads(workers[key].stdout.readline())

  t = {"ours": [], "torch": [], "dense": [], "head": [], "torch_head": []}
  for r in range(rounds):
    t["ours"] += time_jax(ours, (params, xj, yj), args.reps)
    if workers:
      time.sleep(1.0)
      t["torch"] += torch_times("torch", "time")
      time.sleep(1.0)
    t["head"] += time_jax(ours_head, (head_w, xj), args.reps)
    if workers:
      time.sleep(1.0)
      t["torch_head"] += torch_times("torch_head", "head")
    if dense is not None and r < args.dense_rounds:
      time.sleep(1.0)
      t["dense"] += time_jax(dense, (w, xj, yj), 1)
    time.sleep(1.0)
    print(f"round {r}: " + ", ".join(
        f"{k} {np.median(v) * 1e3:.1f} ms" for k, v in t.items() if v))
  for proc in workers.values():
    proc.stdin.write("quit\n")
    proc.stdin.flush()
    proc.wait()
  if workers:
    os.unlink(tmp.name)
  med = {k: (float(np.median(v)) if v else None) for k, v in t.items()}
  return {"name": name, **med, "note": note}


if __name__ == "__main__":
  sys.exit(main())

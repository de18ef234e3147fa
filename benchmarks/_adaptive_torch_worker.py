"""Torch side of bench_adaptive.py (run in the torch venv; driven over stdin).

Commands, one per line:
  setup <data.npz>   build nn.AdaptiveLogSoftmaxWithLoss for the sizes in the
                     file (x, y, cutoffs, n_classes, div_value), warm up
  time <reps>        time <reps> fwd+bwd steps; prints a JSON list of seconds
  head <reps>        the same for the head alone (m.head + log_softmax + the
                     head target's log-probability), for the breakdown
  quit
"""
import json
import sys
import time

import numpy as np
import torch


def main():
  m = x = y = head_idx = None
  for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "setup":
      d = np.load(args[0])
      torch.manual_seed(0)
      m = torch.nn.AdaptiveLogSoftmaxWithLoss(
          int(d["x"].shape[1]), int(d["n_classes"]), d["cutoffs"].tolist(),
          div_value=float(d["div_value"]))
      x = torch.tensor(d["x"], requires_grad=True)
      y = torch.tensor(d["y"])
      head_idx = None
      for _ in range(2):
        step(m, x, y)
      print(json.dumps({"ready": True, "threads": torch.get_num_threads(),
                        "version": torch.__version__}), flush=True)
    elif cmd in ("time", "head"):
      fn = step if cmd == "time" else head_step
      if cmd == "head" and head_idx is None:
        head_idx = head_targets(m, y)
        fn(m, x, head_idx)
      times = []
      for _ in range(int(args[0])):
        t0 = time.perf_counter()
        fn(m, x, y if cmd == "time" else head_idx)
        times.append(time.perf_counter() - t0)
      print(json.dumps(times), flush=True)
    elif cmd == "quit":
      return


def step(m, x, y):
  m.zero_grad(set_to_none=True)
  x.grad = None
  loss = m(x, y).loss
  loss.backward()
  return loss.item()


def head_targets(m, y):
  """The head column of each target: itself in the shortlist, else its cluster token."""
  cluster = torch.bucketize(y, torch.tensor(m.cutoffs), right=True)
  return torch.where(y < m.shortlist_size, y, m.shortlist_size + cluster - 1)


def head_step(m, x, head_idx):
  m.zero_grad(set_to_none=True)
  x.grad = None
  lp = torch.log_softmax(m.head(x), dim=1)
  loss = -lp.gather(1, head_idx[:, None]).mean()
  loss.backward()
  return loss.item()


if __name__ == "__main__":
  main()

"""Torch side of bench_adaptive.py (run in the torch venv; driven over stdin).

Commands, one per line:
  setup <data.npz>   build nn.AdaptiveLogSoftmaxWithLoss for the sizes in the
                     file (x, y, cutoffs, n_classes, div_value), warm up
  time <reps>        time <reps> fwd+bwd steps; prints a JSON list of seconds
  quit
"""
import json
import sys
import time

import numpy as np
import torch


def main():
  m = x = y = None
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
      for _ in range(2):
        step(m, x, y)
      print(json.dumps({"ready": True, "threads": torch.get_num_threads(),
                        "version": torch.__version__}), flush=True)
    elif cmd == "time":
      times = []
      for _ in range(int(args[0])):
        t0 = time.perf_counter()
        step(m, x, y)
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


if __name__ == "__main__":
  main()

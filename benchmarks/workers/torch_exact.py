"""torch peer for bench_exact.py, fwd+bwd (run in the torch venv): F.linear + F.cross_entropy,
or with ``chunked`` torch's own F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())."""
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import serve  # noqa: E402

state = {}


def rss_mib():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def setup(msg):
  n, d, v = msg["n"], msg["d"], msg["v"]
  g = np.random.default_rng(0)
  state["x"] = torch.tensor(g.normal(size=(n, d)).astype(np.float32), requires_grad=True)
  state["w"] = torch.tensor((g.normal(size=(v, d)) / np.sqrt(d)).astype(np.float32), requires_grad=True)
  state["y"] = torch.tensor(g.integers(0, v, size=n))
  state["chunked"] = bool(msg.get("chunked"))
  state["base_rss"] = rss_mib()
  return {"version": torch.__version__, "threads": torch.get_num_threads()}


def step():
  x, w, y = state["x"], state["w"], state["y"]
  for t in (x, w):
    t.grad = None
  if state["chunked"]:
    loss = F.linear_cross_entropy(x, w, y, options=torch.nn.LinearCrossEntropyOptions())
  else:
    loss = F.cross_entropy(F.linear(x, w), y)
  loss.backward()
  return loss.item()


def time_once(msg):
  t0 = time.perf_counter()
  step()
  dt = time.perf_counter() - t0
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
  return {"seconds": dt, "peak_rss_increase_mib": peak - state["base_rss"]}


serve({"setup": setup, "time": time_once})

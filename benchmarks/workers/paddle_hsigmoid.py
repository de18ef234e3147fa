"""Paddle peer for bench_hsigmoid.py: F.hsigmoid_loss fwd+bwd (run in the Paddle venv)."""
import os
import resource
import sys
import time

import numpy as np
import paddle
import paddle.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import serve  # noqa: E402

state = {}


def rss_mib():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def setup(msg):
  paddle.set_device("cpu")
  n, d, v = msg["n"], msg["d"], msg["v"]
  g = np.random.default_rng(0)
  state["x"] = paddle.to_tensor(g.standard_normal((n, d), dtype=np.float32), stop_gradient=False)
  w = g.standard_normal((v - 1, d), dtype=np.float32)
  w *= np.float32(1 / np.sqrt(d))
  state["w"] = paddle.to_tensor(w, stop_gradient=False)
  del w
  state["b"] = paddle.to_tensor(np.zeros((v - 1, 1), np.float32), stop_gradient=False)
  state["y"] = paddle.to_tensor(g.integers(0, v, size=(n, 1)))
  state["v"] = v
  state["base_rss"] = rss_mib()
  return {"version": paddle.__version__, "threads": paddle.get_flags(["FLAGS_paddle_num_threads"])}


def step():
  x, w, b, y = state["x"], state["w"], state["b"], state["y"]
  for t in (x, w, b):
    t.clear_gradient(set_to_zero=False)
  loss = F.hsigmoid_loss(x, y, state["v"], w, b).mean()
  loss.backward()
  return float(loss)


def time_once(msg):
  t0 = time.perf_counter()
  loss = step()
  dt = time.perf_counter() - t0
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
  return {"seconds": dt, "loss": loss, "peak_rss_increase_mib": peak - state["base_rss"]}


serve({"setup": setup, "time": time_once})

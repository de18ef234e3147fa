"""Shared benchmark harness: machine description, alternated timing, peer workers.

Protocol (DEVELOPERS.md): contenders run in alternation (A B A B ...), medians
are reported, compile/warm-up is excluded, and a short sleep separates a JAX
run from a peer-framework run so one runtime's spinning threads do not slow
the other. Peers (torch, Paddle, TF) live in their own virtual environments,
so they run in a persistent worker subprocess that times itself.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Peer frameworks live in their own virtual environments, made by
# `bash benchmarks/setup_peers.sh` under <repo>/.peers/{torch,paddle,tf,cce}.
VENVS = os.environ.get("BIGSOFTMAX_VENVS", os.path.join(ROOT, ".peers"))


def peer_python(framework: str) -> str | None:
  """The interpreter of a peer framework, or None when it is not set up.

  Looks at ``$BIGSOFTMAX_<NAME>_PYTHON`` first, then ``<VENVS>/<name>/bin/python``
  (``VENVS`` is ``$BIGSOFTMAX_VENVS`` or the repository's ``.peers/``).
  """
  env = os.environ.get(f"BIGSOFTMAX_{framework.upper()}_PYTHON")
  path = env or os.path.join(VENVS, framework, "bin", "python")
  return path if os.path.exists(path) else None


def require_peer(framework: str) -> str:
  """Like ``peer_python`` but exits with a one-line hint when the peer is missing."""
  path = peer_python(framework)
  if path is None:
    sys.exit(f"no {framework} interpreter: run `bash benchmarks/setup_peers.sh {framework}` "
             f"(or set BIGSOFTMAX_{framework.upper()}_PYTHON), or pass --no-{framework}")
  return path


def machine_description() -> str:
  cpu = platform.processor() or "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  mem = ""
  try:
    with open("/proc/meminfo") as f:
      mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
  except OSError:
    pass
  import jax
  dev = jax.devices()[0]
  return (f"{cpu}, {os.cpu_count()} cores, {mem}; python {platform.python_version()}, "
          f"jax {jax.__version__} on {dev.platform} ({dev.device_kind})")


def block(x):
  import jax
  return jax.block_until_ready(x)


def time_call(fn: Callable[[], object]) -> float:
  t0 = time.perf_counter()
  block(fn())
  return time.perf_counter() - t0


def time_jax(fn: Callable, args: tuple, reps: int) -> list[float]:
  """Seconds of ``reps`` calls ``fn(*args)``, each waited for."""
  return [time_call(lambda: fn(*args)) for _ in range(reps)]


def jax_temp_bytes(jitted, *args) -> int | None:
  """XLA's compiled temporary allocation (excludes arguments and outputs)."""
  try:
    ma = jitted.lower(*args).compile().memory_analysis()
    return int(ma.temp_size_in_bytes)
  except Exception:  # some backends do not report it
    return None


class Worker:
  """A peer framework in its own interpreter, driven by JSON lines on stdin/stdout."""

  def __init__(self, python: str, script: str, setup: dict):
    self.proc = subprocess.Popen([python, "-u", script], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, cwd=HERE)
    self.version = self.call({"op": "setup", **setup})["version"]

  def call(self, msg: dict) -> dict:
    self.proc.stdin.write(json.dumps(msg) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"peer worker died (exit code {self.proc.poll()})")
    out = json.loads(line)
    if "error" in out:
      raise RuntimeError(f"peer worker error: {out['error']}")
    return out

  def time(self) -> float:
    return self.call({"op": "time"})["seconds"]

  def close(self):
    try:
      self.call({"op": "quit"})
    except Exception:
      pass
    self.proc.wait(timeout=30)


def serve(handlers: dict[str, Callable[[dict], dict]]) -> None:
  """Worker side: answer JSON-line requests until 'quit'."""
  for line in sys.stdin:
    msg = json.loads(line)
    if msg["op"] == "quit":
      print(json.dumps({"ok": True}), flush=True)
      return
    try:
      out = handlers[msg["op"]](msg)
    except Exception as e:  # report, keep serving
      out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)


def alternate(contenders: dict[str, Callable[[], float]], rounds: int,
              peer_names: tuple[str, ...] = (), sleep_s: float = 1.0,
              raw: dict[str, list[float]] | None = None) -> dict[str, float]:
  """Runs each contender once per round, in turn; returns the median seconds.

  Each round starts one contender later than the one before (A B C, B C A, ...), so
  no contender always runs first after the pause or right after the same neighbour.
  ``raw``, when given, receives every contender's list of times.
  """
  times = {k: [] for k in contenders}
  names = list(contenders)
  for r in range(rounds):
    prev_peer = None
    for name in names[r % len(names):] + names[:r % len(names)]:
      is_peer = name in peer_names
      if prev_peer is not None and prev_peer != is_peer:
        time.sleep(sleep_s)
      times[name].append(contenders[name]())
      prev_peer = is_peer
    time.sleep(sleep_s)
  if raw is not None:
    raw.update(times)
  return {k: statistics.median(v) for k, v in times.items()}


def fmt_bytes(n: int | None) -> str:
  if n is None:
    return "n/a"
  return f"{n / 2**20:,.0f} MiB"

r"""Trains the same LM with every head for the same wall-clock budget and compares them.

Usage (from the repository root)::

  python -m examples.lm.compare_heads --budget_s=120 --out=examples/results/compare_heads_cpu.md

Each head gets ``budget_s`` seconds of training (compilation excluded: one
warm-up step first). To share machine noise fairly the budget is cut into
``--slices`` slices run round-robin (full, adaptive, hsigmoid, hsigmoid/huffman,
sampled, full, ...), each head keeping its own state and batch sequence.
Validation perplexity is then computed for every head with exact
log-probabilities on the same validation tokens (``config.eval_max_tokens``).
``--quick`` uses a tiny budget and vocabulary for a smoke run.
"""
from __future__ import annotations

import os
import platform
import time

from absl import app, flags, logging

from examples import cli

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "lm_lstm.py")
FLAGS = flags.FLAGS
cli.define_config_flag(os.path.normpath(_DEFAULT), "Base LM config.")
flags.DEFINE_float("budget_s", 120.0, "Training seconds per head (compilation excluded).")
flags.DEFINE_integer("slices", 6, "Round-robin slices the budget is cut into.")
flags.DEFINE_list("heads", ["full", "adaptive", "hsigmoid", "hsigmoid/huffman", "sampled"],
                  "Heads to compare (hsigmoid/huffman = hsigmoid with the Huffman tree).")
flags.DEFINE_string("out", "", "Also write the report to this file.")
flags.DEFINE_bool("quick", False, "Tiny budget and vocabulary (smoke test).")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def compare(config, heads_to_run, budget_s: float, slices: int) -> list[dict]:
  """Round-robin training of every head; returns one result dict per head."""
  import jax

  from examples import common
  from examples.lm import train

  train.check_config(config)
  mesh = common.make_mesh(config.num_devices)
  common.check_batch_divisible(config.batch_size, mesh)
  vocab, streams = train.load_data(config)
  valid = train.eval_batches(streams["valid"], batch_size=config.batch_size,
                             seq_len=config.seq_len, max_tokens=config.eval_max_tokens)
  runs = []
  for name in heads_to_run:
    head, _, tree = name.partition("/")
    c = config.copy_and_resolve_references()
    c.unlock()
    c.head, c.hsigmoid_tree = head, tree or "default"
    model, tx, _ = train.build(c, vocab)
    state = train.init_state(model, tx, c, mesh)
    train_step, eval_step = train.make_steps(model, tx, mesh, c.seed)
    t0 = time.perf_counter()
    batch = common.put_global_batch(
        train.train_batch(streams["train"], 0, batch_size=c.batch_size, seq_len=c.seq_len,
                          seed=c.seed), mesh)
    state, m = train_step(state, batch)  # compile + first step, not timed
    common.check_finite(float(m["loss"]), 1)
    runs.append({"name": name, "state": state, "train_step": train_step, "eval_step": eval_step,
                 "step": 1, "seconds": 0.0, "tokens": 0, "compile_s": time.perf_counter() - t0,
                 "params": sum(x.size for x in jax.tree.leaves(state["params"])), "loss": []})
    print(f"{name}: compiled in {runs[-1]['compile_s']:.1f}s, {runs[-1]['params']:,} params",
          flush=True)
  per_slice = budget_s / slices
  for s in range(slices):
    for r in runs:
      start = time.perf_counter()
      while time.perf_counter() - start < per_slice:
        batch = common.put_global_batch(
            train.train_batch(streams["train"], r["step"], batch_size=config.batch_size,
                              seq_len=config.seq_len, seed=config.seed), mesh)
        r["state"], m = r["train_step"](r["state"], batch)
        loss = float(m["loss"])  # also waits for the step to finish
        common.check_finite(loss, r["step"] + 1)
        r["loss"].append(loss)
        r["step"] += 1
        r["tokens"] += config.batch_size * config.seq_len
      r["seconds"] += time.perf_counter() - start
    print(f"slice {s + 1}/{slices}: " + ", ".join(f"{r['name']} {r['step']} steps" for r in runs),
          flush=True)
  for r in runs:
    nll, count = common.eval_nll_sum(r["eval_step"], r["state"], valid, mesh)
    r["valid_ppl"] = common.perplexity(nll, count)
    r["tokens_per_s"] = r["tokens"] / r["seconds"]
    tail = r["loss"][-50:]
    r["train_loss"] = sum(tail) / len(tail)
    del r["state"], r["train_step"], r["eval_step"]
  return runs


def report(config, runs, budget_s, slices, vocab_size, load_before, load_after) -> str:
  import jax
  import flax
  import optax
  base = next((r for r in runs if r["name"] == "full"), runs[0])
  lines = [
      f"Same wall-clock budget per head: {budget_s:.0f} s of training (compilation excluded), "
      f"{slices} round-robin slices.",
      f"Model: {config.model}, emb {config.emb_dim}, hidden {config.hidden_dim}, "
      f"{config.num_layers} layer(s); batch {config.batch_size} x {config.seq_len} tokens; "
      f"vocabulary {vocab_size:,}; adaptive cutoffs {tuple(config.adaptive_cutoffs)}, "
      f"div {config.adaptive_div_value}; sampled {config.sampled_num_samples} negatives.",
      f"Validation perplexity: exact log-probabilities on the first "
      f"{config.eval_max_tokens or 'all'} validation tokens of the corpus "
      f"({config.data_dir or 'Python standard library'}).",
      "",
      "| head | steps | tokens/s | speed vs full | train loss (last 50) | valid ppl | ppl vs full | params |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in runs:
    lines.append(
        f"| {r['name']} | {r['step']:,} | {r['tokens_per_s']:,.0f} | "
        f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['train_loss']:.3f} | "
        f"{r['valid_ppl']:.1f} | {r['valid_ppl'] / base['valid_ppl']:.3f} | {r['params']:,} |")
  lines += [
      "",
      "(train loss of `sampled` is its sampled training loss, not comparable to the others.)",
      f"Machine: {_cpu_model()}, {os.cpu_count()} cores, {len(jax.devices())} JAX device(s); "
      f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
      f"Python {platform.python_version()}.",
      f"Load average before/after: {load_before} / {load_after} on {os.cpu_count()} cores (this"
      " run keeps them busy itself; more than that means other jobs shared the CPU, and the"
      " round-robin slices share that noise).",
  ]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = FLAGS.config.copy_and_resolve_references()
  budget, slices = FLAGS.budget_s, FLAGS.slices
  if FLAGS.quick:
    config.max_vocab, config.adaptive_cutoffs, config.sampled_num_samples = 2000, (200, 800), 64
    config.eval_max_tokens = 2000
    budget, slices = 4.0, 2
  load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
  runs = compare(config, FLAGS.heads, budget, slices)
  from examples.lm import train
  vocab, _ = train.load_data(config)
  load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())
  text = report(config, runs, budget, slices, len(vocab), load_before, load_after)
  print(text)
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(os.path.normpath(_DEFAULT), doc=__doc__))

"""One process of the 2-process test in tests/test_multiprocess.py (not a test itself).

Usage: python tests/examples/_mp_lm_worker.py PORT NUM_PROCESSES PROCESS_ID CONFIG_JSON WORKDIR OUT_JSON

Joins the job with ``jax.distributed.initialize`` (CPU collectives: gloo),
makes one eager library call on global arrays spanning both processes, then
trains the example LM on the configured mesh in two legs (stop at
``first_steps``, then resume from the shared checkpoint to
``num_train_steps``), and writes what it saw to OUT_JSON.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main(port, num_processes, process_id, config_json, workdir, out_json):
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", int(num_processes), int(process_id))
  import ml_collections
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P

  import jax_bigsoftmax as jbs
  from examples.lm import train

  cfg = json.loads(config_json)
  first = cfg.pop("first_steps")
  out = {"process_count": jax.process_count(), "local_devices": jax.local_device_count()}

  # An eager library call on global (not fully addressable) arrays.
  mesh = jax.make_mesh((2, 4), ("data", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=(8, 16)).astype(np.float32), rng.normal(size=(64, 16)).astype(np.float32)
  y = rng.integers(0, 64, size=(8,)).astype(np.int32)
  put = lambda a, spec: jax.make_array_from_callback(a.shape, NamedSharding(mesh, spec),
                                                     lambda idx: a[idx])
  gy = put(y, P("data"))
  assert not gy.is_fully_addressable
  loss = jbs.vocab_parallel_cross_entropy(put(x, P("data", None)), put(w, P("model", None)), gy,
                                          mesh=mesh, vocab_axis="model", data_axis="data")
  out["eager_loss"] = float(loss)
  out["eager_reference"] = float(jbs.linear_cross_entropy(x, w, y))

  config = ml_collections.ConfigDict(cfg)
  total = config.num_train_steps
  config.num_train_steps = first
  train.train_and_evaluate(config, workdir)
  config.num_train_steps = total
  result = train.train_and_evaluate(config, workdir)
  out["records"] = result["records"]
  out["valid_ppl"] = result["valid_ppl"]
  head_w = result["state"]["params"]["head"]["impl"]["weight"]
  out["head_weight_shard_shape"] = list(head_w.sharding.shard_shape(head_w.shape))
  with open(out_json, "w") as f:
    json.dump(out, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])

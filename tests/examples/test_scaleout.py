"""Scale-out of the example LM: 2-D data x model meshes, checkpoints across mesh
shapes, and a real 2-process run (jax.distributed, gloo CPU collectives).

The 8 CPU devices come from tests/conftest.py; the worker processes get 4 each.
"""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import ROOT

from examples.lm import train as lm_train  # noqa: E402
from helpers import tiny_lm  # noqa: E402

pytestmark = pytest.mark.slow


def scaled_lm(corpus_dir, **overrides):
  # V = 256 divides by every model-axis size used here.
  return tiny_lm(corpus_dir, **{"max_vocab": 256, "num_devices": 0, "dropout_rate": 0.0,
                                **overrides})


def train_losses(out):
  return [r["train_loss"] for r in out["records"] if "train_loss" in r]


def test_mesh_shape_parsing_and_errors(corpus_dir, tmp_path):
  assert lm_train._parse_mesh_shape("data=4, model=2") == {"data": 4, "model": 2}
  assert lm_train._parse_mesh_shape("") == {}
  for bad in ("model=8", "data=4,data=2", "data=x", "data=0", "data=2,pipe=4"):
    assert lm_train._parse_mesh_shape(bad) is None
  with pytest.raises(ValueError, match="config.mesh_shape='model=8' is invalid"):
    lm_train.train_and_evaluate(scaled_lm(corpus_dir, mesh_shape="model=8"), str(tmp_path))
  with pytest.raises(ValueError, match="has 6 devices but 8 are in use"):
    lm_train.train_and_evaluate(scaled_lm(corpus_dir, mesh_shape="data=3,model=2"),
                                str(tmp_path))
  with pytest.raises(ValueError, match="head='hsigmoid' cannot be sharded"):
    lm_train.train_and_evaluate(scaled_lm(corpus_dir, head="hsigmoid",
                                          mesh_shape="data=4,model=2"), str(tmp_path))


@pytest.mark.parametrize("head", ["full", "adaptive", "sampled"])
def test_2d_mesh_equals_data_parallel_and_one_device(corpus_dir, tmp_path, head):
  shapes = {"one": dict(num_devices=1), "data8": dict(mesh_shape="data=8"),
            "data4_model2": dict(mesh_shape="data=4,model=2")}
  if head != "full":  # one data-parallel reference is enough here
    del shapes["data8"]
  runs = {k: lm_train.train_and_evaluate(scaled_lm(corpus_dir, head=head, **v),
                                         str(tmp_path / k)) for k, v in shapes.items()}
  for k in shapes:
    np.testing.assert_allclose(train_losses(runs[k]), train_losses(runs["one"]), rtol=2e-5)
    np.testing.assert_allclose(runs[k]["valid_ppl"], runs["one"]["valid_ppl"], rtol=2e-5)
  impl = runs["data4_model2"]["state"]["params"]["head"]["impl"]
  w = impl["tail_1_out"] if head == "adaptive" else impl["weight"]
  assert w.sharding.spec[1 if head == "adaptive" else 0] == "model"
  assert w.sharding.shard_shape(w.shape) != w.shape  # no device holds the whole matrix


def test_checkpoint_restores_onto_another_mesh_shape(corpus_dir, tmp_path):
  """4 steps on data=8 == 2 steps on data=4,model=2, stop, resume on data=2,model=4."""
  cfg = lambda n, shape: scaled_lm(corpus_dir, num_train_steps=n, checkpoint_every_steps=2,
                                   eval_every_steps=4, mesh_shape=shape)
  straight = lm_train.train_and_evaluate(cfg(4, "data=8"), str(tmp_path / "a"))
  lm_train.train_and_evaluate(cfg(2, "data=4,model=2"), str(tmp_path / "b"))
  resumed = lm_train.train_and_evaluate(cfg(4, "data=2,model=4"), str(tmp_path / "b"))
  assert [r["step"] for r in resumed["records"] if "train_loss" in r] == [1, 2, 3, 4]
  np.testing.assert_allclose(train_losses(resumed), train_losses(straight), rtol=2e-5)
  w = resumed["state"]["params"]["head"]["impl"]["weight"]
  assert w.sharding.shard_shape(w.shape) == (64, 16)  # 256 rows over model=4
  for x, y in zip(jax.tree.leaves(straight["state"]["params"]),
                  jax.tree.leaves(resumed["state"]["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_process(corpus_dir, tmp_path):
  """2 processes x 4 CPU devices on data=2,model=4 == 1 process x 8 devices; one shared
  checkpoint written and restored by both; metrics written once (process 0)."""
  config = scaled_lm(corpus_dir, mesh_shape="data=2,model=4", num_train_steps=4,
                     checkpoint_every_steps=2, eval_every_steps=4)
  reference = lm_train.train_and_evaluate(config, str(tmp_path / "one"))
  port, workdir = _free_port(), tmp_path / "two"
  cfg = json.dumps({**config.to_dict(), "first_steps": 2})
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "tests", "examples", "_mp_lm_worker.py"), str(port), "2", str(i),
       cfg, str(workdir), str(tmp_path / f"out{i}.json")],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=600)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i} failed:\n{logs[i][-3000:]}"
  outs = [json.load(open(tmp_path / f"out{i}.json")) for i in range(2)]
  for out in outs:
    assert out["process_count"] == 2 and out["local_devices"] == 4
    np.testing.assert_allclose(out["eager_loss"], out["eager_reference"], rtol=1e-5)
    np.testing.assert_allclose([r["train_loss"] for r in out["records"] if "train_loss" in r],
                               train_losses(reference), rtol=2e-5)
    np.testing.assert_allclose(out["valid_ppl"], reference["valid_ppl"], rtol=2e-5)
    assert out["head_weight_shard_shape"] == [64, 16]
  assert "resumed from checkpoint at step 2" in logs[0]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  # Metrics were written by process 0 only: each step's record appears once.
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in lines if "train_loss" in r] == [1, 2, 3, 4]

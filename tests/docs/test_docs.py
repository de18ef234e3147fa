"""Every ```python block of README.md and docs/*.md runs as written; the docs site builds.

Blocks of one file run in order in one fresh interpreter (they share a
namespace, as a reader pasting them one after the other would), with the 8
fake CPU devices of tests/conftest.py. The Sphinx build needs the `docs` extra.
"""
import glob
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT
PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[str]:
  """The bodies of the ```python fenced blocks of a Markdown text, in order."""
  return _BLOCK.findall(text)


def test_block_extraction():
  text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\nprint(x)\n```\n"
  assert python_blocks(text) == ["x = 1\n", "print(x)\n"]


def test_readme_and_docs_have_examples():
  counts = {p: len(python_blocks(open(os.path.join(ROOT, p)).read())) for p in PAGES}
  assert counts["README.md"] >= 4, counts
  for page in ("docs/exact.md", "docs/hsigmoid.md", "docs/adaptive.md", "docs/sampled.md"):
    assert counts.get(page, 0) >= 1, (page, counts)


@pytest.mark.slow  # a fresh interpreter compiling every block: ~5-60 s a page
@pytest.mark.parametrize("page", [p for p in PAGES
                                  if python_blocks(open(os.path.join(ROOT, p)).read())])
def test_python_blocks_run(page, tmp_path):
  blocks = python_blocks(open(os.path.join(ROOT, page)).read())
  # One script, each block announced, so a failure names the block that failed.
  script = "\n".join(f"print('--- block {i + 1} of {len(blocks)}', flush=True)\n{b}"
                     for i, b in enumerate(blocks))
  path = tmp_path / "blocks.py"
  path.write_text(script)
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  run = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, f"{page}:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
  pytest.importorskip("sphinx", reason="the docs extra (pip install -e '.[docs]') is not installed")
  pytest.importorskip("myst_parser")
  run = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                        os.path.join(ROOT, "docs"), str(tmp_path / "html")],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-4000:]
  assert (tmp_path / "html" / "api" / "index.html").exists()

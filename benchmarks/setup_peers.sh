#!/usr/bin/env bash
# Creates one virtual environment per peer framework under <repo>/.peers/ (ignored by git):
#
#   bash benchmarks/setup_peers.sh                  # all of them: torch paddle tf cce
#   bash benchmarks/setup_peers.sh torch tf         # only these
#
# The benchmarks (benchmarks/common.py: peer_python) and the fixture scripts
# (tests/fixtures/make_fixtures_*.py, run as .peers/<name>/bin/python tests/fixtures/make_fixtures_...)
# find the interpreters there. PYTHON=python3.11 picks the base interpreter;
# BIGSOFTMAX_VENVS=/some/dir puts the environments elsewhere (the benchmarks read it too).
# Versions are those that produced the committed fixtures and benchmark tables.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${BIGSOFTMAX_VENVS:-.peers}"
PYTHON="${PYTHON:-python3}"

declare -A PACKAGES=(
  [torch]="torch==2.13.0 numpy"
  [paddle]="paddlepaddle==3.3.1 numpy"
  [tf]="tensorflow-cpu==2.21.0 numpy"
  [cce]="jax-cce==0.1.0 jax==0.10.2 numpy"
)

names=("$@")
[ ${#names[@]} -eq 0 ] && names=(torch paddle tf cce)
failed=()
for name in "${names[@]}"; do
  if [ -z "${PACKAGES[$name]+x}" ]; then
    echo "unknown peer '$name'; choose from: ${!PACKAGES[*]}" >&2
    exit 2
  fi
  venv="$PEERS/$name"
  echo "== $name -> $venv (${PACKAGES[$name]})"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  if "$venv/bin/python" -m pip install -q ${PACKAGES[$name]}; then
    echo "   ok: $venv/bin/python"
  else
    echo "   FAILED: pip install ${PACKAGES[$name]} (the benchmarks skip or refuse this peer)" >&2
    failed+=("$name")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "not installed: ${failed[*]}" >&2
  exit 1
fi

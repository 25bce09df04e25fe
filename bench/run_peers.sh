#!/usr/bin/env bash
# Runs the PyTorch and Keras peers of `fmnist bench`, one program at a time (the machine has 2
# cores: runs must not overlap), and prints their JSON lines.
#   bench/run_peers.sh [linear|mlp|cnn ...]        default: all three, PyTorch then Keras
# The first call makes a virtual environment with the pinned libraries (requirements.txt; several
# GiB, several minutes) in $VENV (default ~/.cache/fmnist-peers). Compare the figures with
# `fmnist --threads 2 bench` run just before or after, on a quiet machine (check `uptime`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${VENV:-$HOME/.cache/fmnist-peers}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$here/requirements.txt"
fi
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(linear mlp cnn)
for w in "${workloads[@]}"; do
  "$venv/bin/python" "$here/torch_bench.py" "$w" | tail -1
  "$venv/bin/python" "$here/keras_bench.py" "$w" | tail -1
done

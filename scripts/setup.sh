#!/usr/bin/env bash
# Creates .venv with the exact CPU-machine PyTorch pins and spatialprobe (editable) with the test and ray extras.
# Idempotent: skips the install when pyproject.toml has not changed since the last one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=".venv/.installed-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# torch/torchvision pinned here only (pyproject declares ranges): these builds lie on the CI machines' disk
.venv/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
# the ray extra too: tests/test_executors.py runs the Ray executor (it skips without Ray)
.venv/bin/pip install --quiet -e ".[test,ray]"
rm -f .venv/.installed-* && touch "$stamp"

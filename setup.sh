#!/usr/bin/env bash
# Creates .venv and installs the pinned dependencies; `setup.sh test` adds the test tools
# and what the tests compare against: the PyTorch peer of the benchmark and Hugging Face
# transformers (export/import parity).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
if [[ "${1:-}" == "test" ]]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt \
    -r requirements-bench.txt -r requirements-hf.txt
fi

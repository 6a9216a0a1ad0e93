#!/usr/bin/env bash
# Creates .venv and installs the pinned dependencies; `setup.sh test` adds the test tools,
# the schedulers and the GCS emulator the tests start, and what the tests compare against:
# the PyTorch peer of the benchmark and Hugging Face transformers (export/import parity).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
if [[ "${1:-}" == "test" ]]; then
  # The schedulers the tests run for real (tests/test_schedulers.py): SLURM, munge and
  # Open MPI from Debian, as root; elsewhere those tests skip and say why.
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null && ! command -v slurmctld >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      slurm-wlm munge openmpi-bin >/dev/null
  fi
  # Headless Chromium for the chat-page test (tests/test_serve_page.py drives it through
  # Playwright by its path: nothing downloads a browser).
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt \
    -r requirements-bench.txt -r requirements-hf.txt -r requirements-lmeval.txt
fi

#!/usr/bin/env bash
# Install, lint, run the whole test suite. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python3 -m ruff check src tests benchmarks
python3 -m pytest -q "$@"

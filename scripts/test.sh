#!/usr/bin/env bash
# Install, lint, run the whole test suite. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The report test renders HTML in Debian's headless Chromium; installed once, skipped if impossible.
if [ ! -x /usr/bin/chromium ]; then
  (apt-get update -qq && apt-get install -y -qq chromium) \
    || echo "chromium could not be installed: the browser test will be skipped" >&2
fi
python3 -m ruff check src tests benchmarks
python3 -m ruff format --check src tests benchmarks
# Two workers (FEDPRESS_TEST_WORKERS): a test that starts Flower processes spends much of its
# time waiting on them (2 cores: the suite 831 s on one worker, 608 s on two); worksteal keeps
# both busy to the end.
python3 -m pytest -q --durations=15 -n "${FEDPRESS_TEST_WORKERS:-2}" --dist worksteal "$@"

#!/usr/bin/env bash
# Install, then run the built-in demo: SmolLM2-135M, 2 simulated clients, LoRA-FedAvg, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec fedpress run "$@"

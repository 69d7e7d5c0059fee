"""Every shipped matrix parses and its variants are valid configs for the methods that exist.

Variants of methods not registered in this checkout (cg-fedllm, fedcybgd, ... before their
merge) are still checked for every key of the sections this checkout knows; only their
method name and the sections it brings are left to the method's own tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedpress import registry
from fedpress.compare import read_matrix, resolve
from fedpress.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
MATRICES = sorted((REPO / "examples" / "matrices").glob("*.toml"))
KNOWN_SECTIONS = {f.name for f in dataclasses.fields(RunConfig)}


def test_matrices_are_shipped():
    names = {p.name for p in MATRICES}
    assert {"cg_fedllm_sst2.toml", "fedcybgd_sst2.toml", "fedcybgd_alpaca.toml"} <= names


@pytest.mark.parametrize("path", MATRICES, ids=lambda p: p.name)
def test_shipped_matrix_variants_validate(path, shared_data):
    header, base, variants = read_matrix(path)
    assert header["title"] and variants
    checked = 0
    for name, overrides in variants:
        # A misspelled method (or any other bad key) fails here, naming the variant.
        raw = resolve(base, overrides)
        assert raw.get("method", "lora-fedavg") in registry.names(), f"{path.name}: {name}"
        config = RunConfig.from_dict(raw)
        checked += 1
        for source in (config.data.source, config.data.eval_source):
            if source:  # relative to the repository root, like the example configs
                assert (REPO / source).exists(), f"{path.name}: {name}: {source} not found"
    assert checked == len(variants)

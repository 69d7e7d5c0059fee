"""Every shipped matrix parses and each variant is a valid config of its own method, checked as
`fedpress compare` checks it before running anything: a misspelled method or key fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedpress.compare import load_matrix
from fedpress.errors import FedpressError

REPO = Path(__file__).resolve().parents[1]
MATRICES = sorted((REPO / "examples" / "matrices").glob("*.toml"))


def check_matrix(path: Path) -> int:
    """Validate every variant (method included, no substitute) and find its data files;
    the number of variants checked."""
    matrix = load_matrix(path)
    assert matrix.title and matrix.variants
    for variant in matrix.variants:
        data = variant.config.data
        for source in (data.source, data.eval_source):
            if source:  # relative to the repository root, like the example configs
                assert (REPO / source).exists(), f"{path.name}: {variant.name}: {source} not found"
    return len(matrix.variants)


def test_matrices_are_shipped():
    names = {p.name for p in MATRICES}
    assert {"cg_fedllm_sst2.toml", "fedcybgd_sst2.toml", "fedcybgd_alpaca.toml"} <= names


@pytest.mark.parametrize("path", MATRICES, ids=lambda p: p.name)
def test_shipped_matrix_variants_validate(path, shared_data):
    assert check_matrix(path) > 0


@pytest.mark.parametrize("path", MATRICES, ids=lambda p: p.name)
def test_a_misspelled_method_in_a_shipped_matrix_fails(path, tmp_path):
    text = path.read_text()
    method = next(line for line in text.splitlines() if line.startswith("method = "))
    broken = tmp_path / path.name
    broken.write_text(text.replace(method, method[:-2] + 'x"', 1))
    with pytest.raises(FedpressError, match=r"variant '.+': config key 'method'"):
        check_matrix(broken)

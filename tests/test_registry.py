"""The method registry: every method's parts resolve, and knowing the methods costs no torch."""

import subprocess
import sys

import pytest

from fedpress import registry
from fedpress.registry import Lazy


def lazy_parts(method: registry.Method) -> list[tuple[str, Lazy]]:
    parts = [(f, getattr(method, f)) for f in ("server", "client_task", "local")]
    parts += [(f"client[{phase!r}]", handler) for phase, handler in method.client.items()]
    return [(name, part) for name, part in parts if isinstance(part, Lazy)]


def test_every_registered_part_resolves_to_a_function():
    """A misspelt "module:function" would otherwise surface only when a run reaches it."""
    resolved = 0
    for method in registry.all_methods():
        for name, part in lazy_parts(method):
            assert callable(part.resolve()), f"{method.name}.{name}: {part.target}"
            resolved += 1
        assert method.federated or method.local is not None
    assert resolved >= 20


def test_lazy_names_a_module_and_a_function():
    with pytest.raises(ValueError, match="package.module:function"):
        Lazy("fedpress.task.build_task")


def test_config_validation_and_its_errors_import_no_torch():
    """What makes `fedpress run --set num_client=2` answer at once, not after ~10 s of imports."""
    script = (
        "import sys\n"
        "from fedpress.config import load_config\n"
        "from fedpress.errors import FedpressError\n"
        "for method in ('lora-fedavg', 'cg-fedllm', 'fedcybgd', 'centralized-cyclic'):\n"
        "    load_config(None, [f'method={method}'])\n"
        "try:\n"
        "    load_config(None, ['num_client=2'])\n"
        "except FedpressError as error:\n"
        "    assert 'num_clients' in str(error)\n"
        "else:\n"
        "    raise AssertionError('a misspelt key passed')\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'flwr') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]

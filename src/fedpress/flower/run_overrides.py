"""Flower's `--run-config` as `--set` for a deployed run:

    flwr run deploy <federation> --run-config 'config="/srv/run.toml" rounds=50 train.lr=1e-4'

Flower accepts only the run-config keys an app declares (`[tool.flwr.app.config]` of
deploy/pyproject.toml) and refuses any other at submission (`[code: 15] Invalid run
configuration.`: a misspelled key fails there, in one line). So every scalar key of a fedpress
config is declared there with the value "" ("not overridden"), and the ServerApp turns the keys
given a value into `--set` overrides of the TOML that `config` names, validated like `--set`.
Lists (`data.label_words`, `lora.target_modules`) and options without a default stay in the
TOML. `python -m fedpress.flower.run_overrides` rewrites the declared block after a config
change; a test holds it to the config's keys.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

APP_KEYS = ("config", "out", "resume")  # the app's own keys, not fedpress config keys
BEGIN = "# --- every fedpress config key (generated: python -m fedpress.flower.run_overrides) ---"
END = "# --- end of the generated keys ---"


def overridable_keys() -> list[str]:
    """The dotted scalar keys of a run config, with the method sections' and codecs'."""
    from fedpress.config import RunConfig, flatten

    return [k for k, v in flatten(RunConfig().to_dict()).items() if not isinstance(v, list)]


def overrides(run_config: Mapping[str, Any]) -> list[str]:
    """`key=value` overrides (as `--set` takes them) for the keys given a value."""
    return [
        f"{key}={_literal(value)}"
        for key, value in run_config.items()
        if key not in APP_KEYS and value != ""
    ]


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else str(value)


def declared_block() -> str:
    lines = [f'{key} = ""' for key in overridable_keys()]
    return "\n".join([BEGIN, *lines, END])


def rewrite(pyproject: Path) -> None:
    text = pyproject.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    pyproject.write_text(head.rstrip("\n") + "\n" + declared_block() + (tail or "\n"))


if __name__ == "__main__":
    rewrite(Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/pyproject.toml"))

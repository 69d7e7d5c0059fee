"""`flwr run --run-config` overrides fedpress keys on the deployment engine (the deployed run
itself: test_cross_silo.py's three organisations get their `rounds` this way)."""

import tomllib

import pytest
from flwr.common.config import flatten_dict, fuse_dicts, parse_config_args

from conftest import REPO
from fedpress.config import load_config
from fedpress.errors import FedpressError
from fedpress.flower.run_overrides import APP_KEYS, overridable_keys, overrides


def declared() -> dict:
    app = tomllib.loads((REPO / "deploy" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    return flatten_dict(app["config"])


def test_the_app_declares_every_config_key_and_nothing_else():
    """A key added to the config without `python -m fedpress.flower.run_overrides` fails here."""
    keys = declared()
    assert set(keys) == {*APP_KEYS, *overridable_keys()}
    assert {"rounds", "train.lr", "lora.r", "codec.topk.fraction", "cybgd.peft"} <= set(keys)
    assert all(keys[k] == "" for k in overridable_keys())  # "" = not overridden


def test_run_config_overrides_apply_like_set_and_misspelled_keys_are_refused():
    given = parse_config_args(['config="/srv/run.toml" rounds=50 train.lr=1e-4 lora.r=16'])
    run_config = fuse_dicts(declared(), given, check_keys=True)  # what the SuperLink does
    config = load_config(None, overrides(run_config))
    assert (config.rounds, config.train.lr, config.lora.r) == (50, 1e-4, 16)
    assert config.num_clients == load_config(None).num_clients  # "" left the rest alone
    # A misspelled key: the SuperLink's own check refuses the run before it starts.
    with pytest.raises(ValueError, match="trian"):
        fuse_dicts(declared(), parse_config_args(["trian.lr=1e-4"]), check_keys=True)
    # A bad value: fedpress's validation, in one line, as with --set.
    with pytest.raises(FedpressError, match="'rounds' must be >= 1"):
        load_config(None, overrides({"rounds": 0, "runtime.quantize": "none"}))

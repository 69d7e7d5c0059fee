import tomllib

import pytest

from fedpress.config import RunConfig, load_config
from fedpress.errors import FedpressError


def test_defaults_are_valid_and_round_trip_through_toml():
    config = load_config()
    again = RunConfig.from_dict(tomllib.loads(config.to_toml()))
    assert again == config


def test_overrides_are_typed_from_toml_literals():
    config = load_config(
        None,
        [
            "model=tiny-llama",
            "num_clients=3",
            "train.lr=1e-3",
            "train.gradient_checkpointing=true",
            "lora.target_modules=q_proj,v_proj",
            "data.label_words=['bad', 'good']",
        ],
    )
    assert config.model == "tiny-llama"
    assert config.num_clients == 3
    assert config.train.lr == pytest.approx(1e-3)
    assert config.train.gradient_checkpointing is True
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.data.label_words == ["bad", "good"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("num_client=3", "did you mean 'num_clients'"),
        ("train.lrr=1", "did you mean 'train.lr'"),
        ("num_clients=two", "must be an integer"),
        ("num_clients=0", "must be >= 1"),
        ("method=lora-fedavgg", "did you mean 'lora-fedavg'"),
        ("uplink_codec=int9", "did you mean 'int8'"),
        ("federation.fraction_train=1.5", "fraction_train"),
        ("train=3", "must be a table"),
        ("novalue", "key=value"),
        ("method=fedcybgd cybgd.prune_target=weight", "did you mean 'weights'"),
    ],
)
def test_bad_keys_and_values_name_the_problem(override, message):
    with pytest.raises(FedpressError, match=message):
        load_config(None, override.split(" "))


def test_pruning_the_change_needs_delta_sync():
    fedcybgd = "method=fedcybgd"
    load_config(None, [fedcybgd, "cybgd.prune_target=delta"])  # delta sync is on by default
    with pytest.raises(FedpressError, match="needs cybgd.delta_sync"):
        load_config(None, [fedcybgd, "cybgd.prune_target=delta", "cybgd.delta_sync=false"])


def test_saved_config_reruns_exactly(tmp_path):
    config = load_config(None, ["model=tiny-gpt2", "seed=7", "data.partition=dirichlet"])
    path = tmp_path / "config.toml"
    config.save(path)
    assert load_config(path) == config


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FedpressError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("method = \n")
    with pytest.raises(FedpressError, match="not valid TOML"):
        load_config(bad)

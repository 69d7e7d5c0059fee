"""A codec's `Options` dataclass is its config section (`[codec.topk]`): checked when the config
loads, before torch; the old flat keys (`codec.topk_fraction`) still read, with a warning."""

import dataclasses
import logging
import subprocess
import sys

import pytest

from fedpress.codecs.registry import CODECS
from fedpress.config import RENAMED_KEYS, RunConfig, load_config
from fedpress.errors import FedpressError
from fedpress.flower import protocol


def test_every_codec_with_options_has_its_section_with_the_codecs_defaults():
    config = RunConfig()
    with_options = {n for n, c in CODECS.items() if dataclasses.fields(c.Options)}
    assert with_options == {"int8", "int4", "topk", "powersgd", "qsgd"}
    assert set(config.codec.sections) == with_options
    for name in with_options:
        assert getattr(config.codec, name) == CODECS[name].Options()


def test_the_section_reaches_the_codec_the_run_builds():
    config = load_config(
        None,
        ["uplink_codec=topk", "codec.topk.count=3", "codec.topk.value_dtype=int8"],
    )
    codec = protocol.make_codec("topk", config.codec, uplink=True)
    assert (codec.inner.options.count, codec.inner.options.value_dtype) == (3, "int8")
    int4 = protocol.make_codec(
        "int4", load_config(None, ["codec.int4.block_size=4"]).codec, uplink=False
    )
    assert int4.options.block_size == 4
    # The int8 table is the int8 codec's alone.
    assert protocol.make_codec("int8", RunConfig().codec, uplink=False).options.block_size == 64


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("codec.topk.fraction=2", "config key 'codec.topk.fraction': topk option fraction"),
        ("codec.qsgd.levels=300", "config key 'codec.qsgd.levels'"),
        ("codec.int8.block_size=0", "config key 'codec.int8.block_size'"),
        ("codec.topk.fractoin=0.1", "did you mean 'codec.topk.fraction'"),
        ("codec.topk=3", "'codec.topk' must be a table"),
    ],
)
def test_codec_options_are_checked_when_the_config_loads(override, message):
    with pytest.raises(FedpressError, match=message.replace("(", r"\(")):
        load_config(None, [override])


def test_a_bad_codec_option_is_one_line_without_torch():
    script = (
        "import sys\n"
        "from fedpress.cli import main\n"
        "code = main(['config', '--set', 'codec.topk.fraction=2'])\n"
        "assert code == 2, code\n"
        "heavy = [m for m in ('torch', 'transformers', 'flwr') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr
    assert "codec.topk.fraction" in result.stderr


def test_old_flat_keys_read_under_their_new_names_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="fedpress"):
        config = load_config(
            None, ["codec.block_size=32", "codec.topk_fraction=0.05", "codec.qsgd_levels=8"]
        )
    assert config.codec.int8.block_size == config.codec.int4.block_size == 32
    assert (config.codec.topk.fraction, config.codec.qsgd.levels) == (0.05, 8)
    assert "codec.topk_fraction -> codec.topk.fraction" in caplog.text
    with pytest.raises(FedpressError, match="both set: keep 'codec.topk.fraction'"):
        load_config(None, ["codec.topk_fraction=0.05", "codec.topk.fraction=0.1"])


def test_a_config_saved_before_the_rename_resolves_to_the_same_run():
    """Run folders and compare folders written with the flat keys are recognised as the same
    config (compare reuses a finished variant only when its saved config equals the wanted)."""
    old = RunConfig().to_dict()
    old["codec"] = {
        "error_feedback": "auto",
        "block_size": 64,
        "topk_fraction": 0.01,
        "topk_value_dtype": "fp32",
        "topk_packed_indices": False,
        "powersgd_rank": 4,
        "powersgd_iterations": 1,
        "powersgd_warm_start": True,
        "qsgd_levels": 16,
    }
    assert set(old["codec"]) - {"error_feedback"} == {k.split(".")[1] for k in RENAMED_KEYS}
    assert RunConfig.from_dict(old).to_dict() == RunConfig().to_dict()

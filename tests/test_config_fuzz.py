"""Random and malformed config input either loads or fails with a FedpressError: never an
unexpected exception (which the CLI would show as a traceback)."""

import contextlib
import string
import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from fedpress.config import RunConfig, load_config
from fedpress.errors import FedpressError

KEYS = [
    "method",
    "model",
    "num_clients",
    "rounds",
    "seed",
    "uplink_codec",
    "codec.block_size",
    "train.lr",
    "train.local_steps",
    "data.partition",
    "data.label_words",
    "lora.r",
    "federation.fraction_train",
    "eval",
    "runtime.device",
    "nope",
    "train.nope",
    "a.b.c",
]
VALUES = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "[1, 2]", "['a']", "{x = 1}", "inf", "nan", '""', "="]),
    st.text(string.printable, max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_random_overrides_load_or_fail_cleanly(pairs):
    try:
        config = load_config(None, [f"{k}={v}" for k, v in pairs])
    except FedpressError:
        return
    assert isinstance(config, RunConfig)
    # Whatever loads can be saved and reloaded unchanged (the run folder's config.toml).
    assert RunConfig.from_dict(tomllib.loads(config.to_toml())) == config


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_toml_files_load_or_fail_cleanly(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "config.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(FedpressError):
        load_config(path)

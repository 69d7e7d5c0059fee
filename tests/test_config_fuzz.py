"""Random and malformed config input either loads or fails with a FedpressError: never an
unexpected exception (which the CLI would show as a traceback). Valid TOML that is not a valid
config (a wrong type, an unknown key, a value out of range) is one line and exit 2."""

import contextlib
import json
import math
import string
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpress.cli import main
from fedpress.config import RunConfig, load_config
from fedpress.errors import FedpressError

KEYS = [
    "method",
    "model",
    "num_clients",
    "rounds",
    "seed",
    "uplink_codec",
    "codec.int8.block_size",
    "codec.topk.fraction",
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


# --- valid TOML, invalid config --------------------------------------------------------------

DEFAULTS = RunConfig().to_dict()


def _walk(table: dict, section: str | None = None):
    """(section, key, value) of every leaf; sections are dotted (`codec.topk`), None at the top."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _walk(value, key if section is None else f"{section}.{key}")
        else:
            yield section, key, value


def _sections(table: dict, prefix: str = "") -> list[str]:
    names = []
    for key, value in table.items():
        if isinstance(value, dict):
            names += [f"{prefix}{key}", *_sections(value, f"{prefix}{key}.")]
    return names


LEAVES = {(section, key): value for section, key, value in _walk(DEFAULTS)}
SECTIONS = _sections(DEFAULTS)  # parents before their sub-tables


def table_of(doc: dict, section: str | None) -> dict | None:
    """The table `section` names in `doc`, or None where a fault made a part of it a value."""
    node = doc
    for part in [] if section is None else section.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


finite = {"allow_nan": False, "allow_infinity": False}
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
tables = st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.integers(), max_size=2)
lists = st.lists(st.integers(), max_size=3)
# What TOML can hold that the config's type cannot take (str takes numbers: `model = 123`).
WRONG_TYPE = {
    int: st.one_of(texts, st.booleans(), st.floats(), lists, tables),
    float: st.one_of(texts, st.booleans(), lists, tables),
    bool: st.one_of(texts, st.integers(), st.floats(), lists, tables),
    str: st.one_of(st.booleans(), lists, tables),
    list: st.one_of(st.integers(), st.booleans(), tables, st.lists(st.booleans(), min_size=1)),
}
below = st.integers(max_value=0)
not_a_choice = texts.map(lambda t: t + "~")  # no method, codec or format has a "~"
fraction_outside = st.one_of(
    st.floats(max_value=0.0, exclude_max=True, **finite), st.floats(min_value=1.0, **finite)
)
# Out of the range the config validates (or not one of its choices).
OUT_OF_RANGE = {
    ("", "num_clients"): below,
    ("", "rounds"): below,
    ("", "method"): not_a_choice,
    ("", "uplink_codec"): not_a_choice,
    ("train", "local_steps"): below,
    ("train", "batch_size"): below,
    ("train", "lr"): st.floats(max_value=0.0, **finite),
    ("train", "lr_schedule"): not_a_choice,
    ("lora", "r"): below,
    ("data", "max_length"): st.integers(max_value=7),
    ("data", "eval_size"): st.integers(max_value=-1),
    ("data", "holdout_fraction"): fraction_outside,
    ("data", "format"): not_a_choice,
    ("eval", "batch_size"): below,
    ("federation", "min_replies"): below,
    ("federation", "max_retries"): st.integers(max_value=-1),
    ("federation", "fraction_train"): st.one_of(
        st.floats(max_value=0.0, **finite), st.floats(min_value=1.0, exclude_min=True, **finite)
    ),
    ("cybgd", "turns_per_round"): st.integers(max_value=-1),
    ("cybgd", "prune_ratio"): fraction_outside,
    ("cybgd", "layer_drop_ratio"): fraction_outside,
    ("autoencoder", "compression"): st.integers(-100, 5000).filter(lambda c: c < 1 or 4096 % c),
    ("autoencoder", "crop"): st.integers(-100, 5000).filter(lambda c: c < 64 or c % 64),
    ("autoencoder", "snapshots"): st.integers(max_value=1),
    ("autoencoder", "val_fraction"): st.one_of(
        st.floats(max_value=0.0, **finite), st.floats(min_value=1.0, **finite)
    ),
    ("autoencoder", "scale_quantile"): st.one_of(
        st.floats(max_value=0.5, exclude_max=True, **finite),
        st.floats(min_value=1.0, exclude_min=True, **finite),
    ),
    ("privacy", "clip_norm"): st.floats(max_value=0.0, **finite),
    ("privacy", "delta"): fraction_outside,
    ("privacy", "noise_multiplier"): st.floats(max_value=0.0, exclude_max=True, **finite),
    # A codec's options: its Options dataclass checks them, when the config loads.
    ("codec.topk", "fraction"): st.one_of(
        st.floats(max_value=0.0, **finite), st.floats(min_value=1.0, exclude_min=True, **finite)
    ),
    ("codec.int8", "block_size"): below,
    ("codec.qsgd", "levels"): st.one_of(below, st.integers(min_value=256)),
    ("codec.powersgd", "rank"): below,
}


@st.composite
def invalid_config(draw) -> tuple[dict, list[str]]:
    """The default config as a TOML document with 1-3 faults; the dotted keys they touch."""
    doc = json.loads(json.dumps(DEFAULTS))
    touched = []
    for _ in range(draw(st.integers(1, 3))):
        fault = draw(st.sampled_from(["type", "unknown", "range", "non-finite", "not-a-table"]))
        if fault == "type":
            section, key = draw(st.sampled_from(sorted(LEAVES, key=str)))
            value = draw(WRONG_TYPE[type(LEAVES[section, key])])
        elif fault == "unknown":
            section = draw(st.sampled_from([None, *SECTIONS]))
            known = table_of(DEFAULTS, section)
            key = draw(
                st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True).filter(
                    lambda k, known=known: k not in known
                )
            )
            value = draw(st.one_of(st.integers(), texts, st.booleans()))
        elif fault == "range":
            (section, key), values = draw(st.sampled_from(list(OUT_OF_RANGE.items())))
            section = section or None
            value = draw(values)
        elif fault == "non-finite":
            floats = sorted((k for k, v in LEAVES.items() if isinstance(v, float)), key=str)
            section, key = draw(st.sampled_from(floats))
            value = draw(st.sampled_from([math.inf, -math.inf, math.nan]))
        else:
            section, _, key = draw(st.sampled_from(SECTIONS)).rpartition(".")
            section, value = section or None, draw(st.integers())
        table = table_of(doc, section)
        if table is None:
            continue  # an earlier fault made this section a number
        table[key] = value
        touched.append(key if section is None else f"{section}.{key}")
    return doc, touched


# A TOML basic string escapes the quote, the backslash and control characters.
ESCAPES = {'"': '\\"', "\\": "\\\\"} | {chr(c): f"\\u{c:04x}" for c in [*range(0x20), 0x7F]}


def toml_document(doc: dict) -> str:
    """TOML text for `doc` (top-level scalars first, then one table per section)."""

    def value(v) -> str:  # noqa: ANN001
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)  # inf, -inf and nan are TOML floats too
        if isinstance(v, str):
            return '"' + "".join(ESCAPES.get(c, c) for c in v) + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"

    def is_table(section: str, v) -> bool:  # noqa: ANN001
        return f"{section}" in SECTIONS and isinstance(v, dict)

    def scalars(table: dict, section: str = "") -> list[str]:
        return [f"{k} = {value(v)}" for k, v in table.items() if not is_table(f"{section}{k}", v)]

    lines = scalars(doc)
    for name in SECTIONS:
        table = table_of(doc, name)
        parent = table_of(doc, name.rpartition(".")[0] or None)
        if table is not None and parent is not None:
            lines += ["", f"[{name}]", *scalars(table, f"{name}.")]
    return "\n".join(lines) + "\n"


def test_the_unfaulted_document_is_a_valid_config(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text(toml_document(DEFAULTS))
    assert main(["config", str(path)]) == 0
    assert capsys.readouterr().err == ""


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=invalid_config())
def test_valid_toml_invalid_config_is_one_line_exit_2(tmp_path, capsys, case):
    doc, touched = case
    text = toml_document(doc)
    # Valid TOML holding exactly `doc` (NaN compared as text), so only the config is at fault.
    assert json.dumps(tomllib.loads(text), sort_keys=True) == json.dumps(doc, sort_keys=True)
    path = tmp_path / "config.toml"
    path.write_text(text)
    capsys.readouterr()
    assert main(["config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("fedpress: error: ") and err.count("\n") == 1, err
    # The line names a key it faults (a whole section, or the key with its section).
    assert any(name in err for name in touched), (touched, err)


@pytest.mark.parametrize(
    "text",
    ['method = "\\n~"\n', '"train\\nx" = 1\n', '[train]\n"lr\\r" = 1\n'],
)
def test_a_line_break_inside_a_faulted_key_or_value_still_gives_one_line(tmp_path, capsys, text):
    # Found by the fuzz test above: the value was quoted as it stood, line break included.
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert main(["config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedpress: error: ") and err.count("\n") == 1, err
    assert "\\n" in err or "\\r" in err, err

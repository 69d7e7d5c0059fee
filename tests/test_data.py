import dataclasses
import json
import os
import re
from collections import Counter

import pytest

from fedpress.config import DataConfig
from fedpress.data import (
    build_splits,
    load_examples,
    parity_task,
    partition,
    split_fraction,
)
from fedpress.errors import FedpressError


def test_sst2_loader_maps_labels_to_words(shared_data):
    examples = load_examples(str(shared_data / "sst2" / "test.tsv"), DataConfig(), seed=0)
    assert len(examples) == 872
    assert {e.answer for e in examples} == {" negative", " positive"}
    assert all(e.choices == (" negative", " positive") for e in examples)
    assert examples[0].prompt.startswith("Review: ") and examples[0].prompt.endswith("Sentiment:")


def test_mmlu_loader_reads_a_folder_with_subjects(shared_data):
    examples = load_examples(str(shared_data / "mmlu" / "dev"), DataConfig(), seed=0)
    assert len(examples) == 285
    assert len({e.label for e in examples}) == 57
    assert all(e.answer in (" A", " B", " C", " D") for e in examples)
    assert "\nA. " in examples[0].prompt


def test_alpaca_and_text_loaders(shared_data):
    alpaca = load_examples(str(shared_data / "alpaca" / "alpaca_5000.json"), DataConfig(), 0)
    assert len(alpaca) == 5000 and alpaca[0].prompt.startswith("### Instruction:")
    assert not alpaca[0].choices
    text = load_examples(str(shared_data / "tinyshakespeare" / "input.txt"), DataConfig(), 0)
    assert text[0].prompt == "" and len(text[0].answer) == 512


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(FedpressError, match="not found"):
        load_examples(str(tmp_path / "missing.tsv"), DataConfig(), 0)


@pytest.mark.parametrize("fmt", ["text", "alpaca", "classification"])
def test_only_regular_files_are_read(tmp_path, fmt):
    """/dev/zero would be read until memory ran out and a FIFO without a writer would block
    for ever; both, and a folder where a file is read, are one user error naming the path."""
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.tsv"
    folder.mkdir()
    for path in ("/dev/zero", str(fifo), str(folder)):
        with pytest.raises(FedpressError, match=re.escape(path)):
            load_examples(path, DataConfig(format=fmt), 0)


def test_bad_label_is_reported_with_its_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabel\ngood film\t1\nodd row\t7\n")
    with pytest.raises(FedpressError, match="bad.tsv:3"):
        load_examples(str(path), DataConfig(), 0)


@pytest.mark.parametrize(
    ("name", "fmt", "content"),
    [
        ("blob.bin", "text", bytes(range(256)) * 4),
        ("blob.bin", "auto", bytes(range(256)) * 4),
        ("latin1.json", "alpaca", b'[{"instruction": "caf\xe9", "output": "ok"}]'),
        ("latin1.tsv", "classification", b"sentence\tlabel\ngood\t1\ncaf\xe9 film\t1\n"),
        (
            "latin1.csv",
            "auto",
            b"question,choice0,choice1,choice2,choice3,answer\nq\xe9,a,b,c,d,0\n",
        ),
    ],
)
def test_non_utf8_file_is_a_user_error_naming_it(tmp_path, name, fmt, content):
    """Every text reader (text, json, tsv, csv), by format or guessed from the suffix."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FedpressError, match=f"{name} is not UTF-8 text"):
        load_examples(str(path), DataConfig(format=fmt), 0)


def test_parity_task_answers_are_correct():
    for example in parity_task(200, seed=3):
        number = int(re.search(r"\d+", example.prompt).group())
        assert example.answer == (" even" if number % 2 == 0 else " odd")


def test_iid_partition_is_disjoint_complete_and_seeded():
    labels = ["a"] * 50 + ["b"] * 53
    parts = partition(labels, 4, "iid", 0.5, seed=1)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(103))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == partition(labels, 4, "iid", 0.5, seed=1)
    assert parts != partition(labels, 4, "iid", 0.5, seed=2)


def test_dirichlet_small_alpha_skews_labels():
    labels = ["neg"] * 500 + ["pos"] * 500
    parts = partition(labels, 8, "dirichlet", 0.1, seed=0)
    assert sorted(i for p in parts for i in p) == list(range(1000))
    majority = [max(Counter(labels[i] for i in p).values()) / len(p) for p in parts]
    assert sum(share > 0.9 for share in majority) >= 4  # most clients nearly single-label
    iid = partition(labels, 8, "iid", 0.1, seed=0)
    assert all(max(Counter(labels[i] for i in p).values()) / len(p) < 0.75 for p in iid)


def test_impossible_partitions_are_user_errors():
    with pytest.raises(FedpressError, match="cannot partition 3"):
        partition(["a", "b", "c"], 5, "iid", 0.5, seed=0)
    with pytest.raises(FedpressError, match="labelled"):
        partition([None, None, None], 2, "dirichlet", 0.5, seed=0)


def test_holdout_split_keeps_every_index_once():
    holdout, rest = split_fraction(list(range(100)), 0.3, seed=0)
    assert len(holdout) == 30 and len(rest) == 70
    assert sorted(holdout + rest) == list(range(100))


def test_build_splits_with_separate_eval_file(shared_data):
    data = DataConfig(
        source=str(shared_data / "sst2" / "dev.tsv"),
        eval_source=str(shared_data / "sst2" / "test.tsv"),
        eval_size=0,  # all of eval_source
        max_train_examples=400,
        partition="dirichlet",
        holdout_fraction=0.3,
    )
    splits = build_splits(data, num_clients=4, seed=0)
    assert len(splits.eval_examples) == 872
    total = sum(map(len, splits.client_shares)) + sum(map(len, splits.client_holdouts))
    assert total == 400
    assert build_splits(data, 4, 0).client_shares == splits.client_shares


def test_eval_size_caps_eval_source(shared_data):
    """data.eval_size is honoured with eval_source: a seeded draw in file order, 0 = all, and
    the training split does not move with it."""
    test_file = shared_data / "sst2" / "test.tsv"
    whole = load_examples(str(test_file), DataConfig(), seed=1)
    data = DataConfig(
        source=str(shared_data / "sst2" / "dev.tsv"),
        eval_source=str(test_file),
        eval_size=100,
        max_train_examples=200,
    )
    splits = build_splits(data, num_clients=2, seed=0)
    assert len(splits.eval_examples) == 100
    positions = [whole.index(ex) for ex in splits.eval_examples]
    assert positions == sorted(positions) and positions != list(range(100))
    assert len({ex.answer for ex in splits.eval_examples}) == 2
    assert build_splits(data, 2, 0).eval_examples == splits.eval_examples
    everything = build_splits(dataclasses.replace(data, eval_size=0), 2, 0)
    assert everything.eval_examples == whole
    assert everything.client_shares == splits.client_shares
    above = build_splits(dataclasses.replace(data, eval_size=5000), 2, 0)
    assert above.eval_examples == whole


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.eval_size=0"], "'data.eval_size' must be >= 1"),
        (["data.eval_size=-3", "data.eval_source=x.tsv"], "'data.eval_size' must be >= 1"),
    ],
)
def test_eval_size_out_of_range_is_a_user_error(overrides, message):
    from fedpress.config import load_config

    with pytest.raises(FedpressError, match=message):
        load_config(None, overrides)


def test_summary_says_how_many_examples_each_figure_used(shared_data, tmp_path):
    from fedpress.config import load_config
    from fedpress.runner import run_config

    config = load_config(
        None,
        [
            "method=centralized",
            "model=tiny-llama",
            "num_clients=2",
            "rounds=1",
            "train.local_steps=1",
            f"data.source={shared_data / 'sst2' / 'dev.tsv'}",
            f"data.eval_source={shared_data / 'sst2' / 'test.tsv'}",
            "data.eval_size=24",
            "data.max_train_examples=64",
            "data.max_length=32",
            "eval.per_round_examples=8",
        ],
    )
    summary = run_config(config, tmp_path / "run")
    assert summary["final_eval_examples"] == 24
    assert summary["round_eval_examples"] == 8
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (saved["final_eval_examples"], saved["round_eval_examples"]) == (24, 8)


def test_a_batch_larger_than_every_share_is_refused_before_the_run():
    """Before, every client failed in its own traceback (hundreds of lines from Ray)."""
    from fedpress.config import load_config
    from fedpress.runner import preflight

    overrides = ["model=tiny-llama", "num_clients=4", "data.builtin_size=240"]
    preflight(load_config(None, [*overrides, "train.batch_size=8"]))
    with pytest.raises(FedpressError, match="train.batch_size = 500 is more than any client's"):
        preflight(load_config(None, [*overrides, "train.batch_size=500"]))
    preflight(load_config(None, [*overrides, "train.batch_size=500", "method=centralized"]))

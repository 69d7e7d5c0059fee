"""Data: every source becomes a list of `Example` (prompt, answer, choices, label).

Training puts loss on the answer tokens only. `choices` makes a task scorable: accuracy is
the share of examples whose answer has the highest log-probability among the choices (for
SST-2 that is " positive" vs " negative" after the prompt). `label` drives non-IID
partitioning (class label, MMLU subject).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedpress.config import DataConfig
from fedpress.errors import FedpressError


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    choices: tuple[str, ...] = ()
    label: str | None = None


ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_INPUT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
CLASSIFICATION_TEMPLATE = "Review: {text}\nSentiment:"
MCQ_LETTERS = ("A", "B", "C", "D")
# Data files are read whole (and decoded) before anything is split: a cap on what one may be.
MAX_DATA_FILE_BYTES = 4 * 2**30


def parity_task(size: int, seed: int) -> list[Example]:
    """Built-in task with checkable answers: is a number even or odd?

    The answer depends only on the last digit, so a small model can learn it from a few
    hundred examples, while an untuned one is near chance: a clear, fast signal that the
    federation actually trains the model. The number ends the prompt one token before the
    answer: with "Is N even or odd?\nAnswer:" SmolLM2 stayed at chance for 64-80 LoRA steps
    of the demo before learning it (how many depended on the machine); this way it has learned
    it after 48 on seeds 0-2.
    """
    rng = random.Random(seed)
    examples = []
    for _ in range(size):
        number = rng.randrange(10, 100_000)
        answer = "even" if number % 2 == 0 else "odd"
        examples.append(
            Example(f"Even or odd: {number} is", f" {answer}", (" even", " odd"), answer)
        )
    return examples


def load_alpaca_json(path: Path) -> list[Example]:
    records = _read_json_list(path)
    examples = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "instruction" not in record or "output" not in record:
            raise FedpressError(f"{path}: record {i} lacks 'instruction' or 'output'")
        extra = str(record.get("input") or "").strip()
        template = ALPACA_INPUT_TEMPLATE if extra else ALPACA_TEMPLATE
        prompt = template.format(instruction=str(record["instruction"]).strip(), input=extra)
        examples.append(Example(prompt, str(record["output"]).strip(), (), None))
    return examples


def load_classification_tsv(
    path: Path, label_words: Sequence[str], template: str = ""
) -> list[Example]:
    """TSV with header `sentence<TAB>label` (label an index into `label_words`)."""
    template = template or CLASSIFICATION_TEMPLATE
    choices = tuple(f" {word}" for word in label_words)
    examples = []
    with _open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if not reader.fieldnames or not {"sentence", "label"} <= set(reader.fieldnames):
            raise FedpressError(f"{path}: expected a TSV header with 'sentence' and 'label'")
        for row_number, row in enumerate(reader, start=2):
            try:
                label = int(row["label"])
                word = label_words[label]
            except (ValueError, IndexError, TypeError):
                # No cell content in the message: on a node it reaches the server.
                raise FedpressError(
                    f"{path}:{row_number}: the label is not an index into "
                    f"label_words ({len(label_words)} words)"
                ) from None
            prompt = template.format(text=row["sentence"].strip())
            examples.append(Example(prompt, f" {word}", choices, word))
    return examples


def load_mcq_csv(path: Path) -> list[Example]:
    """MMLU layout: `question,choice0..choice3,answer` per file, one file per subject."""
    examples = []
    for file in mcq_files(path):
        subject = mcq_subject(file)
        with _open_text(file) as handle:
            reader = csv.DictReader(handle)
            needed = {"question", "choice0", "choice1", "choice2", "choice3", "answer"}
            if not reader.fieldnames or not needed <= set(reader.fieldnames):
                raise FedpressError(f"{file}: expected header {sorted(needed)}")
            for row_number, row in enumerate(reader, start=2):
                try:
                    answer = MCQ_LETTERS[int(row["answer"])]
                except (ValueError, IndexError):
                    raise FedpressError(f"{file}:{row_number}: answer must be 0-3") from None
                examples.append(
                    Example(
                        format_mcq(row), f" {answer}", tuple(f" {c}" for c in MCQ_LETTERS), subject
                    )
                )
    return examples


def mcq_files(path: Path) -> list[Path]:
    """The subject files of an MMLU-layout folder (or the one file given)."""
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise FedpressError(f"{path}: no .csv files")
    return files


def mcq_subject(file: Path) -> str:
    return file.stem.removesuffix("_test").removesuffix("_dev").removesuffix("_val")


def format_mcq(row: dict[str, str]) -> str:
    options = "\n".join(f"{letter}. {row[f'choice{i}']}" for i, letter in enumerate(MCQ_LETTERS))
    return f"Question: {row['question'].strip()}\n{options}\nAnswer:"


def load_text(path: Path, chunk_chars: int = 512) -> list[Example]:
    """Plain text cut into chunks; loss on every token."""
    text = _open_text(path).read()
    return [Example("", text[i : i + chunk_chars]) for i in range(0, len(text), chunk_chars)]


def load_examples(source: str, data: DataConfig, seed: int) -> list[Example]:
    """Any supported source: `builtin:parity`, a local file or folder, or a HF dataset id."""
    fmt = data.format
    if source.startswith("builtin:") or fmt == "builtin":
        name = source.removeprefix("builtin:")
        if name != "parity":
            raise FedpressError(f"unknown built-in task '{name}' (available: parity)")
        return parity_task(data.builtin_size, seed)
    path = Path(source).expanduser()
    if not path.exists():
        if _looks_like_hub_id(source):
            return _load_hub_dataset(source, data)
        raise FedpressError(f"data file not found: {source}")
    if fmt == "auto":
        fmt = _guess_format(path)
    if fmt == "alpaca":
        return load_alpaca_json(path)
    if fmt == "classification":
        return load_classification_tsv(path, data.label_words, data.prompt_template)
    if fmt == "mcq":
        return load_mcq_csv(path)
    return load_text(path)


def _guess_format(path: Path) -> str:
    if path.is_dir() or path.suffix == ".csv":
        return "mcq"
    return {".json": "alpaca", ".jsonl": "alpaca", ".tsv": "classification"}.get(
        path.suffix, "text"
    )


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~"))


def _load_hub_dataset(source: str, data: DataConfig) -> list[Example]:
    try:
        import datasets  # optional: only for Hugging Face dataset ids
    except ImportError:
        raise FedpressError(
            f"data file not found: {source} (Hugging Face dataset ids need `pip install datasets`)"
        ) from None
    try:
        rows = datasets.load_dataset(source, split="train")
    except Exception as exc:  # noqa: BLE001 - any hub failure is a user-facing problem
        raise FedpressError(f"cannot load dataset '{source}': {exc}") from None
    columns = set(rows.column_names)
    if {"instruction", "output"} <= columns:
        return [
            Example(
                (ALPACA_INPUT_TEMPLATE if r.get("input") else ALPACA_TEMPLATE).format(
                    instruction=r["instruction"], input=r.get("input", "")
                ),
                r["output"],
            )
            for r in rows
        ]
    if {"sentence", "label"} <= columns:
        template = data.prompt_template or CLASSIFICATION_TEMPLATE
        words = data.label_words
        return [
            Example(
                template.format(text=r["sentence"]),
                f" {words[r['label']]}",
                tuple(f" {w}" for w in words),
                words[r["label"]],
            )
            for r in rows
        ]
    raise FedpressError(f"dataset '{source}' has no instruction/output or sentence/label columns")


def _read_json_list(path: Path) -> list:
    text = _open_text(path).read()
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FedpressError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(records, list):
        raise FedpressError(f"{path}: expected a JSON list of records")
    return records


def _open_text(path: Path) -> io.StringIO:
    """The whole file decoded up front, so a file that is not UTF-8 text (a binary file given
    as `data.source`) is one user error naming it, whichever reader consumes the stream.

    Only a regular file of at most `MAX_DATA_FILE_BYTES` is read: `/dev/zero` would be read
    until memory runs out, a FIFO would block forever."""
    try:
        with open(path, "rb", opener=_open_no_block) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FedpressError(
                    f"{path} is not a regular file (a folder, device, FIFO or socket); "
                    "data files must be regular files"
                )
            if info.st_size > MAX_DATA_FILE_BYTES:
                raise FedpressError(
                    f"{path} is {info.st_size / 2**30:.1f} GiB; fedpress reads data files of at "
                    f"most {MAX_DATA_FILE_BYTES / 2**30:.0f} GiB whole (cut it, or keep part "
                    "with data.max_train_examples after splitting it)"
                )
            raw = handle.read(MAX_DATA_FILE_BYTES + 1)
    except OSError as exc:
        raise FedpressError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FedpressError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); data files must be "
            "UTF-8 (check data.source, data.eval_source and data.format)"
        ) from None
    return io.StringIO(text, newline="")  # newline="": the csv module sees the raw line ends


def _open_no_block(name: str, flags: int) -> int:
    # O_NONBLOCK: opening a FIFO without a writer returns at once (then fstat refuses it).
    return os.open(name, flags | os.O_NONBLOCK)


# --- splitting and partitioning -------------------------------------------------------------


@dataclass
class DataSplits:
    """Everything a run needs, identical in every process for the same config."""

    client_shares: list[list[Example]]  # per client: the share it trains on (FAF's D2)
    client_holdouts: list[list[Example]]  # per client: the set-aside part (TGAP's D1)
    eval_examples: list[Example]

    @property
    def pooled_train(self) -> list[Example]:
        return [ex for share in self.client_shares for ex in share]


def build_splits(data: DataConfig, num_clients: int, seed: int) -> DataSplits:
    examples = load_examples(data.source, data, seed)
    rng = random.Random(seed)
    if data.eval_source:
        eval_examples = _capped_eval(
            load_examples(data.eval_source, data, seed + 1), data.eval_size, seed
        )
    else:
        if len(examples) <= data.eval_size:
            raise FedpressError(
                f"{data.source} has {len(examples)} examples, not enough for an eval split of "
                f"{data.eval_size}; lower data.eval_size or set data.eval_source"
            )
        order = list(range(len(examples)))
        rng.shuffle(order)
        eval_examples = [examples[i] for i in order[: data.eval_size]]
        examples = [examples[i] for i in order[data.eval_size :]]
    if data.max_train_examples and len(examples) > data.max_train_examples:
        examples = rng.sample(examples, data.max_train_examples)
    labels = [ex.label for ex in examples]
    parts = partition(labels, num_clients, data.partition, data.dirichlet_alpha, seed)
    shares, holdouts = [], []
    for part in parts:
        holdout, share = split_fraction(part, data.holdout_fraction, seed)
        shares.append([examples[i] for i in share])
        holdouts.append([examples[i] for i in holdout])
    return DataSplits(shares, holdouts, eval_examples)


def _capped_eval(examples: list[Example], eval_size: int, seed: int) -> list[Example]:
    """At most `eval_size` of a held-out file (0 = all): a seeded draw kept in file order (a
    file sorted by label still gives a fair mix), with its own generator, so the training split
    does not depend on eval_size."""
    return [examples[i] for i in held_out_rows(len(examples), eval_size, seed)]


def held_out_rows(count: int, eval_size: int, seed: int) -> list[int]:
    """Which of a held-out file's `count` examples a run with `seed` scores (file order)."""
    if not eval_size or count <= eval_size:
        return list(range(count))
    return sorted(random.Random(seed + 1).sample(range(count), eval_size))


def partition(
    labels: Sequence[str | None], num_clients: int, scheme: str, alpha: float, seed: int
) -> list[list[int]]:
    """Indices per client. IID: a seeded shuffle cut evenly. Dirichlet: per label, client
    proportions drawn from Dir(alpha), so small alpha gives skewed label mixes."""
    n = len(labels)
    if num_clients > n:
        raise FedpressError(f"cannot partition {n} training examples over {num_clients} clients")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        order = rng.permutation(n)
        return [sorted(part.tolist()) for part in np.array_split(order, num_clients)]
    if any(label is None for label in labels):
        raise FedpressError("dirichlet partitioning needs labelled data (classification or MCQ)")
    if alpha <= 0:
        raise FedpressError("data.dirichlet_alpha must be > 0")
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(str(label), []).append(i)
    # Redraw until every client has at least one example (common practice; bounded tries).
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for label in sorted(by_label):
            idx = rng.permutation(by_label[label])
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if all(parts):
            return [sorted(p) for p in parts]
    raise FedpressError(
        f"dirichlet(alpha={alpha}) left a client without data after 100 draws; "
        "use fewer clients, more data or a larger alpha"
    )


def split_fraction(indices: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split one client's share into (first: `fraction` of it, rest), seeded."""
    if fraction <= 0:
        return [], list(indices)
    order = list(indices)
    random.Random(seed).shuffle(order)
    cut = int(round(len(order) * fraction))
    return sorted(order[:cut]), sorted(order[cut:])


# --- a node's own data (deployment) --------------------------------------------------------


@dataclass
class NodeData:
    """What one node trains and scores on: its share (FAF's D2), its set-aside part (TGAP's
    D1) and its local held-out examples (federated evaluation; empty without any)."""

    share: list[Example]
    holdout: list[Example]
    eval_examples: list[Example]


def node_data(
    data: DataConfig,
    seed: int,
    path: str,
    fmt: str = "",
    eval_path: str = "",
    part: tuple[int, int] | None = None,
) -> NodeData:
    """A node's own file (and optional held-out file), read with the run's data settings.

    `part` = (partition id, partitions): keep that part of the file, split exactly as the
    simulation splits `data.source` (the one-machine helper gives every node the same file);
    without it the node trains on its whole file."""
    local = replace(data, source=path, format=fmt or data.format, eval_source=eval_path)
    if part is not None:
        index, parts = part
        splits = build_splits(local, parts, seed)
        evals = splits.eval_examples if eval_path else []
        return NodeData(splits.client_shares[index], splits.client_holdouts[index], evals)
    examples = load_examples(path, local, seed)
    if data.max_train_examples and len(examples) > data.max_train_examples:
        examples = random.Random(seed).sample(examples, data.max_train_examples)
    holdout, share = split_fraction(list(range(len(examples))), data.holdout_fraction, seed)
    evals = (
        _capped_eval(load_examples(eval_path, local, seed + 1), data.eval_size, seed)
        if eval_path
        else []
    )
    return NodeData([examples[i] for i in share], [examples[i] for i in holdout], evals)

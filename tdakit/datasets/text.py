"""Text datasets from local folders, never downloaded unless asked: SST-2 in GLUE's layout and WikiText-2's raw
token files, with a word vocabulary built from the training split (no tokenizer download).

- ``sst2_folder(root)`` reads ``root/sst2/train.tsv`` and ``root/sst2/dev.tsv`` (a header line, then
  ``label<TAB>sentence`` rows; the columns may come in either order, the text column named ``sentence`` or
  ``content``; labels 0 negative, 1 positive). A seeded class-balanced subset of train.tsv is the training split,
  class-balanced queries come from dev.tsv (GLUE's test labels are hidden), the rest of dev.tsv is ``test``.
- ``wikitext2_folder(root)`` reads ``root/wikitext-2/valid.txt`` (trained on) and ``test.txt`` (queried): the
  raw-token version, words separated by spaces, rare words already ``<unk>``, one paragraph per line. Each line
  ends with ``<eos>``; the token stream is cut into consecutive blocks of ``length + 1`` tokens, x the first
  ``length``, y the next token at each position ([n, length]).

Sentences are split on spaces (both files come tokenized and SST-2 lower-cased); ids: 0 ``<pad>``, 1 ``<unk>``,
2 ``<eos>``, then the training words by falling count (ties alphabetically). x holds token ids [n, length] padded
with 0 after the sentence (a model masks them: ``tdakit.text_models``); ``Dataset.vocabulary`` turns rows back
into text. ``install(archive, root)`` unpacks an archive of either layout into the data folder.
"""

from __future__ import annotations

import csv
import os
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataNotFoundError, InputError, SettingError
from .core import Dataset, Split, data_root, unpack_tar

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIALS = (PAD, UNK, EOS)
SST2_FOLDER, WIKITEXT_FOLDER = "sst2", "wikitext-2"
LAYOUTS = {
    SST2_FOLDER: ("train.tsv", "dev.tsv"),
    WIKITEXT_FOLDER: ("valid.txt", "test.txt"),
}
URLS = {  # the official archives, fetched only with download=True
    SST2_FOLDER: "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip",
    WIKITEXT_FOLDER: "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
}


@dataclass(frozen=True)
class Vocabulary:
    """Words by id: 0 ``<pad>``, 1 ``<unk>``, 2 ``<eos>``, then the rest. ``encode`` maps words to ids (unknown
    words to 1), ``decode`` maps ids back to a string (padding left out)."""

    words: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if tuple(self.words[:3]) != SPECIALS:
            raise SettingError(f"a vocabulary starts with {SPECIALS}, got {tuple(self.words[:3])}")
        object.__setattr__(self, "index", {w: i for i, w in enumerate(self.words)})

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], max_size: int | None = None, min_count: int = 1) -> Vocabulary:
        """The words of ``sentences`` (lists of tokens) seen at least ``min_count`` times, the most frequent first
        (ties alphabetically, so the same text gives the same ids), at most ``max_size`` ids in all."""
        counts = Counter(w for s in sentences for w in s if w not in SPECIALS)
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            if max_size <= len(SPECIALS):
                raise SettingError(f"max_size must exceed the {len(SPECIALS)} special tokens, got {max_size}")
            ranked = ranked[:max_size - len(SPECIALS)]
        return cls(SPECIALS + tuple(ranked))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.index.get(w, 1) for w in tokens]

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Token ids [L] -> the words joined by spaces, padding left out."""
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return " ".join(self.words[i] if 0 <= i < len(self.words) else UNK for i in values if i != 0)

    def padded(self, sentences: Sequence[Sequence[str]], length: int) -> Tensor:
        """Sentences -> ids [n, length], cut after ``length`` tokens, padded with 0 (int64)."""
        out = torch.zeros(len(sentences), length, dtype=torch.int64)
        for row, tokens in enumerate(sentences):
            ids = self.encode(tokens[:length])
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out


def tokens_of(text: str) -> list[str]:
    """Words of a pre-tokenized line (split on white space)."""
    return text.split()


# -- SST-2 -------------------------------------------------------------------------------------------------
def read_sst2(path: str | Path) -> tuple[list[str], np.ndarray]:
    """One GLUE SST-2 file -> (sentences, labels int64 [n]). Errors name the file, the line and the layout."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path} not found: SST-2 in GLUE's layout is a folder sst2/ with train.tsv and "
                                "dev.tsv (a header line, then label<TAB>sentence rows); see docs/data.md")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise InputError(f"{path} is empty; expected a header line (label<TAB>sentence) and one row per sentence")
    header = [h.strip().lower() for h in rows[0]]
    text_names = [h for h in header if h in ("sentence", "content")]
    if len(header) != 2 or "label" not in header or not text_names:
        raise InputError(f"{path}: the header must name two tab-separated columns, label and sentence (or "
                         f"content), got {rows[0]!r}")
    label_at, text_at = header.index("label"), header.index(text_names[0])
    sentences, labels = [], []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or row[label_at].strip() not in ("0", "1"):
            raise InputError(f"{path}, line {number}: expected label<TAB>sentence with label 0 or 1, got {row!r}")
        sentences.append(row[text_at])
        labels.append(int(row[label_at]))
    if not sentences:
        raise InputError(f"{path} has a header but no sentences")
    return sentences, np.asarray(labels, dtype=np.int64)


def sst2_folder(root: str | Path | None = None, n_train: int = 2000, n_query: int = 100, length: int = 32,
                vocab_size: int | None = 5000, seed: int = 0, download: bool = False) -> Dataset:
    """SST-2 from ``root/sst2`` (default root: ``data_root()``): a seeded class-balanced training subset of
    ``n_train`` sentences (all 67,349 with n_train=None), ``n_query`` class-balanced queries from dev.tsv, the rest
    of dev.tsv as ``test``; x: token ids [n, length] (int64, 0-padded), y: 0 negative, 1 positive."""
    folder = find(root, SST2_FOLDER, download)
    train_text, train_labels = read_sst2(folder / "train.tsv")
    dev_text, dev_labels = read_sst2(folder / "dev.tsv")
    if n_train is not None and not 2 <= n_train <= len(train_text):
        raise SettingError(f"n_train must lie in 2..{len(train_text)} (train.tsv's sentences), got {n_train}")
    if not 1 <= n_query < len(dev_text):
        raise SettingError(f"n_query must lie in 1..{len(dev_text) - 1} (dev.tsv's sentences), got {n_query}")
    chosen = np.arange(len(train_text)) if n_train is None else balanced_rows(train_labels, n_train, seed)
    query_rows = balanced_rows(dev_labels, n_query, seed)
    test_rows = np.setdiff1d(np.arange(len(dev_text)), query_rows)
    train_tokens = [tokens_of(train_text[i])[:length] for i in chosen]
    vocabulary = Vocabulary.build(train_tokens, max_size=vocab_size)  # the words the model sees

    def split(tokens: list[list[str]], labels: np.ndarray) -> Split:
        return Split(vocabulary.padded(tokens, length), torch.as_tensor(labels, dtype=torch.int64))

    return Dataset("sst2", "classification", split(train_tokens, train_labels[chosen]),
                   split([tokens_of(dev_text[i]) for i in query_rows], dev_labels[query_rows]),
                   split([tokens_of(dev_text[i]) for i in test_rows], dev_labels[test_rows]),
                   class_names=("negative", "positive"), vocabulary=vocabulary)


def balanced_rows(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n row indices with the classes as equal as possible (the first classes get the odd one), seeded, sorted."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    rows = []
    for k, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        want = n // len(classes) + (k < n % len(classes))
        if want > len(members):
            raise SettingError(f"asked for {want} examples of class {c}, but there are {len(members)}")
        rows.append(rng.permutation(members)[:want])
    return np.sort(np.concatenate(rows))


# -- WikiText-2 ------------------------------------------------------------------------------------------
def read_wikitext(path: str | Path) -> list[str]:
    """A WikiText raw-token file -> its tokens, ``<eos>`` after every non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path} not found: WikiText-2 is a folder wikitext-2/ with valid.txt and test.txt "
                                "(raw tokens separated by spaces, one paragraph per line); see docs/data.md")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text ({err}); WikiText-2's token files are") from err
    tokens = [t for line in lines if line.strip() for t in (*tokens_of(line), EOS)]
    if not tokens:
        raise InputError(f"{path} holds no tokens; expected WikiText-2's raw token lines")
    return tokens


def blocks(ids: Sequence[int], length: int, count: int | None = None) -> Split:
    """Consecutive blocks of a token stream: x [n, length] and y [n, length], y the next token at each
    position (n = the whole blocks of length + 1 tokens there are, or the first ``count``)."""
    if length < 1:
        raise SettingError(f"length must be >= 1 token, got {length}")
    ids = torch.as_tensor(list(ids), dtype=torch.int64)
    n = (len(ids) - 1) // length
    if count is not None:
        if not 1 <= count <= n:
            raise SettingError(f"the text holds {n} blocks of {length} tokens; asked for {count}")
        n = count
    x = ids[:n * length].reshape(n, length)
    y = ids[1:n * length + 1].reshape(n, length)
    return Split(x, y)


def continuations(vocabulary: Vocabulary, pairs: Sequence[tuple[str, str]], length: int) -> Split:
    """Queries "how likely is this continuation after this prompt" for a language model: for each (prompt,
    continuation) pair of strings, x the ids of prompt + continuation without its last token [n, length]
    (0-padded) and y the next token only where it belongs to the continuation, ``task.IGNORE`` elsewhere, so
    ``LanguageModeling`` measures log p(continuation | prompt) in nats."""
    from ..task import IGNORE

    x = torch.zeros(len(pairs), length, dtype=torch.int64)
    y = torch.full((len(pairs), length), IGNORE, dtype=torch.int64)
    for row, (prompt, continuation) in enumerate(pairs):
        first, rest = vocabulary.encode(tokens_of(prompt)), vocabulary.encode(tokens_of(continuation))
        if not first or not rest:
            raise InputError(f"pair {row}: the prompt and the continuation need at least one token each, got "
                             f"{prompt!r} and {continuation!r}")
        ids = first + rest
        if len(ids) - 1 > length:
            raise InputError(f"pair {row}: prompt and continuation hold {len(ids)} tokens, more than length + 1 = "
                             f"{length + 1}; shorten the prompt")
        x[row, :len(ids) - 1] = torch.tensor(ids[:-1])
        y[row, len(first) - 1:len(ids) - 1] = torch.tensor(rest)
    return Split(x, y)


def wikitext2_folder(root: str | Path | None = None, length: int = 32, n_train: int | None = None,
                     n_query: int = 50, vocab_size: int | None = 5000, download: bool = False) -> Dataset:
    """WikiText-2 from ``root/wikitext-2``: training blocks from valid.txt (the first ``n_train``, default all),
    ``n_query`` query blocks from test.txt and the rest of test.txt as ``test``; x and y token ids [n, length]
    (y: each position's next token). The vocabulary: valid.txt's ``vocab_size`` most frequent words."""
    folder = find(root, WIKITEXT_FOLDER, download)
    train_tokens = read_wikitext(folder / "valid.txt")
    held_out = read_wikitext(folder / "test.txt")
    vocabulary = Vocabulary.build([train_tokens], max_size=vocab_size)
    train = blocks(vocabulary.encode(train_tokens), length, n_train)
    every = blocks(vocabulary.encode(held_out), length)
    if not 1 <= n_query < len(every):
        raise SettingError(f"n_query must lie in 1..{len(every) - 1} (test.txt's blocks of {length}), got {n_query}")
    return Dataset("wikitext2", "language_model", train, every.subset(slice(0, n_query)),
                   every.subset(slice(n_query, None)), vocabulary=vocabulary)


# -- folders and archives --------------------------------------------------------------------------------
def find(root: str | Path | None, name: str, download: bool = False) -> Path:
    """``root/name`` when it holds the layout's files; with download=True and a network, the official archive is
    fetched first; else an error naming the folder, the files expected and how to put them there."""
    root = Path(root).expanduser() if root is not None else data_root()
    folder = root / name
    expected = LAYOUTS[name]
    if all((folder / f).is_file() for f in expected):
        return folder
    if download:
        fetch(root, name)
        return find(root, name)
    command = "sst2" if name == SST2_FOLDER else "wikitext2"
    raise DataNotFoundError(
        f"no {name} data under {root}: expected {folder}/{expected[0]} and {folder}/{expected[1]}. Put them there "
        f"(`tdakit {command} --archive FILE` unpacks an archive), or pass download=True on a machine that is online")


def fetch(root: Path, name: str) -> None:
    """Download the official archive and move the layout's files into root/name (atomically)."""
    import zipfile

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = Path(tmp) / "download.zip"
        try:
            urllib.request.urlretrieve(URLS[name], archive)  # noqa: S310 (a fixed https URL)
        except OSError as err:
            raise OSError(f"could not download {name} from {URLS[name]} ({err}); fetch it on a machine that is "
                          f"online and put it under {root / name}") from err
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        _move_layout(Path(tmp), root, name, f"the archive from {URLS[name]}")


def install(archive: str | Path, root: str | Path | None, name: str) -> Path:
    """Unpack a tar archive holding the layout of ``name`` ("sst2" or "wikitext-2": a folder with its files)
    into ``root/name``, atomically; does nothing when it is there already. Returns the folder."""
    root = Path(root).expanduser() if root is not None else data_root()
    try:
        return find(root, name)
    except DataNotFoundError:
        pass
    unpack_tar(archive, root, lambda unpacked: _move_layout(unpacked, root, name, str(archive)))
    return find(root, name)


def _move_layout(unpacked: Path, root: Path, name: str, what: str) -> None:
    """Find the folder holding the layout's files anywhere under ``unpacked`` and move it to root/name."""
    expected = LAYOUTS[name]
    aliases = {"dev.tsv": ("dev.tsv",), "valid.txt": ("valid.txt", "wiki.valid.tokens"),
               "test.txt": ("test.txt", "wiki.test.tokens"), "train.tsv": ("train.tsv",)}
    for folder in sorted({p.parent for p in unpacked.rglob("*") if p.is_file()}):
        found = {f: next((folder / a for a in aliases[f] if (folder / a).is_file()), None) for f in expected}
        if all(found.values()):
            target = unpacked / f".{name}-ready"
            target.mkdir()
            for f, path in found.items():
                os.replace(path, target / f)
            os.replace(target, root / name)
            return
    raise DataNotFoundError(f"{what} holds no {name} layout: no folder with {' and '.join(expected)}")


__all__ = ["Vocabulary", "sst2_folder", "wikitext2_folder", "read_sst2", "read_wikitext", "blocks", "install",
           "continuations",
           "find", "tokens_of", "PAD", "UNK", "EOS"]

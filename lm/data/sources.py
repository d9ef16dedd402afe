"""Corpora read from local TFDS and Hugging Face datasets, as lists of corpus documents.

A corpus string names a dataset source with a prefix, a target and ``;key=value`` options::

    tfds:<name>[/<config>][:<version>][;data_dir=<dir>][;split=<split>][;field=<feature>]
    hf:<path>[;split=<split>][;field=<column>]

``tfds:`` reads a prepared TFDS dataset from ``data_dir`` (default: TFDS's local default,
``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); nothing is ever downloaded or prepared, the
dataset must already be there (``tfds build <name> --data_dir=<dir>`` on a machine with network).
The target is TFDS's own builder name, e.g. ``wiki40b/en:1.3.0``.

``hf:`` reads a Hugging Face dataset saved on disk (``Dataset.save_to_disk`` /
``DatasetDict.save_to_disk``, read with ``datasets.load_from_disk``) or a file or folder of
.parquet, .arrow, .json / .jsonl or .csv files (``datasets.load_dataset(<format>,
data_files=...)``). It needs the ``datasets`` package (``pip install -e '.[hf]'``).

``split`` defaults to 'train' for a TFDS dataset and for a saved ``DatasetDict``; a single saved
``Dataset`` or a set of data files is read whole. ``field`` (default 'text') is the string
feature that becomes a document's text. Each example is one document named '<split>:<index>'
('<file or folder name>:<index>' without splits), in the dataset's stored order, so the corpus
train/validation split, vocabularies, packing, caches and mixtures treat these corpora like a
.jsonl file.

The separators ';' and '=' stay clear of a mixture entry's ':rate' and '@domain' and of glob
characters, so a source string also works inside ``config.data.mixture``.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from lm.data.documents import CorpusError, Document

PREFIXES = ("tfds:", "hf:")  # a corpus string starting with one of these names a dataset
_OPTIONS = {"tfds": ("data_dir", "split", "field"), "hf": ("split", "field")}
_DEFAULT_SPLIT = "train"
_HF_FILE_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json",
                    ".jsonl": "json", ".csv": "csv"}
_HF_STRING_TYPES = ("string", "large_string")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    kind: str  # 'tfds' | 'hf'
    target: str  # tfds: 'name[/config][:version]'; hf: a local path
    data_dir: str | None = None  # tfds only; None = TFDS's default local folder
    split: str | None = None  # None: 'train' of a split dataset, else every row
    field: str = "text"  # the string feature holding each document's text


def is_source(corpus: str) -> bool:
    """Whether ``corpus`` names a TFDS or Hugging Face dataset rather than files."""
    return corpus.startswith(PREFIXES)


def parse_source(corpus: str) -> SourceSpec:
    """The parts of 'tfds:...' or 'hf:...' (see the module docstring)."""
    kind, _, rest = corpus.partition(":")
    if kind not in _OPTIONS:
        raise CorpusError(f"corpus {corpus!r} does not start with one of {', '.join(PREFIXES)}.")
    target, *pairs = rest.split(";")
    options = dict(_parse_option(corpus, kind, pair) for pair in pairs)
    if not target:
        what = "a dataset name" if kind == "tfds" else "a local path"
        raise CorpusError(f"corpus {corpus!r} names no dataset; put {what} after '{kind}:'.")
    return SourceSpec(kind, target, **options)


def _parse_option(corpus: str, kind: str, pair: str) -> tuple[str, str]:
    key, equals, value = pair.partition("=")
    if not equals or not value or key not in _OPTIONS[kind]:
        allowed = ", ".join(f";{k}=..." for k in _OPTIONS[kind])
        raise CorpusError(f"corpus {corpus!r}: option {pair!r} is not one of {allowed} "
                          f"(each with a non-empty value).")
    return key, value


def load_source(corpus: str) -> list[Document]:
    """The documents of a 'tfds:' or 'hf:' corpus."""
    spec = parse_source(corpus)
    if spec.kind == "tfds":
        return _tfds_documents(corpus, spec)
    return _hf_documents(corpus, spec)


def _documents(corpus: str, label: str, texts) -> list[Document]:
    return [Document(f"{label}:{index}", _as_text(corpus, label, index, text))
            for index, text in enumerate(texts)]


def _as_text(corpus: str, label: str, index: int, value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"corpus {corpus!r}: example {label}:{index} is not valid UTF-8 "
                              f"(byte {e.start}); fix that example or pick another field.") from None
    raise CorpusError(f"corpus {corpus!r}: example {label}:{index} holds {type(value).__name__}, "
                      f"not text; pick a string field with ';field=<name>'.")


# ----------------------------------------------------------------------------- TFDS

def _import_tfds(corpus: str):
    # Optional and heavy: only 'tfds:' corpora load TensorFlow, and it may not be installed.
    try:
        import tensorflow  # noqa: F401  (TFDS reads its files through tf.data)
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise CorpusError(f"corpus {corpus!r} needs tensorflow-datasets and TensorFlow ({e}); "
                          f"install them with `pip install -e '.[tfds]'`.") from None
    return tfds


def _tfds_documents(corpus: str, spec: SourceSpec) -> list[Document]:
    tfds = _import_tfds(corpus)
    builder = _tfds_builder(tfds, corpus, spec)
    _check_tfds_feature(corpus, spec, builder.info.features)
    split = spec.split or _DEFAULT_SPLIT
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=False,
                                     read_config=tfds.ReadConfig(interleave_cycle_length=1))
    except ValueError as e:  # an unknown split or a bad slice
        raise CorpusError(f"corpus {corpus!r}: {e} Set ';split=' to one of "
                          f"{', '.join(builder.info.splits)}.") from None
    return _documents(corpus, split, (example[spec.field] for example in tfds.as_numpy(dataset)))


def _tfds_builder(tfds, corpus: str, spec: SourceSpec):
    """The builder of a prepared local dataset; never downloads or prepares anything."""
    where = (repr(spec.data_dir) if spec.data_dir
             else "the default TFDS data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)")
    fix = (f"prepare it with `tfds build {spec.target} --data_dir={spec.data_dir or '<dir>'}` on "
           f"a machine with network access, or copy the prepared <name>/<config>/<version> folder "
           f"there, then set ';data_dir=<dir>'")
    try:
        builder = tfds.builder(spec.target, data_dir=spec.data_dir, try_gcs=False)
    except tfds.core.DatasetNotFoundError:
        raise CorpusError(f"corpus {corpus!r}: no TFDS dataset {spec.target!r} under {where}; "
                          f"{fix}.") from None
    except (ValueError, AssertionError) as e:  # e.g. a malformed name, or an unknown version
        raise CorpusError(f"corpus {corpus!r}: {str(e).splitlines()[0]}") from None
    if not builder.is_prepared():
        raise CorpusError(f"corpus {corpus!r}: TFDS dataset {spec.target!r} is not prepared in "
                          f"{str(builder.data_dir)!r}; {fix}.")
    return builder


def _check_tfds_feature(corpus: str, spec: SourceSpec, features) -> None:
    text_features = sorted(name for name, feature in features.items() if _is_tfds_text(feature))
    if spec.field not in text_features:
        raise CorpusError(f"corpus {corpus!r}: {spec.field!r} is not a text feature of the "
                          f"dataset; its text features are {text_features or 'none'}; choose "
                          f"one with ';field=<name>'.")


def _is_tfds_text(feature) -> bool:
    return getattr(feature, "np_dtype", None) == np.object_ and getattr(feature, "shape", None) == ()


# ----------------------------------------------------------------------------- Hugging Face

def _import_datasets(corpus: str):
    # Optional: only 'hf:' corpora need the `datasets` package, which may not be installed.
    try:
        import datasets
    except ImportError:
        raise CorpusError(f"corpus {corpus!r} needs the Hugging Face `datasets` package; install "
                          f"it with `pip install -e '.[hf]'` (or `pip install datasets`).") from None
    return datasets


def _hf_documents(corpus: str, spec: SourceSpec) -> list[Document]:
    datasets = _import_datasets(corpus)
    table, label = _hf_split(corpus, spec, datasets, _hf_load(corpus, spec, datasets))
    column = table.features.get(spec.field)
    if getattr(column, "dtype", None) not in _HF_STRING_TYPES:
        strings = sorted(n for n, f in table.features.items()
                         if getattr(f, "dtype", None) in _HF_STRING_TYPES)
        raise CorpusError(f"corpus {corpus!r}: {spec.field!r} is not a string column; its string "
                          f"columns are {strings or 'none'}; choose one with ';field=<name>'.")
    return _documents(corpus, label, table[spec.field])


def _hf_load(corpus: str, spec: SourceSpec, datasets):
    """A saved Dataset / DatasetDict, or a Dataset of the data files at the path."""
    path = pathlib.Path(spec.target).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus {corpus!r}: {str(path)!r} does not exist; save a dataset there "
                          f"with `save_to_disk`, or put .parquet, .arrow, .json(l) or .csv "
                          f"files there.")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    files, file_format = _hf_data_files(corpus, path)
    return datasets.load_dataset(file_format, data_files=[str(f) for f in files], split="train")


def _hf_data_files(corpus: str, path: pathlib.Path) -> tuple[list[pathlib.Path], str]:
    files = [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _HF_FILE_FORMATS)
    formats = {_HF_FILE_FORMATS.get(p.suffix) for p in files}
    if not files or None in formats or len(formats) != 1:
        raise CorpusError(f"corpus {corpus!r}: {str(path)!r} is neither a `save_to_disk` folder "
                          f"nor one or more files of a single format among "
                          f"{', '.join(_HF_FILE_FORMATS)}.")
    return files, formats.pop()


def _hf_split(corpus: str, spec: SourceSpec, datasets, loaded):
    """(the Dataset to read, the label of its document names)."""
    if isinstance(loaded, datasets.DatasetDict):
        split = spec.split or _DEFAULT_SPLIT
        if split not in loaded:
            raise CorpusError(f"corpus {corpus!r} has no split {split!r}; set ';split=' to one "
                              f"of {', '.join(loaded)}.")
        return loaded[split], split
    if spec.split:
        raise CorpusError(f"corpus {corpus!r}: {spec.target!r} holds a single dataset without "
                          f"splits; remove ';split={spec.split}'.")
    return loaded, pathlib.Path(spec.target).name

"""Corpora from local TFDS and Hugging Face datasets: exact documents, and errors naming the fix."""
import importlib
import sys

import numpy as np
import pytest

from lm.data import corpus as corpus_lib
from lm.data import mixture
from lm.data import pipeline
from lm.data import sources
from lm.data.corpus import CorpusError, Document
from lm.data.pipeline import DataConfig
from tests.batches import take

TEXTS = ["The first document.\r\n", "Second, with é and ☃.", "",
         "A longer third document, so that a few windows fit. " * 20]
TITLES = ["one", "two", "three", "four"]


def _with_stdlib_importlib_resources(patch: pytest.MonkeyPatch) -> None:
    """tensorflow-datasets 4.9 imports importlib_resources when preparing a dataset but declares
    it only for Python < 3.9 (tensorflow/datasets#11212); the standard library module has the
    same ``abc.Traversable``."""
    try:
        importlib.import_module("importlib_resources")
    except ImportError:
        patch.setitem(sys.modules, "importlib_resources",
                      importlib.import_module("importlib.resources"))
        importlib.import_module("importlib.resources.abc")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A prepared TFDS dataset 'tiny_corpus' 1.0.0 (splits train, test) written without network."""
    tfds = pytest.importorskip("tensorflow_datasets")
    data_dir = tmp_path_factory.mktemp("tfds")
    features = tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                           "title": tfds.features.Text(),
                                           "number": tfds.features.Scalar(dtype=np.int64)})
    train = [(i, {"text": t, "title": n, "number": i}) for i, (t, n) in enumerate(zip(TEXTS, TITLES))]
    test = [(0, {"text": "held out", "title": "five", "number": 5})]
    with pytest.MonkeyPatch.context() as patch:
        _with_stdlib_importlib_resources(patch)
        tfds.dataset_builders.store_as_tfds_dataset(
            name="tiny_corpus", version="1.0.0", features=features,
            split_datasets={"train": train, "test": test}, data_dir=str(data_dir),
            disable_shuffling=True)  # keep the written order
    return data_dir


# ----------------------------------------------------------------------------- syntax

def test_source_strings_parse_into_their_parts():
    spec = sources.parse_source("tfds:wiki40b/en:1.3.0;data_dir=/data/tfds;split=test;field=body")
    assert spec == sources.SourceSpec("tfds", "wiki40b/en:1.3.0", "/data/tfds", "test", "body")
    assert sources.parse_source("hf:/data/web") == sources.SourceSpec("hf", "/data/web")
    assert sources.is_source("hf:x") and sources.is_source("tfds:x")
    assert not sources.is_source("shakespeare")


def test_source_strings_are_mixture_entries():
    spec = mixture.parse_mixture("tfds:c4/en:3.1.0;data_dir=/d@specialized,hf:/data/web,milton")
    assert spec.sources == ("tfds:c4/en:3.1.0;data_dir=/d", "hf:/data/web", "milton")
    assert (spec.rates, spec.domains) == (None, ("specialized", "general", "general"))
    rated = mixture.parse_mixture("tfds:c4/en:3.1.0;split=train[:90%]:0.7,hf:/data/web:0.3@general")
    assert rated.sources == ("tfds:c4/en:3.1.0;split=train[:90%]", "hf:/data/web")
    assert rated.rates == (0.7, 0.3)


@pytest.mark.parametrize("corpus, fragment", [
    ("tfds:x;colour=red", ";data_dir=..., ;split=..., ;field=..."),
    ("hf:/data;data_dir=/x", ";split=..., ;field=..."),
    ("hf:/data;field=", "non-empty value"),
    ("tfds:;data_dir=/x", "put a dataset name after 'tfds:'"),
])
def test_bad_source_strings_name_the_allowed_options(corpus, fragment):
    with pytest.raises(CorpusError, match=fragment.replace(".", r"\.")):
        corpus_lib.load_documents(corpus)


# ----------------------------------------------------------------------------- TFDS

def test_tfds_corpus_gives_exactly_the_documents_written(tfds_dir):
    corpus = f"tfds:tiny_corpus;data_dir={tfds_dir}"
    expected = [Document(f"train:{i}", text) for i, text in enumerate(TEXTS)]
    assert corpus_lib.load_documents(corpus) == expected
    assert corpus_lib.corpus_text(corpus) == "".join(TEXTS)
    for split in corpus_lib.SPLITS:
        pieces = corpus_lib.split_documents(corpus, split)
        assert "".join(d.text for d in pieces) == corpus_lib.split_text(corpus, split)


def test_tfds_version_split_and_field_options(tfds_dir):
    versioned = corpus_lib.load_documents(f"tfds:tiny_corpus:1.0.0;data_dir={tfds_dir}")
    assert [d.text for d in versioned] == TEXTS
    titles = corpus_lib.load_documents(f"tfds:tiny_corpus;data_dir={tfds_dir};field=title")
    assert [d.text for d in titles] == TITLES
    held_out = corpus_lib.load_documents(f"tfds:tiny_corpus;data_dir={tfds_dir};split=test")
    assert held_out == [Document("test:0", "held out")]


@pytest.mark.parametrize("options, fragment", [
    (";field=number", r"'number' is not a text feature.*\['text', 'title'\]"),
    (";split=validation", "one of train, test"),
])
def test_tfds_wrong_field_or_split_lists_the_choices(tfds_dir, options, fragment):
    with pytest.raises(CorpusError, match=fragment):
        corpus_lib.load_documents(f"tfds:tiny_corpus;data_dir={tfds_dir}{options}")


@pytest.mark.parametrize("name", ["absent_corpus", "mnist"])  # unknown, and registered
def test_missing_tfds_dataset_names_the_path_and_how_to_prepare_it(tmp_path, name):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(CorpusError, match=f"tfds build {name} --data_dir=") as error:
        corpus_lib.load_documents(f"tfds:{name};data_dir={tmp_path}")
    assert str(tmp_path) in str(error.value)
    assert not (tmp_path / "downloads").exists() or not any((tmp_path / "downloads").iterdir())


def test_unknown_tfds_version_is_named(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(CorpusError, match="mnist.*9.9.9"):
        corpus_lib.load_documents(f"tfds:mnist:9.9.9;data_dir={tmp_path}")


def test_missing_tfds_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(CorpusError, match=r"pip install -e '\.\[tfds\]'"):
        corpus_lib.load_documents(f"tfds:tiny_corpus;data_dir={tmp_path}")


def test_mixture_with_a_tfds_source_trains_and_evaluates(tfds_dir):
    source = f"tfds:tiny_corpus;data_dir={tfds_dir}"
    cfg = DataConfig(mixture=f"shakespeare:0.5,{source}:0.5@specialized", seq_len=8,
                     batch_size=8, eval_batches=1)
    assert mixture.parse_mixture(cfg.mixture).sources == ("shakespeare", source)
    assert mixture.domain_rates(cfg) == {"general": 0.5, "specialized": 0.5}
    iterator = pipeline.make_train_iterator(cfg, seed=0)
    batches = take(iterator, 5)
    assert all(b["inputs"].shape == (8, 8) for b in batches)
    assert all(count > 0 for count in iterator.get_state()["consumed"].values())
    vocab = pipeline.vocabulary(cfg)
    train_texts = [corpus_lib.split_text(c, "train") for c in ("shakespeare", source)]
    for inputs in batches[0]["inputs"]:
        assert any(vocab.decode(inputs) in text for text in train_texts)
    assert list(mixture.domain_eval_batches(cfg)) == ["general", "specialized"]


def test_packed_mixture_with_a_tfds_source(tfds_dir):
    cfg = DataConfig(mixture=f"milton,tfds:tiny_corpus;data_dir={tfds_dir}", seq_len=16,
                     batch_size=4, packing=True)
    batch = next(pipeline.make_train_iterator(cfg, seed=1))
    assert batch["segment_ids"].shape == (4, 16)


# ----------------------------------------------------------------------------- Hugging Face

@pytest.fixture
def hf_datasets(monkeypatch, tmp_path):
    """The datasets package, with its cache under tmp_path."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.disable_progress_bars()
    return datasets


def test_hf_saved_dataset_gives_exactly_the_documents_written(hf_datasets, tmp_path):
    table = hf_datasets.Dataset.from_dict({"text": TEXTS, "title": TITLES})
    table.save_to_disk(str(tmp_path / "saved"))
    documents = corpus_lib.load_documents(f"hf:{tmp_path / 'saved'}")
    assert documents == [Document(f"saved:{i}", text) for i, text in enumerate(TEXTS)]
    titles = corpus_lib.load_documents(f"hf:{tmp_path / 'saved'};field=title")
    assert [d.text for d in titles] == TITLES


def test_hf_dataset_dict_reads_train_or_the_named_split(hf_datasets, tmp_path):
    table = hf_datasets.Dataset.from_dict({"text": TEXTS})
    held_out = hf_datasets.Dataset.from_dict({"text": ["held out"]})
    hf_datasets.DatasetDict({"train": table, "test": held_out}).save_to_disk(str(tmp_path / "dict"))
    corpus = f"hf:{tmp_path / 'dict'}"
    assert [d.text for d in corpus_lib.load_documents(corpus)] == TEXTS
    assert corpus_lib.load_documents(f"{corpus};split=test") == [Document("test:0", "held out")]
    with pytest.raises(CorpusError, match="one of train, test"):
        corpus_lib.load_documents(f"{corpus};split=validation")


def test_hf_folder_of_parquet_files_in_file_name_order(hf_datasets, tmp_path):
    folder = tmp_path / "parquet"
    folder.mkdir()
    hf_datasets.Dataset.from_dict({"text": TEXTS[2:]}).to_parquet(str(folder / "part-1.parquet"))
    hf_datasets.Dataset.from_dict({"text": TEXTS[:2]}).to_parquet(str(folder / "part-0.parquet"))
    assert [d.text for d in corpus_lib.load_documents(f"hf:{folder}")] == TEXTS


@pytest.mark.parametrize("options, fragment", [
    (";field=number", r"'number' is not a string column.*\['text'\]"),
    (";split=train", "without splits"),
])
def test_hf_wrong_column_or_split(hf_datasets, tmp_path, options, fragment):
    hf_datasets.Dataset.from_dict({"text": TEXTS, "number": [1, 2, 3, 4]}).save_to_disk(
        str(tmp_path / "saved"))
    with pytest.raises(CorpusError, match=fragment):
        corpus_lib.load_documents(f"hf:{tmp_path / 'saved'}{options}")


def test_missing_hf_path_is_named(hf_datasets, tmp_path):
    with pytest.raises(CorpusError, match="does not exist") as error:
        corpus_lib.load_documents(f"hf:{tmp_path / 'absent'}")
    assert str(tmp_path / "absent") in str(error.value)


def test_missing_datasets_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import raises ImportError
    with pytest.raises(CorpusError, match=r"pip install -e '\.\[hf\]'"):
        corpus_lib.load_documents(f"hf:{tmp_path}")

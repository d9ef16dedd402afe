"""Mixtures: rates, temperature, exact resumption across epochs, host slices, seqio rates."""
import json

import numpy as np
import pytest

from lm.configlib import ConfigError
from lm.data import corpus as corpus_lib
from lm.data import mixture
from lm.data import pipeline
from lm.data.pipeline import DataConfig
from tests.batches import assert_batches_equal, assert_host_slices_join, take

EXPLICIT = "shakespeare:0.5,milton:0.3,britannica:0.2"


@pytest.fixture(scope="module")
def tiny_mixture(tmp_path_factory):
    """'tiny' (a few windows: its epochs end every few batches) and 'big', at equal rates."""
    folder = tmp_path_factory.mktemp("sources")
    text = corpus_lib.split_text("shakespeare", "validation")
    (folder / "tiny.txt").write_text(text[:400])
    (folder / "big.txt").write_text(text[1000:21000])
    return f"{folder / 'tiny.txt'}:0.5,{folder / 'big.txt'}:0.5"


@pytest.mark.parametrize("spec", [EXPLICIT, "gutenberg"])
def test_empirical_rates_within_two_percent_over_10000_examples(spec):
    cfg = DataConfig(mixture=spec, seq_len=16, batch_size=100)
    iterator = pipeline.make_train_iterator(cfg, seed=0)
    take(iterator, 100)  # 10,000 rows
    counts = np.array(list(iterator.get_state()["consumed"].values()))
    assert counts.sum() == 10_000
    np.testing.assert_allclose(counts / 10_000, mixture.mixture_rates(cfg), atol=0.02)


def test_explicit_rates_are_normalized():
    cfg = DataConfig(mixture="shakespeare:2,milton:1,britannica:1")
    np.testing.assert_allclose(mixture.mixture_rates(cfg), [0.5, 0.25, 0.25])


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_temperature_rates_match_the_closed_form(temperature):
    cfg = DataConfig(mixture="gutenberg", mixture_temperature=temperature)
    sizes = np.array([len(corpus_lib.split_text(c, "train"))
                      for c in ("shakespeare", "milton", "britannica")], np.float64)
    expected = sizes ** (1 / temperature) / np.sum(sizes ** (1 / temperature))
    np.testing.assert_allclose(mixture.mixture_rates(cfg), expected, rtol=1e-12)
    flat = mixture.temperature_rates(sizes, 1e9)
    np.testing.assert_allclose(flat, np.full(3, 1 / 3), rtol=1e-6)


def test_each_epoch_is_a_new_permutation(tiny_mixture):
    cfg = DataConfig(mixture=tiny_mixture, seq_len=8, batch_size=8)
    source = mixture._Source(mixture.source_config(cfg, tiny_mixture.split(":")[0]), 3, 0)
    n = source.num_examples
    first, second = source.examples(np.arange(n)), source.examples(np.arange(n, 2 * n))
    assert sorted(first) == sorted(second) == list(range(n))
    assert not np.array_equal(first, second)


def test_resumption_equals_the_uninterrupted_run_across_epochs(tiny_mixture):
    cfg = DataConfig(mixture=tiny_mixture, seq_len=8, batch_size=8)
    uninterrupted = pipeline.make_train_iterator(cfg, seed=3)
    expected = take(uninterrupted, 30)
    tiny_windows = len(pipeline.validation_windows(
        pipeline.split_tokens(mixture.source_config(cfg, tiny_mixture.split(":")[0]), "train"),
        cfg.seq_len))
    assert uninterrupted.consumed[0] > 2 * tiny_windows  # several epochs of the tiny source
    for stop in (1, 7, 13):
        first = pipeline.make_train_iterator(cfg, seed=3)
        take(first, stop)
        state = json.loads(json.dumps(first.get_state()))
        resumed = pipeline.make_train_iterator(cfg, seed=3)
        resumed.set_state(state)
        assert_batches_equal(take(resumed, 30 - stop), expected[stop:])
    replayed = pipeline.make_train_iterator(cfg, seed=3)  # a state without the counts
    replayed.set_state({"batch_index": 7, "seed": 3})
    assert_batches_equal(take(replayed, 3), expected[7:10])
    with pytest.raises(ValueError, match="seed"):
        pipeline.make_train_iterator(cfg, seed=4).set_state(state)


def test_single_tiny_source_resumes_across_its_epoch_boundary(tiny_mixture):
    cfg = DataConfig(mixture=tiny_mixture.split(":")[0], seq_len=8, batch_size=4)
    expected = take(pipeline.make_train_iterator(cfg, seed=5), 40)
    resumed = pipeline.make_train_iterator(cfg, seed=5)
    resumed.set_state({"batch_index": 11, "seed": 5,
                       "consumed": {tiny_mixture.split(":")[0]: 44}})
    assert_batches_equal(take(resumed, 29), expected[11:])


def test_mixture_rows_are_windows_of_their_sources():
    cfg = DataConfig(mixture=EXPLICIT, seq_len=32, batch_size=16)
    batch = next(pipeline.make_train_iterator(cfg, seed=1))
    vocab = pipeline.vocabulary(cfg)
    texts = [corpus_lib.split_text(c, "train") for c in ("shakespeare", "milton", "britannica")]
    for inputs in batch["inputs"]:
        assert any(vocab.decode(inputs) in text for text in texts)


@pytest.mark.parametrize("packing", [False, True])
def test_host_slices_concatenate_to_the_global_batch(tiny_mixture, packing):
    cfg = DataConfig(mixture=tiny_mixture, seq_len=8, batch_size=8, eval_batches=2,
                     packing=packing)
    assert_host_slices_join(cfg, train_batches=12)


def test_per_source_validation_batches():
    cfg = DataConfig(mixture="gutenberg", seq_len=16, batch_size=4, eval_batches=3)
    per_source = mixture.source_eval_batches(cfg)
    assert list(per_source) == ["shakespeare", "milton", "britannica"]
    assert all(len(batches) == 3 for batches in per_source.values())
    flat = [b for batches in per_source.values() for b in batches]
    assert_batches_equal(pipeline.make_eval_batches(cfg), flat)
    vocab = pipeline.vocabulary(cfg)
    text = vocab.decode(per_source["milton"][0]["inputs"][0])
    assert text in corpus_lib.split_text("milton", "validation")


def test_default_config_has_no_mixture_and_config_errors():
    assert DataConfig().mixture == ""
    assert DataConfig.from_config({"mixture": "gutenberg"}).mixture == "gutenberg"
    with pytest.raises(ConfigError, match="backend"):
        DataConfig(mixture="gutenberg", backend="synthetic")
    with pytest.raises(ConfigError, match="mixture_temperature"):
        DataConfig(mixture="gutenberg", mixture_temperature=0.0)
    with pytest.raises(ConfigError, match="for none"):
        DataConfig(mixture="shakespeare:0.5,milton")
    with pytest.raises(ConfigError, match="distinct"):
        DataConfig(mixture="milton,milton")


def test_seqio_mixture_has_the_same_rates():
    seqio = pytest.importorskip("seqio")
    from lm.data import tasks

    name = tasks.register_mixture("gutenberg", seq_len=16, temperature=2.0)
    registered = seqio.get_mixture_or_task(name)
    rates = {task.name.split("_")[0]: registered.get_rate(task) for task in registered.tasks}
    expected = mixture.mixture_rates(DataConfig(mixture="gutenberg", mixture_temperature=2.0))
    np.testing.assert_allclose([rates[c] for c in ("shakespeare", "milton", "britannica")],
                               expected)
    example = next(registered.get_dataset({"targets": 17}, split="train", shuffle=False,
                                          seed=0).as_numpy_iterator())
    assert example["targets"].shape == (17,)


# ----------------------------------------------------------------------------- domains

def test_domains_parse_after_the_rate_and_default_per_source(tmp_path):
    spec = mixture.parse_mixture("shakespeare:0.5@general,milton:0.3,britannica:0.2@specialized")
    assert spec.sources == ("shakespeare", "milton", "britannica")
    assert spec.rates == (0.5, 0.3, 0.2)
    assert spec.domains == ("general", "general", "specialized")
    unrated = mixture.parse_mixture("milton@specialized,shakespeare")
    assert (unrated.rates, unrated.domains) == (None, ("specialized", "general"))
    path = str(tmp_path / "user@host" / "a.txt")  # an '@' inside a path is not a domain
    assert mixture.parse_mixture(f"{path}:1").domains == ("general",)
    assert mixture.parse_mixture(f"{path}:1").sources == (path,)


def test_default_domains_of_the_registry():
    assert set(mixture.DEFAULT_DOMAINS) == set(corpus_lib.EMBEDDED)
    assert mixture.parse_mixture("gutenberg").domains == ("general",) * 3
    assert mixture.default_domain("any/file.jsonl") == "general"
    assert mixture.MixtureSpec(("a", "b"), domains=("specialized", "general")).domains[0] \
        == "specialized"


@pytest.mark.parametrize("spec, expected", [
    ("shakespeare:0.5@general,milton:0.3,britannica:0.2@specialized",
     {"general": 0.8, "specialized": 0.2}),
    ("shakespeare:2@specialized,milton:1@specialized,britannica:1",
     {"general": 0.25, "specialized": 0.75}),
    ("gutenberg", {"general": 1.0, "specialized": 0.0}),
])
def test_domain_rates_sum_the_source_rates(spec, expected):
    cfg = DataConfig(mixture=spec, mixture_temperature=2.0)
    shares = mixture.domain_rates(cfg)
    assert list(shares) == list(mixture.DOMAINS)
    assert shares == pytest.approx(expected)
    assert sum(shares.values()) == pytest.approx(1.0)
    domains = mixture.source_domains(cfg)
    for domain, share in shares.items():
        in_domain = [r for r, d in zip(mixture.mixture_rates(cfg), domains.values()) if d == domain]
        assert share == pytest.approx(sum(in_domain))


def test_temperature_domain_rates_follow_the_source_rates():
    cfg = DataConfig(mixture="shakespeare,milton@specialized,britannica@specialized",
                     mixture_temperature=3.0)
    rates = mixture.mixture_rates(cfg)
    assert mixture.domain_rates(cfg) == pytest.approx({"general": rates[0],
                                                       "specialized": rates[1] + rates[2]})


@pytest.mark.parametrize("spec", ["shakespeare:0.5@code,milton:0.5", "milton@General"])
def test_unknown_domain_names_the_field_and_the_allowed_values(spec):
    with pytest.raises(ConfigError, match=r"config\.data\.mixture.*'general', 'specialized'"):
        DataConfig(mixture=spec)
    with pytest.raises(ConfigError, match="unknown domain"):
        mixture.MixtureSpec(("shakespeare",), domains=("web",))


def test_domain_eval_batches_group_the_source_batches():
    cfg = DataConfig(mixture="shakespeare@general,milton@specialized,britannica@general",
                     seq_len=16, batch_size=4, eval_batches=2)
    per_source = mixture.source_eval_batches(cfg)
    per_domain = mixture.domain_eval_batches(cfg)
    assert list(per_domain) == ["general", "specialized"]
    assert_batches_equal(per_domain["general"], per_source["shakespeare"] + per_source["britannica"])
    assert_batches_equal(per_domain["specialized"], per_source["milton"])


def test_describe_prints_rates_and_domain_shares():
    report = mixture.describe(DataConfig(mixture="shakespeare:0.5,milton:0.3,britannica:0.2"
                                                 "@specialized"))
    assert "britannica" in report and "specialized" in report
    assert report.splitlines()[-1] == "domains: general 0.8000, specialized 0.2000"

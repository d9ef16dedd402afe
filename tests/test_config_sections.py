"""Config sections: every constrained field of every section is refused, with its name, by the
validation that launch.main runs before any work; defaults live only in the dataclasses."""
from __future__ import annotations

import copy
import dataclasses
import re

import pytest

from configs import base
from experiments import align_arithmetic, sft_arithmetic, shakespeare_char
from lm import modes
from lm.configlib import ConfigError, fields_with_rules, read_escapes
from lm.sections import SECTIONS


def _valid_config(mode: str):
    """A config the mode accepts, to spoil one field at a time."""
    if mode == "sft":
        return sft_arithmetic.get_config("smoke")
    if mode in ("reward", "dpo", "ppo", "grpo"):
        return align_arithmetic.get_config(f"{mode}_smoke")
    config = shakespeare_char.get_config("smoke")
    config.mode = mode
    if mode == "ngram":
        config.ngram = base.section("ngram")
    return config


def _cases():
    for name, entry in modes.MODES.items():
        for section in entry.reads:
            for field, rule in fields_with_rules(SECTIONS[section]):
                yield name, section, field, rule


CASES = list(_cases())


def test_every_mode_reads_sections_that_have_rules():
    read = {section for _, section, _, _ in CASES}
    assert read == set(SECTIONS), f"sections no mode checks: {set(SECTIONS) - read}"
    assert len(CASES) > 150


@pytest.mark.parametrize("mode", sorted(modes.MODES))
def test_every_constrained_field_is_refused_before_work_with_its_name(mode):
    valid = _valid_config(mode)
    modes.validate(valid)  # the unspoilt config passes
    cases = [(s, f, r) for m, s, f, r in CASES if m == mode]
    assert cases
    for section, field, rule in cases:
        config = copy.deepcopy(valid)
        config[section][field] = rule.refused
        with pytest.raises(ConfigError) as raised:
            modes.validate(config)
        message = str(raised.value)
        assert f"config.{section}.{field}" in message, (section, field, message)


def test_each_rule_refuses_its_example_and_accepts_the_default():
    for section in SECTIONS.values():
        defaults = {f.name: f.default for f in dataclasses.fields(section)}
        for field, rule in fields_with_rules(section):
            assert not rule.accepts(rule.refused), (section.where, field)
            assert rule.accepts(defaults[field]), (section.where, field)


def test_every_field_is_documented():
    for section in SECTIONS.values():
        for field in dataclasses.fields(section):
            assert field.metadata.get("doc"), f"{section.where}.{field.name} has no doc"


def test_types_are_checked_and_whole_numbers_become_floats():
    data = SECTIONS["data"]
    with pytest.raises(ConfigError, match=r"config\.data\.seq_len='64' must be an integer"):
        data.from_config({"seq_len": "64"})
    with pytest.raises(ConfigError, match=r"config\.data\.packing=1 must be True or False"):
        data.from_config({"packing": 1})
    optimizer = SECTIONS["optimizer"].from_config({"lr": 1})
    assert optimizer.lr == 1.0 and isinstance(optimizer.lr, float)


def test_unknown_keys_name_the_close_match():
    with pytest.raises(ConfigError, match=r"config\.train\.'stpes'.*'config\.train\.steps'"):
        SECTIONS["train"].from_config({"stpes": 5})
    with pytest.raises(ConfigError, match=r"config\.model\.'layers'"):
        base.section("model", layers=2)
    config = base.config()
    config.trian = {}
    with pytest.raises(ConfigError, match=r"config\.'trian'.*'config\.train'"):
        modes.validate(config)


def test_backslash_escapes_of_text_fields_become_characters():
    assert read_escapes(r"a\n\nb\tc\\n\x") == "a\n\nb\tc\\n\\x"
    sample = SECTIONS["sample"].from_config({"stop": r"\n\n|END", "prompt": r"Q:\n"})
    assert sample.stop == "\n\n|END" and sample.prompt == "Q:\n"
    assert sample.settings(0).stop_strings == ("\n\n", "END")
    train = SECTIONS["train"].from_config({"sample_prompt": r"\n"})
    assert train.sample_prompt == "\n"
    # Fields that are not text keep their backslashes (paths, regular expressions).
    peft = SECTIONS["peft"].from_config({"lora_targets": r".*\d/kernel"})
    assert peft.lora_targets == r".*\d/kernel"


def test_experiment_files_write_only_their_differences():
    """The demo changes a handful of fields; everything else is the dataclasses' default."""
    demo = shakespeare_char.get_config()
    defaults = base.config()
    changed = {f"{name}.{key}" for name, section in demo.items() if isinstance(section, dict)
               or hasattr(section, "items")
               for key, value in section.items() if defaults[name][key] != value}
    assert changed == {"model.max_len", "train.eval_every", "train.checkpoint_every",
                       "train.keep_checkpoints", "train.sample_tokens", "sample.prompt",
                       "sample.max_new_tokens", "eval.tasks"}


def test_a_dimension_that_does_not_divide_its_mesh_axis_is_replicated_with_a_warning(caplog):
    """One rule for every logical axis: heads that do not divide tensor are replicated like
    a single KV head or a 65-character vocabulary."""
    import jax
    from flax import nnx
    from lm.models import ModelConfig, build
    from lm.parallel.mesh import MeshConfig, make_mesh
    from lm.parallel.rules import layout
    from lm.parallel.sharding import param_shardings

    cfg = ModelConfig(vocab_size=65, num_layers=1, d_model=24, num_heads=6, num_kv_heads=1,
                      max_len=16)
    state = nnx.state(nnx.eval_shape(lambda: build(cfg)))
    mesh = make_mesh(MeshConfig(data=2, tensor=4), jax.devices())
    with caplog.at_level("WARNING", logger="lm.parallel"):
        shardings = param_shardings(state, mesh, layout("standard").params)
    query = shardings["blocks"][0]["attention"]["query"]["kernel"]
    assert "tensor" not in str(query.spec)
    warned = " ".join(r.getMessage() for r in caplog.records)
    for axis, size in (("heads", 6), ("kv_heads", 1), ("vocab", 65)):
        assert re.search(rf"'{axis}' \(size {size}\) does not divide .*tensor", warned), axis


def test_a_workdir_saved_with_peft_inside_the_model_reads_it_from_config_peft(tmp_path):
    import json

    from lm.train.experiment import Experiment
    from lm.train.saved import read_config

    config = shakespeare_char.get_config("smoke").to_dict()
    del config["peft"]
    config["model"]["peft"] = {"method": "lora", "lora_rank": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    saved = read_config(str(tmp_path))
    assert "peft" not in saved.model and saved.peft.lora_rank == 4
    exp = Experiment.from_config(saved)
    assert (exp.peft.method, exp.peft.lora_rank) == ("lora", 4)

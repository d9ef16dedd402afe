"""Preference data and programmatic rewards: synthetic arithmetic pairs, the dropped-carry
instruction dataset, JSONL pairs, pairs from ranked samples, pair rows, and reward functions."""
import json
import math
import re

import numpy as np
import pytest

from lm.align.arithmetic_pairs import (answered_wrongly, dropped_carry_answer, flawed_arithmetic_instances,
                                       is_carrying, true_answer, worked_answer)
from lm.align.preference import (PreferencePair, arithmetic_pairs, pair_batch_at, pair_batches, pair_rows,
                                 read_preference_jsonl, sampled_pairs, side_batch)
from lm.align.rewards import REWARDS, reward_function, score_responses
from lm.data import pipeline
from lm.data.vocab import EOS_ID
from lm.instruct import batches, instruction_dataset, instruction_rows
from lm.instruct.datasets import split_of_line
from lm.instruct.instances import Instance
from lm.instruct.synthetic import QUESTION_PATTERN, _rationale, arithmetic_instance, split_of


@pytest.fixture(scope="module")
def char_vocab():
    """The default model's vocabulary: the characters of the Shakespeare corpus."""
    return pipeline.vocabulary(pipeline.DataConfig())


def _operands(prompt: str) -> tuple[int, str, int]:
    a, operation, b = QUESTION_PATTERN.search(prompt).groups()
    return int(a), operation, int(b)


def _final_number(text: str) -> int:
    return int(text.rstrip(".").split()[-1])


# ----------------------------------------------------------------------------- arithmetic pairs

def test_dropped_carry_and_carrying_examples():
    assert dropped_carry_answer(37, 48) == 75 and is_carrying(37, 48)
    assert not is_carrying(73, 41)  # the leftmost column writes its whole sum: 114 either way
    assert dropped_carry_answer(52, 38, "minus") == 24 and is_carrying(52, 38, "minus")


@pytest.mark.parametrize("operation", ["plus", "minus"])
def test_worked_answer_without_mistakes_is_the_instruction_rationale(operation):
    rng = np.random.default_rng(0)
    for a, b in rng.integers(0, 1000, (300, 2)).tolist():
        a, b = (max(a, b), min(a, b)) if operation == "minus" else (a, b)
        worked = worked_answer(a, b, operation)
        assert worked.rationale == _rationale(a, b, operation) and worked.answer == true_answer(a, b, operation)


@pytest.mark.parametrize("operation", ["plus", "minus"])
def test_arithmetic_pairs_chosen_right_rejected_a_plausible_mistake(operation):
    pairs = arithmetic_pairs("train", 400, operation=operation)
    kinds = {"carry": 0, "digit": 0}
    for pair in pairs:
        a, op, b = _operands(pair.prompt)
        truth, rejected = true_answer(a, b, op), int(pair.rejected)
        assert int(pair.chosen) == truth and rejected != truth and rejected >= 0
        if is_carrying(a, b, op):
            assert rejected == dropped_carry_answer(a, b, op)
            kinds["carry"] += 1
        else:  # one digit off by one: the difference is a power of ten, the length unchanged
            assert abs(rejected - truth) in (1, 10, 100) and len(str(rejected)) == len(str(truth))
            kinds["digit"] += 1
    assert min(kinds.values()) > 50  # both kinds of mistake are exercised


def test_arithmetic_pair_splits_are_disjoint_and_follow_the_operand_hash():
    train = arithmetic_pairs("train", 2000)
    validation = arithmetic_pairs("validation", 200)
    assert not {p.prompt for p in train} & {p.prompt for p in validation}
    assert all(split_of(*_operands(p.prompt)[::2]) == "validation" for p in validation)


def test_arithmetic_pairs_count_and_seed_determinism():
    pairs = arithmetic_pairs("train", 50, seed=3)
    assert len(pairs) == 50 and len({p.prompt for p in pairs}) == 50
    assert pairs == arithmetic_pairs("train", 50, seed=3)
    assert pairs[:20] == arithmetic_pairs("train", 20, seed=3)  # a smaller count is a prefix
    assert pairs != arithmetic_pairs("train", 50, seed=4)


def _step_errors(rationale: str) -> list[int]:
    """How far each 'x plus y [plus 1] is t' step's t is from the true column sum."""
    steps = re.findall(r"(\d+) plus (\d+)( plus 1)? is (\d+)", rationale)
    return [int(t) - int(x) - int(y) - bool(carry) for x, y, carry, t in steps]


def test_rationale_pairs_write_the_mistake_consistently():
    pairs = arithmetic_pairs("train", 300, rationale=True)
    plain = arithmetic_pairs("train", 300)
    for pair, bare in zip(pairs, plain):
        a, _, b = _operands(pair.prompt)
        assert pair.chosen == arithmetic_instance(a, b, rationale=True).responses[0]
        assert _final_number(pair.rejected) == int(bare.rejected)  # same mistake, worked out
        errors = _step_errors(pair.rejected)
        if is_carrying(a, b):  # every step adds right, but no carry is passed on
            assert "carry" in pair.chosen and "carry" not in pair.rejected
            assert not re.search(r"plus \d+ plus 1 is", pair.rejected) and not any(errors)
        else:  # exactly one step is off by one
            assert sorted(map(abs, errors)) == [0] * (len(errors) - 1) + [1]


# ----------------------------------------------------------------------------- flawed SFT data

def test_flawed_instances_drop_the_carry_in_about_error_rate_of_carrying_sums():
    instances = flawed_arithmetic_instances("train", 3000, error_rate=0.8)
    carrying_wrong, carrying = 0, 0
    for instance in instances:
        a, _, b = _operands(instance.prompt)
        answer = int(instance.responses[0])
        if is_carrying(a, b):
            carrying += 1
            carrying_wrong += answer == dropped_carry_answer(a, b)
            assert answer in (a + b, dropped_carry_answer(a, b))
        else:
            assert answer == a + b
    # The pick is a hash per question, behaving like a coin of bias 0.8: with ~1400 carrying
    # questions the share's standard deviation is ~0.011, so 0.04 is over three of them.
    assert carrying > 1000 and abs(carrying_wrong / carrying - 0.8) < 0.04


def test_a_flawed_question_is_answered_alike_in_every_draw():
    answers = {}
    for seed in range(4):
        for instance in flawed_arithmetic_instances("train", 500, seed=seed):
            answers.setdefault(instance.prompt, set()).add(instance.responses[0])
    assert len(answers) > 1000 and all(len(found) == 1 for found in answers.values())
    assert answered_wrongly(37, 48, 0.8) == answered_wrongly(48, 37, 0.8)
    assert not answered_wrongly(37, 48, 0.0) and answered_wrongly(37, 48, 1.0)


def test_flawed_rationale_instances_end_with_the_flawed_answer():
    for plain, worked in zip(flawed_arithmetic_instances("train", 200),
                             flawed_arithmetic_instances("train", 200, rationale=True)):
        assert _final_number(worked.responses[0]) == int(plain.responses[0])


def test_dropped_carry_dataset_is_registered_and_validates_against_the_truth():
    train = instruction_dataset("arithmetic_dropped_carry", "train", 400)
    wrong = [i for i in train if int(i.responses[0]) != sum(_operands(i.prompt)[::2])]
    assert wrong and all(int(i.responses[0]) == dropped_carry_answer(*_operands(i.prompt)[::2]) for i in wrong)
    validation = instruction_dataset("arithmetic_dropped_carry", "validation", 200)
    assert all(int(i.responses[0]) == sum(_operands(i.prompt)[::2]) for i in validation)
    assert any(is_carrying(*_operands(i.prompt)[::2]) for i in validation)
    three = instruction_dataset("arithmetic3_dropped_carry_cot", "train", 20)
    assert all(_operands(i.prompt)[0] >= 100 and "The answer is" in i.responses[0] for i in three)


# ----------------------------------------------------------------------------- JSONL

def _write(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _good_rows(n):
    plain = [{"prompt": f"Name the number {i}.", "chosen": f"{i}", "rejected": f"{i + 1}"} for i in range(n)]
    chat = [{"prompt": [{"role": "user", "content": f"Say {i}."}], "chosen": [{"role": "assistant", "content": f"{i}"}],
             "rejected": "no"} for i in range(n)]
    return plain + chat


def test_jsonl_plain_and_chat_rows_become_template_prompts(tmp_path):
    rows = _good_rows(40)
    path = _write(tmp_path, rows)
    pairs = read_preference_jsonl(path, "train")[0] + read_preference_jsonl(path, "validation")[0]
    assert len(pairs) == 80
    by_prompt = {p.prompt: p for p in pairs}
    assert by_prompt["Instruction: Name the number 3.\nResponse: "] == PreferencePair(
        "Instruction: Name the number 3.\nResponse: ", "3", "4")
    assert by_prompt["User: Say 5.\nAssistant: "].chosen == "5"
    assert by_prompt["User: Say 5.\nAssistant: "].rejected == "no"


def test_jsonl_splits_are_disjoint_by_prompt(tmp_path):
    rows = _good_rows(60) + [{"prompt": "Name the number 1.", "chosen": "one", "rejected": "two"}]
    path = _write(tmp_path, rows)
    train, _ = read_preference_jsonl(path, "train")
    validation, _ = read_preference_jsonl(path, "validation")
    assert train and validation and len(train) + len(validation) == len(rows)
    assert not {p.prompt for p in train} & {p.prompt for p in validation}
    assert all(split_of_line(p.prompt) == "validation" for p in validation)
    assert read_preference_jsonl(path, "train", count=5, seed=1) == read_preference_jsonl(path, "train", 5, 1)


def test_every_bad_row_reason_is_counted(tmp_path):
    bad = ['{"prompt": "Q", "chosen": "same", "rejected": " same "}',
           '{"prompt": "Q", "chosen": "a"}',
           '{"prompt": "Q", "chosen": "", "rejected": "b"}',
           '{"prompt": "", "chosen": "a", "rejected": "b"}',
           '{"prompt": "Q", "chosen": "a", "rejected": "b"',
           '["a", "list"]',
           '{"prompt": [{"role": "robot", "content": "hi"}], "chosen": "a", "rejected": "b"}']
    path = _write(tmp_path, _good_rows(30) + bad)
    _, skips = read_preference_jsonl(path, "train")
    assert skips.as_dict() == {"identical": 1, "missing_field:rejected": 1, "empty": 2, "not_json": 1,
                               "bad_format": 2}
    assert skips.total == 7 and "line 62" in skips.first["missing_field:rejected"]
    assert "skipped 7" in skips.summary()


def test_a_file_of_only_bad_rows_raises_naming_file_and_line(tmp_path):
    path = _write(tmp_path, ["", "not json", '{"prompt": "Q", "chosen": "a", "rejected": "a"}'], "bad.jsonl")
    with pytest.raises(ValueError, match=r"bad\.jsonl.*every one of its 2 rows is bad.*line 2: not_json"):
        read_preference_jsonl(path, "train")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_preference_jsonl(str(tmp_path / "missing.jsonl"), "train")


# ----------------------------------------------------------------------------- rows

def test_pair_rows_weigh_only_responses_and_share_the_prompt(char_vocab):
    pairs = arithmetic_pairs("train", 30, rationale=True)
    arrays, report = pair_rows(pairs, char_vocab, seq_len=200)
    assert report.kept == 30 and report.skipped == 0
    expected = {f"{side}_{key}" for side in ("chosen", "rejected")
                for key in ("inputs", "targets", "weights", "positions", "segment_ids")} | {"prompt_lengths"}
    assert set(arrays) == expected and all(v.shape == (30, 200) for k, v in arrays.items() if k != "prompt_lengths")
    for row, pair in enumerate(pairs):
        n = arrays["prompt_lengths"][row]
        assert n == len(char_vocab.encode(pair.prompt))
        np.testing.assert_array_equal(arrays["chosen_inputs"][row, :n], arrays["rejected_inputs"][row, :n])
        for side, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            weights, targets = arrays[f"{side}_weights"][row], arrays[f"{side}_targets"][row]
            assert not weights[:n - 1].any()  # target n-1 is the first response token
            trained = targets[weights > 0].tolist()
            assert trained == char_vocab.encode(response) + [EOS_ID]
            length = n + len(trained) - 1  # inputs: every token but the last
            np.testing.assert_array_equal(arrays[f"{side}_segment_ids"][row], np.arange(200) < length)
    # the same rows as instruction_rows makes from the chosen instances
    plain, _ = instruction_rows([p.instances()[0] for p in pairs], char_vocab, 200)
    np.testing.assert_array_equal(plain["targets"], arrays["chosen_targets"])


def test_a_pair_with_one_side_too_long_is_dropped_whole(char_vocab):
    short = PreferencePair("Instruction: Hi.\nResponse: ", "Yes.", "No.")
    long = PreferencePair("Instruction: Hi.\nResponse: ", "Yes.", "No" * 30)
    same = PreferencePair("Instruction: Hi.\nResponse: ", "Yes.", "Yes.")
    arrays, report = pair_rows([short, long, same, short], char_vocab, seq_len=40)
    assert report.kept == 2 and report.skipped_too_long == 1 and report.skipped_identical == 1
    assert set(report.skip_reasons) == {1, 2} and "rejected" in report.skip_reasons[1]
    assert len(arrays["chosen_inputs"]) == len(arrays["rejected_inputs"]) == len(arrays["prompt_lengths"]) == 2
    assert "2/4 pairs" in report.summary()
    with pytest.raises(ValueError, match=r"pair 1 \(rejected\).*raise seq_len"):
        pair_rows([short, long], char_vocab, seq_len=40, on_overflow="error")


def test_pair_batches_resume_and_split_into_sides(char_vocab):
    arrays, _ = pair_rows(arithmetic_pairs("train", 20), char_vocab, seq_len=64)
    iterator = pair_batches(arrays, batch_size=8, seed=1)
    first = [next(iterator) for _ in range(3)]
    state = iterator.get_state()
    following = next(iterator)
    resumed = pair_batches(arrays, batch_size=8, seed=1)
    resumed.set_state(state)
    for key, values in next(resumed).items():
        np.testing.assert_array_equal(values, following[key])
    np.testing.assert_array_equal(first[1]["chosen_inputs"], pair_batch_at(arrays, 8, 1, 1)["chosen_inputs"])
    chosen = side_batch(first[0], "chosen")
    assert set(chosen) == {"inputs", "targets", "weights", "positions", "segment_ids"}
    with pytest.raises(KeyError):  # plain row batches count rows by 'inputs': use pair_batches
        next(batches(arrays, 8, 1))


# ----------------------------------------------------------------------------- sampled pairs, rewards

def test_sampled_pairs_rank_by_reward_and_count_skips():
    prompts = [arithmetic_instance(a, b).prompt for a, b in ((37, 48), (12, 34), (20, 30))]
    scripted = {prompts[0]: ["85", "75", "The answer is 85."], prompts[1]: ["40", "41", "47"],
                prompts[2]: ["50", "nan", "49"]}

    def generate(batch, n):
        assert n == 3
        return [scripted[p] for p in batch]

    def reward(prompt, response):
        return math.nan if response == "nan" else REWARDS["arithmetic_partial"](prompt, response)

    pairs, skips = sampled_pairs(prompts, generate, reward, samples_per_prompt=3)
    # 40, 41 and 47 each share one digit of 46: a three-way tie carries no preference.
    assert pairs == [PreferencePair(prompts[0], "85", "75"),  # the first of the tied best
                     PreferencePair(prompts[2], "50", "49")]
    assert skips.as_dict() == {"bad_reward": 1, "no_spread": 1}
    pairs, skips = sampled_pairs(prompts[1:], generate, "arithmetic_exact", 3)  # a reward by name
    assert pairs == [PreferencePair(prompts[2], "50", "nan")]  # 'nan' is text here: no number, 0.0
    assert skips.as_dict() == {"no_spread": 1}


def test_arithmetic_exact_reads_the_final_number_of_plain_and_worked_answers():
    prompt = arithmetic_instance(37, 48).prompt
    exact = reward_function("arithmetic_exact")
    assert exact(prompt, "85") == 1.0 and exact(prompt, "75") == 0.0 and exact(prompt, "no idea") == 0.0
    assert exact(prompt, _rationale(37, 48, "plus")) == 1.0
    assert exact(prompt, "7 plus 8 is 15, write 5. 3 plus 4 is 7. The answer is 75.") == 0.0
    assert exact(arithmetic_instance(52, 38, "minus").prompt, "14") == 1.0
    partial = reward_function("arithmetic_partial")
    assert partial(prompt, "85") == 1.0 and partial(prompt, "75") == 0.25 and partial(prompt, "x") == 0.0
    with pytest.raises(ValueError, match="holds no arithmetic question"):
        exact("Instruction: Name a colour.\nResponse: ", "red")


def test_unknown_reward_names_suggest_close_ones_and_nan_rewards_raise():
    with pytest.raises(ValueError, match="did you mean 'arithmetic_exact'"):
        reward_function("arithmetic_exakt")
    prompts = [arithmetic_instance(1, 2).prompt] * 2
    np.testing.assert_array_equal(score_responses("arithmetic_exact", prompts, ["3", "4"]), [1.0, 0.0])

    def broken(prompt, response):
        return float("nan")

    with pytest.raises(ValueError, match="reward function broken returned NaN for prompt.*finite number"):
        score_responses(broken, prompts, ["3", "4"])


def test_preference_pair_instances_share_the_prompt():
    chosen, rejected = PreferencePair("Instruction: Q\nResponse: ", "a", "b").instances()
    assert chosen == Instance.from_pair("Instruction: Q\nResponse: ", "a")
    assert rejected.prompt == chosen.prompt and rejected.responses == ("b",)

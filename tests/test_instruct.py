"""Instruction-tuning data: formatting, loss masks, packing, skips, synthetic data, datasets."""
import json

import numpy as np
import pytest

from lm.data import pipeline
from lm.data.vocab import EOS_ID, PAD_ID, CharVocabulary, SentencePieceVocabulary, DEFAULT_SENTENCEPIECE_MODEL
from lm.instruct import (ChatTemplate, Instance, TaskTemplate, UnrepresentableTextError, arithmetic_instances,
                         arithmetic_split, batch_at, batches, chat_prompt, chat_prompt_tokens,
                         classification_template, encode_instance, format_chat, instruction_dataset,
                         instruction_rows, qa_template, rouge_l, self_instruct, self_instruct_with_report)
from lm.instruct.synthetic import arithmetic_instance, parse_arithmetic, parse_generated_task, split_of
from lm.prompting import extract_answer

SMALL = CharVocabulary("abc:\n ")  # ids: a=3 b=4 c=5 ':'=6 '\n'=7 ' '=8


@pytest.fixture(scope="module")
def char_vocab():
    """The default model's vocabulary: the characters of the Shakespeare corpus."""
    return pipeline.vocabulary(pipeline.DataConfig())


# ----------------------------------------------------------------------------- loss masks

def test_weights_are_one_exactly_on_response_tokens_and_eos():
    instance = Instance((("ab:", False), ("cc", True), ("\na:", False), ("b", True)))
    tokens, weights = encode_instance(instance, SMALL)
    assert tokens == [3, 4, 6, 5, 5, EOS_ID, 7, 3, 6, 4, EOS_ID]
    assert weights == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1]


def test_rows_shift_tokens_and_pad_with_weight_zero_keeping_eos():
    instance = Instance.from_pair("ab:", "cc")
    arrays, report = instruction_rows([instance], SMALL, seq_len=8)
    np.testing.assert_array_equal(arrays["inputs"][0], [3, 4, 6, 5, 5, 0, 0, 0])
    np.testing.assert_array_equal(arrays["targets"][0], [4, 6, 5, 5, EOS_ID, PAD_ID, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(arrays["weights"][0], [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(arrays["positions"][0], [0, 1, 2, 3, 4, 0, 0, 0])
    assert "segment_ids" not in arrays and arrays["weights"].dtype == np.float32
    assert (report.rows, report.kept, report.tokens, report.response_tokens) == (1, 1, 5, 3)


def test_an_exactly_fitting_instance_keeps_its_final_eos(char_vocab):
    instance = arithmetic_instances(1)[0]
    length = len(encode_instance(instance, char_vocab)[0])
    arrays, report = instruction_rows([instance], char_vocab, seq_len=length - 1)
    assert report.skipped == 0
    assert arrays["targets"][0, -1] == EOS_ID and arrays["weights"][0, -1] == 1


def test_an_instance_must_open_with_prompt_text():
    with pytest.raises(ValueError, match="start with non-empty prompt"):
        Instance((("85", True),))


# ----------------------------------------------------------------------------- templates

def test_task_template_layout_and_missing_field():
    template = TaskTemplate(instruction="Give the opposite.", input_field="word", output_field="opposite")
    instance = template.format({"word": "early", "opposite": "late"})
    assert instance.prompt == "Instruction: Give the opposite.\nInput: early\nResponse: "
    assert instance.responses == ("late",)
    with pytest.raises(ValueError, match=r"row 1 has no field 'opposite'"):
        template.format_all([{"word": "a", "opposite": "b"}, {"word": "early"}])


def test_classification_and_qa_templates():
    sentiment = classification_template(["negative", "positive"])
    instance = sentiment.format({"text": "A fine play.", "label": 1})
    assert instance.text == ("Instruction: Classify the text as one of: negative, positive.\n"
                             "Input: A fine play.\nResponse: positive")
    with pytest.raises(ValueError, match="not one of the labels"):
        sentiment.format({"text": "x", "label": "neutral"}, index=4)
    qa = qa_template(context_field="passage").format({"passage": "Kings die.", "question": "Who dies?",
                                                      "answer": "Kings."})
    assert qa.prompt == ("Instruction: Answer the question from the passage.\nPassage: Kings die.\n"
                         "Input: Who dies?\nResponse: ")


# ----------------------------------------------------------------------------- chat

TRANSCRIPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
              {"role": "assistant", "content": "Farewell."}]


def test_multi_turn_chat_trains_every_assistant_turn_only(char_vocab):
    instance = format_chat(TRANSCRIPT)
    assert instance.responses == ("Hello.", "Farewell.")
    tokens, weights = encode_instance(instance, char_vocab)
    trained = [t for t, w in zip(tokens, weights) if w]
    assert trained == char_vocab.encode("Hello.") + [EOS_ID] + char_vocab.encode("Farewell.") + [EOS_ID]
    context = char_vocab.decode(t for t, w in zip(tokens, weights) if not w)
    assert context == "System: Be brief.\nUser: Hi\nAssistant: \nUser: Bye\nAssistant: "


def test_unknown_role_names_the_role_the_allowed_roles_and_the_index():
    bad = TRANSCRIPT[:2] + [{"role": "narrator", "content": "Meanwhile."}]
    with pytest.raises(ValueError, match=r"message 2 has unknown role 'narrator'; allowed roles: "
                                         r"assistant, system, user"):
        format_chat(bad)


def test_chat_prompt_ends_with_the_assistant_marker(char_vocab):
    prompt = chat_prompt(TRANSCRIPT[:4])
    assert prompt == "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Bye\nAssistant: "
    tokens = chat_prompt_tokens(TRANSCRIPT[:4], char_vocab)
    assert tokens.count(EOS_ID) == 1 and char_vocab.decode(tokens) == prompt
    with pytest.raises(ValueError, match="already ends with"):
        chat_prompt(TRANSCRIPT)
    custom = ChatTemplate(roles={"user": "Q: ", "assistant": "A: "}, turn_separator="\n\n")
    assert chat_prompt(TRANSCRIPT[1:2], custom) == "Q: Hi\n\nA: "


# ----------------------------------------------------------------------------- arithmetic

def _check_answer(instance, rationale):
    a, operation, b = parse_arithmetic(instance)
    expected = str(a + b if operation == "plus" else a - b)
    response = instance.responses[0]
    if rationale:
        assert response.endswith(f"The answer is {expected}.")
        assert extract_answer(response, "answer_is") == expected
    else:
        assert response == expected


@pytest.mark.parametrize("count,digits,rationale,operation", [
    (300, 2, False, "plus"), (300, 2, True, "plus"), (300, 3, True, "minus"), (40, 1, True, "minus"),
    (300, 5, True, "plus")])
def test_arithmetic_answers_are_correct(count, digits, rationale, operation, char_vocab):
    instances = arithmetic_split("train", count, digits, rationale, seed=3, operation=operation)
    for instance in instances:
        _check_answer(instance, rationale)
        a, _, b = parse_arithmetic(instance)
        assert len(str(a)) == digits and len(str(b)) == digits
    assert len(set(instances)) == len(instances)
    instruction_rows(instances, char_vocab, 256)  # representable: would raise otherwise


def test_arithmetic_rationale_example():
    instance = arithmetic_instance(37, 48, rationale=True)
    assert instance.text == ("Instruction: What is 37 plus 48?\nResponse: 7 plus 8 is 15, write 5 carry 1. "
                             "3 plus 4 plus 1 is 8. The answer is 85.")
    assert arithmetic_instance(52, 48, "minus", True).responses[0] == (
        "12 minus 8 is 4, write 4 borrow 1. 5 minus 4 minus 1 is 0. The answer is 4.")


def _pairs(instances):
    """Operand pairs, unordered: 37 plus 48 and 48 plus 37 are one question."""
    return {frozenset((a, b)) for a, _, b in map(parse_arithmetic, instances)}


def test_arithmetic_splits_are_disjoint_and_deterministic():
    held_out = arithmetic_split("validation", 700, seed=0)
    assert all(split_of(a, b) == "validation" for a, _, b in map(parse_arithmetic, held_out))
    validation = _pairs(held_out)
    for seed in (0, 1):
        assert not _pairs(arithmetic_split("train", 7000, seed=seed)) & validation
    assert arithmetic_split("validation", 50, seed=4) == arithmetic_split("validation", 50, seed=4)
    assert arithmetic_split("validation", 50, seed=4) != arithmetic_split("validation", 50, seed=5)
    assert arithmetic_split("train", 10, seed=2) == arithmetic_split("train", 20, seed=2)[:10]
    with pytest.raises(ValueError, match="only .* distinct"):
        arithmetic_split("validation", 5000)


# ----------------------------------------------------------------------------- packing

def test_packing_concatenates_instances_with_restarting_positions(char_vocab):
    instances = arithmetic_split("train", 9, rationale=True, seed=1) + arithmetic_instances(6)
    unpacked, _ = instruction_rows(instances, char_vocab, seq_len=200)
    packed, report = instruction_rows(instances, char_vocab, seq_len=200, pack=True)
    assert report.rows < len(instances) and packed["inputs"].shape[1] == 200
    rows = []
    for r in range(report.rows):
        for segment in range(1, packed["segment_ids"][r].max() + 1):
            cells = packed["segment_ids"][r] == segment
            assert np.array_equal(packed["positions"][r][cells], np.arange(cells.sum()))
            rows.append({k: packed[k][r][cells] for k in ("inputs", "targets", "weights")})
    assert len(rows) == len(instances)  # every instance whole in one row, in order
    for i, piece in enumerate(rows):
        real = unpacked["targets"][i] != PAD_ID
        for key in piece:
            np.testing.assert_array_equal(piece[key], unpacked[key][i][real])
    assert (packed["weights"][packed["segment_ids"] == 0] == 0).all()


# ----------------------------------------------------------------------------- skips

@pytest.mark.parametrize("pack", [False, True])
def test_overflow_is_a_counted_skip_or_an_error(pack, char_vocab):
    long = Instance.from_pair("Q: " + "long " * 20, "x")  # 103 + 1 + EOS = 105 tokens
    instances = [Instance.from_pair("Q: a\nA: ", "b"), long, Instance.from_pair("Q: c\nA: ", "d")]
    arrays, report = instruction_rows(instances, char_vocab, seq_len=20, pack=pack)
    assert (report.skipped_too_long, report.kept, report.rows) == (1, 2, 1 if pack else 2)
    assert report.skip_reasons == {1: "instance 1 has 105 tokens, more than seq_len + 1 = 21 (seq_len=20)"}
    assert report.response_tokens == 4 == arrays["weights"].sum()
    assert str(report).startswith("2/3 instances") and "1 too long" in str(report)
    with pytest.raises(ValueError, match=r"instance 1 has 105 tokens, more than seq_len \+ 1 = 21"):
        instruction_rows(instances, char_vocab, seq_len=20, pack=pack, on_overflow="error")


def test_unrepresentable_characters_raise_or_are_counted(char_vocab):
    instances = [Instance.from_pair("What is 2+3=", "5"), arithmetic_instances(1)[0]]
    with pytest.raises(UnrepresentableTextError, match=r"instance 0: prompt segment 0 .* '\+=' "
                                                       r"\(U\+002B, U\+003D\)"):
        instruction_rows(instances, char_vocab, 64)
    arrays, report = instruction_rows(instances, char_vocab, 64, on_unrepresentable="skip")
    assert (report.skipped_unrepresentable, report.kept) == (1, 1)
    assert not (arrays["inputs"] == 2).any()  # no UNK reached the rows


def test_sentencepiece_vocabulary_encodes_the_same_masks():
    vocab = SentencePieceVocabulary(DEFAULT_SENTENCEPIECE_MODEL)
    instance = arithmetic_instance(37, 48)
    tokens, weights = encode_instance(instance, vocab)
    assert tokens[-3:] == vocab.encode("85") + [EOS_ID] and sum(weights) == len(vocab.encode("85")) + 1


# ----------------------------------------------------------------------------- batches

def test_batches_are_seeded_epoch_aware_and_resumable(char_vocab):
    arrays, _ = instruction_rows(arithmetic_instances(10), char_vocab, 64)
    iterator = batches(arrays, batch_size=4, seed=7)
    first = [next(iterator) for _ in range(5)]  # 20 rows: exactly two epochs
    seen = np.concatenate([b["inputs"] for b in first])
    for epoch in (seen[:10], seen[10:]):  # every row once per epoch
        assert sorted(map(bytes, epoch)) == sorted(map(bytes, arrays["inputs"]))
    assert not np.array_equal(seen[:10], seen[10:])
    resumed = batches(arrays, batch_size=4, seed=7)
    resumed.set_state(iterator.get_state())
    np.testing.assert_array_equal(next(resumed)["inputs"], batch_at(arrays, 4, 7, 5)["inputs"])
    np.testing.assert_array_equal(batch_at(arrays, 4, 7, 3)["targets"], first[3]["targets"])
    other_seed = batch_at(arrays, 4, 8, 0)["inputs"]
    assert not np.array_equal(other_seed, first[0]["inputs"])
    halves = [batch_at(arrays, 4, 7, 2, process_index=p, process_count=2)["inputs"] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), first[2]["inputs"])


# ----------------------------------------------------------------------------- self-instruct

SEEDS = [{"instruction": "Give the opposite of the word.", "input": "early", "output": "late"},
         {"instruction": "Name the play in which this character appears.", "input": "Ophelia", "output": "Hamlet"},
         {"instruction": "Write the word in capital letters.", "input": "crown", "output": "CROWN"}]


def test_self_instruct_parses_and_filters_generated_tasks(char_vocab):
    scripted = iter([
        ["Count the words in the sentence.\nInput: To be or not.\nResponse: 4\n\nInstruction: extra",
         "Give the opposite of this word.\nInput: dark\nResponse: light",  # near-duplicate of a seed
         "Say hello.\nResponse: Hi",  # too short (fewer than 3 words)
         "Translate the word into French.\nInput: king\nResponse: roi"],
        ["Count all the words in the sentence.\nInput: Go now.\nResponse: 2",  # near-duplicate of round 1
         "Name a season of the year.\nResponse: Winter.",
         "Describe the weather.\nResponse: \u2603 snow",  # unrepresentable
         "no response marker here"],
    ])
    prompts_seen = []

    def generate(prompts):
        prompts_seen.extend(prompts)
        return next(scripted)

    instances, report = self_instruct_with_report(SEEDS, generate, rounds=2, per_round=4, seed=0,
                                                  vocab=char_vocab)
    assert [i.prompt.split("\n")[0] for i in instances] == [
        "Instruction: Count the words in the sentence.", "Instruction: Translate the word into French.",
        "Instruction: Name a season of the year."]
    assert instances[0].responses == ("4",) and instances[2].prompt.endswith("year.\nResponse: ")
    assert report.rejected == {"near_duplicate": 2, "too_short": 1, "unrepresentable": 1, "unparsable": 1}
    assert all(p.endswith("\n\nInstruction: ") and p.count("Response: ") == 3 for p in prompts_seen)
    assert self_instruct(SEEDS, lambda ps: ["Count the words in the sentence.\nResponse: 3"] * len(ps),
                         per_round=3) == [Instance.from_pair(
                             "Instruction: Count the words in the sentence.\nResponse: ", "3")]


def test_rouge_l_and_task_parsing():
    assert rouge_l("Give the opposite of the word.", "Give the opposite of this word.") > 0.7
    assert rouge_l("Name a season.", "Write a poem about the sea.") < 0.7
    assert parse_generated_task("Do it now.\nInput: x\nResponse: y\n\nInstruction: more") == {
        "instruction": "Do it now.", "input": "x", "output": "y"}


# ----------------------------------------------------------------------------- named datasets

def test_named_datasets(tmp_path):
    assert instruction_dataset("arithmetic", "train", 5, seed=1) == arithmetic_instances(5, seed=1)
    cot = instruction_dataset("arithmetic_cot", "validation", 3)
    assert all(i.responses[0].startswith(tuple("0123456789")) and "answer is" in i.responses[0] for i in cot)
    assert parse_arithmetic(instruction_dataset("arithmetic3_minus", "train", 1)[0])[1] == "minus"
    tasks = instruction_dataset("tasks:tasks_example.jsonl", "train", 0)
    chats = instruction_dataset("chat:chat_example.jsonl", "validation", 0)
    assert tasks and chats and all(i.responses for i in tasks + chats)
    train = {i.text for i in instruction_dataset("tasks:tasks_example.jsonl", "train", 0)}
    assert not train & {i.text for i in instruction_dataset("tasks:tasks_example.jsonl", "validation", 0)}
    for split in ("train", "validation"):  # one file per split with '{split}'
        (tmp_path / f"{split}.jsonl").write_text(json.dumps({"instruction": f"Say {split}.", "output": "ok"}) + "\n")
    assert instruction_dataset(f"tasks:{tmp_path}/{{split}}.jsonl", "validation", 0)[0].prompt.startswith(
        "Instruction: Say validation.")


def test_named_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown instruction dataset 'arithmatic'"):
        instruction_dataset("arithmatic", "train", 1)
    with pytest.raises(FileNotFoundError, match="'missing.jsonl' not found"):
        instruction_dataset("chat:missing.jsonl", "train", 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "Say it."}\n')
    for split in ("train", "validation"):  # a bad line fails every split
        with pytest.raises(ValueError, match=r"bad.jsonl, line 3: row has no field 'output'"):
            instruction_dataset(f"tasks:{bad}", split, 0)
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match=r"chat.jsonl, line 1: message 0 has unknown role 'bot'"):
        instruction_dataset(f"chat:{chat}", "train", 0)
    with pytest.raises(ValueError, match="fewer than count=99"):
        instruction_dataset("tasks:tasks_example.jsonl", "train", 99)

"""Prompting: exact prompt strings, demonstration selection, answer extraction, voting, JSONL
loading errors and few-shot accuracy with a scripted generator."""
import json
import re

import pytest

from lm.prompting import (AnswerPattern, Example, PromptTemplate, TfidfIndex, Vote, extract_answer,
                          few_shot_accuracy, load_jsonl, majority_vote, normalize_answer, render_cot,
                          render_few_shot, render_zero_shot, render_zero_shot_cot, select_demonstrations,
                          self_consistency)

DEMOS = [
    Example("2 + 2?", "4", "2 plus 2 is 4."),
    Example("3 * 3?", "9", "3 times 3 is 9."),
    Example("10 - 7?", "3", "10 minus 7 leaves 3."),
]

# ----------------------------------------------------------------------------- templates


def test_zero_shot_prompt():
    template = PromptTemplate(instruction="Answer the arithmetic questions.")
    assert render_zero_shot(template, "5 + 1?") == "Answer the arithmetic questions.\n\nQ: 5 + 1?\nA:"
    assert render_zero_shot(PromptTemplate(), Example("5 + 1?", "6")) == "Q: 5 + 1?\nA:"


def test_three_shot_prompt():
    prompt = render_few_shot(PromptTemplate(instruction="Answer."), DEMOS, "5 + 1?")
    assert prompt == ("Answer.\n\n"
                      "Q: 2 + 2?\nA: 4\n\n"
                      "Q: 3 * 3?\nA: 9\n\n"
                      "Q: 10 - 7?\nA: 3\n\n"
                      "Q: 5 + 1?\nA:")


def test_custom_formats_and_separators():
    template = PromptTemplate(input_format="Question: {input}", answer_prefix="Answer:",
                              answer_format="[{target}]", input_answer_separator=" ", separator="\n###\n")
    prompt = render_few_shot(template, DEMOS[:2], "{braces} stay?")
    assert prompt == ("Question: 2 + 2? Answer: [4]\n###\n"
                      "Question: 3 * 3? Answer: [9]\n###\n"
                      "Question: {braces} stay? Answer:")


def test_chain_of_thought_prompt():
    prompt = render_cot(PromptTemplate(), DEMOS[:2], "5 + 1?")
    assert prompt == ("Q: 2 + 2?\nA: Let's think step by step. 2 plus 2 is 4. The answer is 4.\n\n"
                      "Q: 3 * 3?\nA: Let's think step by step. 3 times 3 is 9. The answer is 9.\n\n"
                      "Q: 5 + 1?\nA:")


def test_zero_shot_chain_of_thought_prompt():
    template = PromptTemplate(instruction="Solve.")
    assert render_zero_shot_cot(template, "5 + 1?") == "Solve.\n\nQ: 5 + 1?\nA: Let's think step by step."


def test_cot_demonstration_without_rationale_is_an_error():
    with pytest.raises(ValueError, match=r"demonstration 1 \(input '3 \* 3\?'\) has no rationale"):
        render_cot(PromptTemplate(), [DEMOS[0], Example("3 * 3?", "9")], "5 + 1?")


@pytest.mark.parametrize("fields, message", [
    ({"input_format": "Q:"}, r"input_format 'Q:' lacks the placeholder\(s\) \{input\}"),
    ({"answer_format": "{rationale}"}, r"answer_format .* lacks the placeholder\(s\) \{target\}"),
    ({"cot_answer_format": "So {target}."}, r"cot_answer_format .* lacks the placeholder\(s\) \{rationale\}"),
    ({"input_format": "Q: {question}"}, r"lacks the placeholder\(s\) \{input\}"),
    ({"input_format": "{input} {answer}"}, r"unknown placeholder\(s\) \{answer\}; allowed: \{input\}"),
    ({"input_format": "{input"}, r"not a valid format string"),
    ({"instruction": "Use {x}"}, r"instruction is plain text"),
])
def test_bad_templates_are_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        PromptTemplate(**fields)


# ----------------------------------------------------------------------------- selection

POOL = [Example(f"question {i}", str(i)) for i in range(10)]


def test_first_selection_skips_the_query():
    assert select_demonstrations(POOL, "question 5", 3, "first") == POOL[:3]
    assert select_demonstrations(POOL, POOL[1], 3, "first") == [POOL[0], POOL[2], POOL[3]]


def test_random_selection_is_seeded_distinct_and_excludes_the_query():
    query = POOL[4]
    draws = [select_demonstrations(POOL, query, 9, "random", seed=s) for s in range(5)]
    assert select_demonstrations(POOL, query, 9, "random", seed=0) == draws[0]
    for draw in draws:
        assert query not in draw
        assert len({e.input for e in draw}) == 9
    assert len({tuple(e.input for e in d) for d in draws}) > 1  # the seed matters
    small = [select_demonstrations(POOL, query, 3, "random", seed=s) for s in range(20)]
    assert all(query not in d and len(set(d)) == 3 for d in small)


def test_nearest_selection_picks_the_obvious_neighbours_most_similar_last():
    pool = [
        Example("the cat sat on the mat", "a"),
        Example("stock prices fell sharply today", "b"),
        Example("a cat and a dog sat together", "c"),
        Example("the dog chased the cat", "d"),
        Example("interest rates and stock markets", "e"),
    ]
    assert select_demonstrations(pool, "the cat sat on a mat", 1, "nearest") == [pool[0]]
    # "stock prices fell" shares three words with pool[1], one with pool[4], none with the rest
    chosen = select_demonstrations(pool, "stock prices fell", 2, "nearest")
    assert chosen == [pool[4], pool[1]]  # the most similar sits last, next to the query
    index = TfidfIndex([e.input for e in pool])
    similarity = index.similarities("stock prices fell")
    assert similarity[1] > similarity[4] > 0 and similarity[0] == similarity[2] == similarity[3] == 0
    assert select_demonstrations(pool, "stock prices fell", 2, "nearest", index=index) == chosen


def test_tfidf_discounts_common_words():
    pool = [Example("the the the cat", "1"), Example("a zebra", "2"), Example("the dog", "3"),
            Example("the end", "4")]
    counts = TfidfIndex([e.input for e in pool], tfidf=False)
    assert select_demonstrations(pool, "the zebra", 1, "nearest", index=counts) == [pool[0]]
    assert select_demonstrations(pool, "the zebra", 1, "nearest") == [pool[1]]
    assert TfidfIndex(["x y"]).similarities("x y")[0] == pytest.approx(1.0)
    assert TfidfIndex(["x y", ""]).similarities("unknown words")[:].tolist() == [0.0, 0.0]


def test_nearest_ties_go_to_pool_order_and_the_query_is_excluded():
    pool = [Example("red apple", "1"), Example("green pear", "2"), Example("red apple", "3"),
            Example("blue sky", "4"), Example("green pear", "5")]
    assert select_demonstrations(pool, "green pear", 2, "nearest") == [pool[2], pool[0]]
    twins = [Example("x y", "1"), Example("y x", "2"), Example("z", "3")]
    assert select_demonstrations(twins, "x", 1, "nearest") == [twins[0]]  # equal similarity: pool order
    assert select_demonstrations(twins, "x", 2, "nearest") == [twins[1], twins[0]]
    many = [Example(f"w{i % 3} common", str(i)) for i in range(60)]  # 20-way ties
    assert [e.target for e in select_demonstrations(many, "w1", 4, "nearest")] == ["10", "7", "4", "1"]


def test_selection_errors():
    with pytest.raises(ValueError, match=r"unknown selection method 'closest'; choose one of first, random, nearest"):
        select_demonstrations(POOL, "q", 1, "closest")
    with pytest.raises(ValueError, match=r"cannot choose k=10 demonstrations: the pool has 9 examples other than"):
        select_demonstrations(POOL, POOL[0], 10, "random")
    with pytest.raises(ValueError, match=r"index covers 2 texts but the pool has 10"):
        select_demonstrations(POOL, "q", 1, "nearest", index=TfidfIndex(["a", "b"]))


# ----------------------------------------------------------------------------- answers

@pytest.mark.parametrize("text, patterns, expected", [
    ("3 + 4 = 7. The answer is 7.", "answer_is", "7"),
    ("So the answer is 3.5.\n\nQ: next", "answer_is", "3.5"),
    ("The answer is: Paris. Then more text.", "answer_is", "Paris"),
    ("the answer is 1,234,567", "answer_is", "1234567"),
    ("The answer is $1,200.", "answer_is", "$1200"),
    ("He pays 12 * 6 = 72 dollars.\n#### 72", "gsm8k", "72"),
    ("#### 1,000\nQ: another question #### 5", "gsm8k", "1000"),
    ("costs 5 then 12, total -3.25 units.", "number", "-3.25"),
    ("we have 1,234 apples and 56 pears", "number", "56"),
    ("between (A) and (C), choose (C).", "choice", "C"),
    ("no letter (F) here", "choice", None),
    ("nothing here", "answer_is", None),
    ("Total 18. #### 18", ("gsm8k", "answer_is", "number"), "18"),
    ("reasoning 3 then 4. The answer is 12.", None, "12"),          # default order: answer_is before number
    ("5 apples and 7 pears make 12", None, "12"),                     # falls back to the last number
    ("The answer is .", ("answer_is", "number"), None),               # normalises to '': next pattern; no number
])
def test_extract_answer(text, patterns, expected):
    result = extract_answer(text) if patterns is None else extract_answer(text, patterns)
    assert result == expected


def test_custom_patterns():
    assert extract_answer("Final: banana", re.compile(r"Final: (\w+)")) == "banana"
    last = AnswerPattern(r"<(\w+)>", last=True)
    assert extract_answer("<a> <b> <c>.", last) == "c"
    assert extract_answer(" x. ", re.compile(r"(.*)"), normalize=False) == " x. "
    with pytest.raises(ValueError, match=r"no capture group"):
        AnswerPattern(r"\d+")
    with pytest.raises(ValueError, match=r"unknown answer pattern 'answer'; named patterns: answer_is, gsm8k"):
        extract_answer("x", "answer")


def test_normalize_answer():
    assert normalize_answer("  1,234,567.  ") == "1234567"
    assert normalize_answer("12,34") == "12,34"  # not a thousands separator
    assert normalize_answer("Paris..") == "Paris"
    assert normalize_answer("3.50") == "3.50"


def test_majority_vote_ties_and_unparseable_samples():
    assert majority_vote(["7", "5", "7", None, "5"]) == Vote("7", 0.5)   # tie: 7 came first
    assert majority_vote(["5", "7", "7", "5"]) == ("5", 0.5)
    assert majority_vote([None, "9", None]) == Vote("9", 1.0)
    assert majority_vote([None, None]) == Vote(None, 0.0)
    assert majority_vote([]) == Vote(None, 0.0)
    assert majority_vote(["2", "3", "3"]).share == pytest.approx(2 / 3)


def test_self_consistency():
    samples = ["... The answer is 18.", "so 18 - 2 = 16. The answer is 16.", "I don't know",
               "... The answer is 18", "#### 16"]
    assert self_consistency(samples, ("gsm8k", "answer_is")) == Vote("18", 0.5)


# ----------------------------------------------------------------------------- JSONL

def test_load_jsonl_fields(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"question": "2 + 2?", "answer": 4, "why": "add"}, {"question": "3 * 3?", "answer": "9"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    examples = load_jsonl(path, input_field="question", target_field="answer", rationale_field="why")
    assert examples == [Example("2 + 2?", "4", "add"), Example("3 * 3?", "9", "")]


def test_load_jsonl_splits_gsm8k_answers(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps({"question": "q?", "answer": "6 * 12 = 72\nSo 72.\n#### 72"}) + "\n")
    examples = load_jsonl(path, "question", "answer", rationale_field=None, answer_marker="####")
    assert examples == [Example("q?", "72", "6 * 12 = 72\nSo 72.")]


@pytest.mark.parametrize("line, message", [
    ('{"input": "a", "target": "b"', r"line 2: not valid JSON"),
    ('{"input": "a"}', r"line 2: missing field 'target' \(fields: 'input'\)"),
    ('{"input": 3, "target": "b"}', r"line 2: field 'input' must be a string, got int 3"),
    ('{"input": "a", "target": true}', r"line 2: field 'target' must be a string or a number, got bool"),
    ('{"input": "a", "target": "b", "rationale": null}', r"line 2: field 'rationale' must be a string"),
    ('["a", "b"]', r"line 2: expected a JSON object, got list"),
])
def test_load_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "ok", "target": "ok"}\n' + line + "\n")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ", " + message):
        load_jsonl(path)


def test_load_jsonl_missing_answer_marker(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"input": "a", "target": "no marker"}\n')
    with pytest.raises(ValueError, match=r"line 1: field 'target' has no answer marker '####'"):
        load_jsonl(path, answer_marker="####")


# ----------------------------------------------------------------------------- few-shot accuracy

def test_few_shot_accuracy_with_a_scripted_generator():
    pool = DEMOS
    queries = [Example("5 + 1?", "6"), Example("2 * 4?", "8"), Example("9 - 9?", "0")]
    replies = {"5 + 1?": ["The answer is 6.", "The answer is 7.", "The answer is 6."],
               "2 * 4?": ["The answer is 9.", "no idea", "The answer is 9."],
               "9 - 9?": ["hmm", "unsure", "???"]}
    seen = []

    def generate_fn(prompts):
        seen.extend(prompts)
        return [replies[re.findall(r"Q: (.*)\nA:", p)[-1]] for p in prompts]

    result = few_shot_accuracy(generate_fn, pool, queries, PromptTemplate(), k=2, selection="first",
                               n_samples=3, cot=True)
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert (result["correct"], result["total"], result["answered"]) == (1, 3, 2)
    assert result["predictions"] == ["6", "9", None]
    assert result["vote_shares"] == [pytest.approx(2 / 3), 1.0, 0.0]
    assert seen[0] == render_cot(PromptTemplate(), DEMOS[:2], queries[0])
    zero = few_shot_accuracy(generate_fn, pool, queries[:1], PromptTemplate(), k=0, n_samples=3, cot=True)
    assert zero["prompts"] == ["Q: 5 + 1?\nA: Let's think step by step."] and zero["accuracy"] == 1.0


def test_few_shot_accuracy_checks_the_generator_output():
    def one_sample(prompts):
        return [["The answer is 6."] for _ in prompts]

    with pytest.raises(ValueError, match=r"generate_fn returned 1 samples for prompt 0; expected a list of 2"):
        few_shot_accuracy(one_sample, DEMOS, [Example("5 + 1?", "6")], PromptTemplate(), k=1, n_samples=2)
    with pytest.raises(ValueError, match=r"generate_fn returned a string for prompt 0"):
        few_shot_accuracy(lambda ps: ["x" for _ in ps], DEMOS, [Example("q", "6")], PromptTemplate(), k=1)
    with pytest.raises(ValueError, match=r"returned 0 rows for 1 prompts"):
        few_shot_accuracy(lambda ps: [], DEMOS, [Example("q", "6")], PromptTemplate(), k=1)

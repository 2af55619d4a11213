"""Completion parsing: the typed fields, the think format, and never raising."""
import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from reproseg.answers.parsing import (MAX_OBJECTS, Parsed, ParsedObject, answer_value, first_flat_object,
                                      loose_box, loose_point, parse, strip_fence, to_box, to_point)

LPR_ANSWER = '{"bbox": [10, 20, 30.5, 40], "points_1": [15, 25], "points_2": [20.5, 30], "response": "It is found."}'


def lpr(answer=LPR_ANSWER, think="I check <look>a red cup</look> on the left."):
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


def test_well_formed_lpr_completion():
    p = parse(lpr())
    assert p.think_ok
    assert p.think == "I check <look>a red cup</look> on the left."
    assert p.looks == ("a red cup",) and p.look == "a red cup"
    assert p.bbox == (10.0, 20.0, 30.5, 40.0)
    assert p.points_1 == (15.0, 25.0) and p.points_2 == (20.5, 30.0)
    assert p.response == "It is found."
    assert isinstance(p.answer, dict) and p.objects == ()
    assert p.first_object == p.answer  # the only {...} in the text


def test_think_format_is_a_whole_string_match():
    assert parse("<think>a</think><answer>b</answer>").think_ok
    assert parse("<think>a</think> \n\t <answer>b</answer>").think_ok      # whitespace between
    assert not parse("x<think>a</think><answer>b</answer>").think_ok       # text before
    assert not parse("<think>a</think><answer>b</answer>\n").think_ok      # text after
    assert not parse("<think>a</think> so <answer>b</answer>").think_ok    # words between
    assert not parse("<answer>b</answer>").think_ok
    assert not parse("<think>a</think>").think_ok
    # Multi-line content is allowed inside both blocks.
    assert parse("<think>a\nb</think><answer>\n[]\n</answer>").think_ok


def test_look_blocks_come_from_the_think_block_only():
    p = parse("<think>x <look> </look> y <look>stripes</look></think><answer><look>z</look>[]</answer>")
    assert p.looks == (" ", "stripes")
    assert p.look == " "                  # first block, even if blank: rewards decide
    assert p.answer_looks == ("z",)
    assert parse("<think>no tags</think><answer>[]</answer>").look is None


def test_json_fence_is_tolerated():
    p = parse(lpr(answer="```json\n" + LPR_ANSWER + "\n```"))
    assert p.bbox == (10.0, 20.0, 30.5, 40.0)
    p = parse(lpr(answer="\n```\n[{\"bbox_2d\": [1, 2, 3, 4], \"point_2d\": [2, 3]}]\n```\n"))
    assert p.objects == (ParsedObject((1.0, 2.0, 3.0, 4.0), (2.0, 3.0)),)
    assert strip_fence("```json\n{}\n``` trailing") == "```json\n{}\n``` trailing"  # not a whole fence
    assert strip_fence("  {} ") == "{}"


def test_fence_is_recorded_and_a_per_profile_choice():
    fenced = parse(lpr(answer="\n```json\n" + LPR_ANSWER + "\n```\n"))
    assert fenced.fenced and fenced.answer_raw.startswith("\n```json")
    assert answer_value(fenced) == answer_value(fenced, strip_fence=True) == json.loads(LPR_ANSWER)
    assert answer_value(fenced, strip_fence=False) is None        # json.loads("```json ...") fails
    plain = parse(lpr(answer="  " + LPR_ANSWER + "\n"))
    assert not plain.fenced and answer_value(plain, strip_fence=False) == json.loads(LPR_ANSWER)
    assert not parse("<think>a</think>").fenced and answer_value(parse("x"), strip_fence=False) is None


@pytest.mark.parametrize("value, expected", [
    ([1, 2, 3, 4], (1, 2, 3, 4)),
    ([True, 0, 1.5, -2], (True, 0, 1.5, -2)),         # Python numbers, kept as they are
    ([float("nan"), 0, 1, 1], "nan"),                  # NaN and inf pass: comparisons decide
    ([0, 0, 10 ** 400, 1], (0, 0, 10 ** 400, 1)),     # huge ints stay exact
    (["1", 2, 3, 4], None), ([None, 2, 3, 4], None), ([[1], 2, 3, 4], None),
    ([1, 2, 3], None), ([1, 2, 3, 4, 5], None), ("abcd", None), ({"a": 1, "b": 2, "c": 3, "d": 4}, None),
])
def test_loose_box(value, expected):
    got = loose_box(value)
    if expected == "nan":
        assert math.isnan(got[0]) and got[1:] == (0, 1, 1)
    else:
        assert got == expected


@pytest.mark.parametrize("value, truncate, expected", [
    ([12.9, 5], True, (12, 5)), (["12", " 7 "], True, (12, 7)), ([1, 2, 3], True, (1, 2)),
    ("12", True, (1, 2)),                              # a string indexes into characters
    ([True, 0], True, (1, 0)),
    ([float("nan"), 1], True, None), ([float("inf"), 1], True, None), (["1.5", 1], True, None),
    ([1], True, None), (None, True, None), (5, True, None), ({"0": 1, "1": 2}, True, None),
    (["1.5", 0.25], False, (1.5, 0.25)),               # float() instead of int()
])
def test_loose_point(value, truncate, expected):
    assert loose_point(value, truncate) == expected


def test_non_finite_and_wrong_types_give_none():
    # NaN / Infinity are accepted by json.loads; they must not reach the rewards.
    p = parse(lpr(answer='{"bbox": [NaN, 1, 2, 3], "points_1": [Infinity, 1], "points_2": [1e999, 2], "response": 5}'))
    assert isinstance(p.answer, dict)
    assert p.bbox is None and p.points_1 is None and p.points_2 is None and p.response is None
    # 10**400 parses as an int but does not fit a float.
    p = parse(lpr(answer='{"bbox": [1' + "0" * 400 + ', 1, 2, 3]}'))
    assert isinstance(p.answer, dict) and p.bbox is None
    # Booleans, strings, wrong lengths, nested lists.
    assert to_box([True, 1, 2, 3]) is None
    assert to_box(["1", 1, 2, 3]) is None
    assert to_box([1, 2, 3]) is None and to_box([1, 2, 3, 4, 5]) is None
    assert to_box([[1], 2, 3, 4]) is None
    assert to_box({"x": 1}) is None and to_box("1,2,3,4") is None
    assert to_box((1, 2, 3, 4)) == (1.0, 2.0, 3.0, 4.0)
    assert to_point([-1, 2.5]) == (-1.0, 2.5)
    assert to_point([1, float("nan")]) is None


def test_hostile_json_parses_to_none():
    for answer in ("[" * 100_000 + "]" * 100_000,      # RecursionError in the decoder
                   "9" * 5000,                         # beyond int_max_str_digits
                   '{"bbox": [1, 2, 3, 4]',            # truncated
                   "'single quotes'", "42", '"a string"', "null", ""):
        p = parse(lpr(answer=answer))
        assert p.answer is None and p.bbox is None and p.objects == ()


def test_non_string_input_parses_as_empty():
    for value in (None, 123, 4.5, ["<think>"], {"a": 1}, object()):
        assert parse(value) == Parsed()
    assert parse(b"<think>a</think><answer>[]</answer>").think_ok
    assert parse(b"\xff\xfe<think>").think_ok is False


def test_multi_object_list_is_typed_and_cut_to_120():
    items = [{"bbox_2d": [i, i, i + 5, i + 5], "point_2d": [i + 1, i + 2]} for i in range(130)]
    p = parse(lpr(answer=json.dumps(items)))
    assert len(p.answer) == 130 and len(p.objects) == MAX_OBJECTS == 120
    assert p.objects[7] == ParsedObject((7.0, 7.0, 12.0, 12.0), (8.0, 9.0))
    mixed = [{"bbox_2d": [1, 2, 3, 4]}, "junk", {"point_2d": [1, 2], "bbox_2d": [1, 2, "3", 4]}]
    p = parse(lpr(answer=json.dumps(mixed)))
    assert p.objects == (ParsedObject((1.0, 2.0, 3.0, 4.0), None), ParsedObject(None, None),
                         ParsedObject(None, (1.0, 2.0)))
    assert p.bbox is None  # dict-only fields stay empty for a list answer


def test_first_flat_object_follows_the_authors_extraction():
    assert first_flat_object('x {"a": 1} {"b": 2}') == {"a": 1}
    assert first_flat_object('{} {"a": 1}') == {"a": 1}        # "{}" has no content, skipped
    assert first_flat_object('{x} {"a": 1}') is None            # the first match is not JSON
    assert first_flat_object('{"a": {"b": 1}}') is None         # nesting breaks the flat match
    assert first_flat_object('{{"a": 1}') is None
    assert first_flat_object("{" * 50_000) is None              # linear, no '}' at all
    assert first_flat_object('[1, 2]') is None
    # It reads the think block too: the code's reward took JSON from wherever it came first.
    p = parse('<think>{"bbox": [1, 2, 3, 4]}</think><answer>{"bbox": [5, 6, 7, 8]}</answer>')
    assert p.first_object == {"bbox": [1, 2, 3, 4]} and p.bbox == (5.0, 6.0, 7.0, 8.0)


# ---------------------------------------------------------------- fuzzing

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
_json_value = st.recursive(_json_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=6),
    st.dictionaries(st.sampled_from(["bbox", "points_1", "points_2", "response", "region",
                                     "bbox_2d", "point_2d", "x"]), kids, max_size=5)),
    max_leaves=25)
_fragments = st.lists(st.one_of(
    st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "<look>", "</look>",
                     "```json", "```", "{", "}", "[", "]", '"', ",", ".", " ", "\n", "NaN", "1e999"]),
    st.text(max_size=12)), max_size=30)


def _check(p: Parsed) -> None:
    assert isinstance(p, Parsed)
    for box in [p.bbox] + [o.bbox for o in p.objects]:
        assert box is None or (len(box) == 4 and all(math.isfinite(v) for v in box))
    for pt in [p.points_1, p.points_2] + [o.point for o in p.objects]:
        assert pt is None or (len(pt) == 2 and all(math.isfinite(v) for v in pt))
    assert p.response is None or isinstance(p.response, str)
    assert p.answer is None or isinstance(p.answer, (dict, list))
    assert len(p.objects) <= MAX_OBJECTS


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_random_text_never_raises(text):
    _check(parse(text))


@settings(max_examples=300, deadline=None)
@given(_fragments)
def test_fuzz_tag_soup_never_raises(parts):
    _check(parse("".join(parts)))


@settings(max_examples=300, deadline=None)
@given(_json_value, st.booleans())
def test_fuzz_hostile_json_never_raises(value, fenced):
    body = json.dumps(value, allow_nan=True)
    if fenced:
        body = "```json\n" + body + "\n```"
    p = parse(f"<think>t</think><answer>{body}</answer>")
    _check(p)
    assert p.think_ok

"""Per-block text clean-up: repetition truncation, LaTeX delimiters, tables, spotting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.recognition.postprocess import (
    min_length_to_truncate,
    normalize_latex_delimiters,
    parse_spotting,
    postprocess_block_text,
    spotting_upscale,
    truncate_repetition,
)

# ---------------------------------------------------------------- repetition


def test_phrase_loop_at_the_end_of_a_line_is_cut() -> None:
    text = "The results are shown below. " + "and the value is " * 20
    assert truncate_repetition(text) == "The results are shown below."


def test_phrase_loop_must_dominate_the_line() -> None:
    text = "x" * 200 + "abcdefgh" * 5
    assert truncate_repetition(text) == text


def test_a_line_made_of_one_unit_becomes_the_unit() -> None:
    assert truncate_repetition("ab" * 40) == "ab"


def test_few_repeats_of_a_unit_are_kept() -> None:
    text = "0123456789" * 6
    assert truncate_repetition(text) == text


def test_repeated_lines_collapse_to_one() -> None:
    text = "\n".join(["same line"] * 12 + ["other"])
    assert truncate_repetition(text) == "same line"


def test_varied_lines_are_kept() -> None:
    text = "\n".join(["same line"] * 7 + [f"line {k}" for k in range(5)])
    assert truncate_repetition(text) == text


def test_short_texts_are_never_touched() -> None:
    assert truncate_repetition("ha" * 20) == "ha" * 20  # 40 chars < 50


def test_tables_need_far_longer_text() -> None:
    assert min_length_to_truncate("table") == 5000 and min_length_to_truncate("text") == 50
    cells = "<fcel>1" * 600  # 4200 characters of legitimate repetition
    assert postprocess_block_text("table", cells).startswith("<table>")
    assert postprocess_block_text("table", cells).count("<td>") == 600


REPETITIVE = st.one_of(
    st.tuples(st.text("abc .", max_size=60), st.text("xyz ", min_size=1, max_size=12), st.integers(0, 40)).map(
        lambda t: t[0] + t[1] * t[2]
    ),
    st.lists(st.sampled_from(["row", "row", "row", "other", ""]), max_size=30).map("\n".join),
    st.text("ab\n ", max_size=150),
)


@pytest.fixture(scope="module")
def paddlex_uilts():
    return pytest.importorskip("paddlex.inference.pipelines.paddleocr_vl.uilts")


@settings(max_examples=300, deadline=None)
@given(REPETITIVE, st.sampled_from([0, 50, 5000]))
def test_truncation_matches_paddlex(paddlex_uilts, text: str, min_length: int) -> None:
    expected = paddlex_uilts.truncate_repetitive_content(text, min_count=min_length)
    assert truncate_repetition(text, min_length=min_length) == expected


# ---------------------------------------------------------------- LaTeX


def test_inline_and_display_delimiters() -> None:
    assert normalize_latex_delimiters(r"area \(\pi r^2\) and $x$", "text") == r"area  $ \pi r^2 $ and x"
    assert normalize_latex_delimiters(r"\[E=mc^2\]", "display_formula") == r" $$ E=mc^2 $$ "


def test_doubled_brackets_count_once() -> None:
    assert normalize_latex_delimiters(r"\[\[a\]\]", "display_formula") == " $$ a $$ "


def test_text_without_latex_delimiters_keeps_its_dollars() -> None:
    assert normalize_latex_delimiters("costs $5 and $6", "text") == "costs $5 and $6"
    assert normalize_latex_delimiters(r"only \( opening", "text") == r"only \( opening"


def test_formula_numbers_lose_their_dollars() -> None:
    assert normalize_latex_delimiters(r"\((1)\)", "formula_number") == "  (1) "


def test_table_output_is_converted_and_malformed_kept() -> None:
    assert postprocess_block_text("table", "<fcel>a<nl>") == "<table><tr><td>a</td></tr></table>"
    assert postprocess_block_text("table", "not a table") == "not a table"
    assert postprocess_block_text("text", "<fcel>a<nl>") == "<fcel>a<nl>"
    assert postprocess_block_text("text", None) == ""


@pytest.mark.parametrize(
    ("label", "text"),
    [
        ("text", r"a \(x\) b"),
        ("formula_number", r"\((2)\)"),
        ("display_formula", r"\[\[a\]\] $b$"),
        ("table", "<fcel>\\(x\\)<fcel>b<nl><fcel>c<ecel><nl>"),
        ("text", "plain"),
    ],
)
def test_block_postprocessing_matches_paddlex_steps(paddlex_uilts, label: str, text: str) -> None:
    expected = paddlex_uilts.truncate_repetitive_content(text, min_count=5000 if label == "table" else 50)
    if ("\\(" in expected and "\\)" in expected) or ("\\[" in expected and "\\]" in expected):
        expected = (
            expected.replace("$", "").replace("\\(", " $ ").replace("\\)", " $").replace("\\[\\[", "\\[")
            .replace("\\]\\]", "\\]").replace("\\[", " $$ ").replace("\\]", " $$ ")
        )  # fmt: skip
        if label == "formula_number":
            expected = expected.replace("$", "")
    if label == "table":
        expected = paddlex_uilts.convert_otsl_to_html(expected) or expected
    assert postprocess_block_text(label, text) == expected


# ---------------------------------------------------------------- spotting


def test_spotting_pairs_texts_with_locations() -> None:
    answer = (
        "<|TEXT_START|> Hello <|TEXT_END|><|LOC_BEGIN|>"
        + "".join(f"<|LOC_{v}|>" for v in (0, 0, 500, 0, 500, 100, 0, 100))
        + "<|LOC_END|>"
    )
    text, res = parse_spotting(answer, 200, 1000)
    assert text == "Hello"
    assert res == {"rec_polys": [[(0.0, 0.0), (100.0, 0.0), (100.0, 100.0), (0.0, 100.0)]], "rec_texts": ["Hello"]}


def test_spotting_fallback_reads_bare_location_runs() -> None:
    answer = "one" + "<|LOC_10|>" * 8 + "two" + "<|LOC_20|>" * 8 + "tail"
    text, res = parse_spotting(answer, 1000, 1000)
    assert text == "one\n\ntwo"
    assert res["rec_polys"][1][0] == (20.0, 20.0)


def test_spotting_upscale_doubles_small_crops_only() -> None:
    assert spotting_upscale(800, 1200) == (1600, 2400)
    assert spotting_upscale(1500, 100) == (1500, 100)


@pytest.mark.parametrize(
    "answer",
    [
        "<|TEXT_START|>a<|TEXT_END|><|LOC_BEGIN|>" + "<|LOC_7|>" * 8 + "<|LOC_END|>",
        "<|TEXT_START|>a<|TEXT_END|><|LOC_BEGIN|>" + "<|LOC_7|>" * 3 + "<|LOC_END|>x" + "<|LOC_9|>" * 9,
        "nothing",
    ],
)
def test_spotting_matches_paddlex(paddlex_uilts, answer: str) -> None:
    text, res = parse_spotting(answer, 640, 480)
    expected_text, expected = paddlex_uilts.post_process_for_spotting(answer, 640, 480)
    assert text == expected_text
    assert res["rec_texts"] == expected["rec_texts"]
    assert [list(p) for p in res["rec_polys"]] == [list(p) for p in expected["rec_polys"]]

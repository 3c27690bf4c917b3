"""The bold-sections utility: one definition for building data and for evaluating (paper Experiment 1)."""

import pytest

from deltalearn.recipe import ConfigError
from deltalearn.utility import (bold_sections, bold_spans, distinct_headers, exact_answer, final_answer,
                                get_utility, header_lines)


@pytest.mark.parametrize("text, sections", [
    ("**Header**", 1),
    ("**Header**:", 1),                      # a colon after the span
    ("**Header:**", 1),                      # ... or inside it
    ("## **Header**", 1),                    # heading marks before it
    ("- **Header**", 1),                     # a list marker before it
    ("12. **Header**  ", 1),                 # numbered, trailing spaces
    ("__Header__", 1),                       # the underscore form of bold
    ("  **Indented header**\r", 1),
    ("**A**", 1),                            # one character is enough
    ("Use **salt** in the water.", 0),       # bold word inside a sentence
    ("**Prepare**: wash the pan first.", 0),  # bold lead-in with text on the same line (SmolLM2's list style)
    ("1. **Prepare** the pan", 0),
    ("**Unclosed header", 0),                # unclosed **
    ("Unclosed ** in the middle", 0),
    ("****", 0),                             # empty bold
    ("** spaced **", 0),                     # not bold in Markdown: space inside the markers
    ("**two** **spans**", 0),                # two spans on one line are not one header
    ("***bold italic***", 0),
    ("# Plain heading", 0),                  # a Markdown heading without bold is not a bold header
    ("**mixed__", 0),
    ("", 0),
])
def test_single_line_cases(text, sections):
    assert bold_sections(text) == sections


def test_empty_and_missing_text_score_zero():
    for fn in (bold_sections, bold_spans, distinct_headers):
        assert fn("") == 0.0
        assert fn(None) == 0.0
        assert fn("\n\n   \n") == 0.0


def test_header_lines_versus_bold_words_in_a_real_answer():
    answer = (
        "**Choosing a spot**\n"
        "Pick a place with **six hours** of sun.\n\n"
        "**Soil**:\n"
        "1. **Mix compost**: one part compost to two parts soil.\n"
        "2. Water __gently__ every morning.\n\n"
        "## __Planting__\n"
        "Sow seeds **1 cm** deep. The last line is cut off mid **bo"
    )
    assert header_lines(answer) == ["Choosing a spot", "Soil", "Planting"]
    assert bold_sections(answer) == 3
    # spans: 3 headers + "six hours" + "Mix compost" + "gently" + "1 cm"; the unclosed one is not a span
    assert bold_spans(answer) == 7


def test_distinct_headers_sees_repetition_loops():
    loop = "\n".join(["**Immediately**", "Do it now.", "**immediately**", "Do it now.", "**Later**", "Rest."])
    assert bold_sections(loop) == 3
    assert distinct_headers(loop) == 2


def test_bold_spans_counts_every_closed_span():
    assert bold_spans("a **b** c __d__ e **f** g") == 3
    assert bold_spans("** not ** and **") == 0
    assert bold_spans("**" * 40) == 0  # "emit ** everywhere" with nothing between is not bold text


def test_utilities_are_floats_and_named():
    assert isinstance(bold_sections("**x**"), float)
    assert get_utility("bold_sections") is bold_sections
    with pytest.raises(ConfigError, match="did you mean 'bold_sections'"):
        get_utility("bold_section")


def test_exact_answer():
    assert final_answer("6+9=15,15+5=20,Answer:20") == "20"
    assert final_answer("so it is 12, or maybe 13") == "13"
    assert exact_answer("Answer: 20", "20") == 1.0
    assert exact_answer("Answer: 21", "20") == 0.0
    assert exact_answer("no number", "20") == 0.0
    with pytest.raises(ValueError):
        exact_answer("Answer: 1")


def test_item_accuracy_grades_each_item_at_its_position():
    from deltalearn.utility import item_accuracy, item_scores

    ref = "618,093,557,402"
    assert item_accuracy(ref, ref) == 1.0
    assert item_scores("618,094,557,402", ref) == [1, 0, 1, 1]
    assert item_accuracy("618,094,557,402", ref) == 0.75
    assert item_scores("093,557,402", ref) == [0, 0, 0, 0]  # a skipped item shifts the rest: position counts
    assert item_accuracy("618,093", ref) == 0.5  # missing items are wrong
    assert item_accuracy("618,093,557,402,111,222", ref) == 1.0  # extra items earn nothing, cost nothing
    assert item_accuracy("", ref) == 0.0
    assert get_utility("item_accuracy") is item_accuracy
    with pytest.raises(ValueError):
        item_accuracy("618")


def test_sentences_count_as_the_sentence_corruptions_split():
    import random

    from deltalearn.corruptions import drop_sentence
    from deltalearn.utility import sentences

    text = "**Plan**\nBuy bread. Slice it! Toast it?\n\n- serve warm"
    assert sentences(text) == 5.0
    cut, _ = drop_sentence(text, 1, random.Random(0), {})
    assert sentences(cut) == 4.0  # one dropped sentence is one fewer
    assert sentences("") == 0.0
    assert get_utility("sentences") is sentences


def test_repeated_ngrams_is_the_share_of_repeated_word_4grams():
    from deltalearn.utility import repeated_ngrams

    assert repeated_ngrams("the cat sat on the mat and slept") == 0.0
    assert repeated_ngrams("a b c d") == 0.0 and repeated_ngrams("") == 0.0  # one 4-gram: nothing can repeat
    loop = "I'm not a helpful AI. " * 10
    assert repeated_ngrams(loop) > 0.85  # 47 4-grams, 5 distinct
    assert repeated_ngrams("a b c d a b c d") == pytest.approx(0.2)  # 5 grams, (a b c d) once again
    assert repeated_ngrams("A b c d a B c d") == pytest.approx(0.2)  # case-insensitive
    assert get_utility("repeated_ngrams") is repeated_ngrams

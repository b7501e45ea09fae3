"""Constraint demonstrations: each rewrite makes a reference answer pass IFEval's checker for its
type, and what cannot be rewritten faithfully is dropped, not forced."""

import pytest

from alignflow.data.demonstrations import demonstrate, sentences
from alignflow.verifiable import SUPPORTED, make_constraint, verify

REFERENCE = ("Paris is the capital of France. It lies on the Seine, in the north of the country. "
             "Millions of tourists visit it every year! Its museums are famous.")
INSTRUCTION = "Tell me about Paris."

# Every type with a rewrite, with the parameters it is tested under.
CASES = {
    "punctuation:no_comma": {},
    "change_case:english_lowercase": {},
    "change_case:english_capital": {},
    "startend:end_checker": {"end_phrase": "Any other questions?"},
    "startend:quotation": {},
    "detectable_format:title": {},
    "detectable_format:number_bullet_lists": {"num_bullets": 3},
    "detectable_format:number_highlighted_sections": {"num_highlights": 2},
    "detectable_format:json_format": {},
    "detectable_content:postscript": {"postscript_marker": "P.S."},
    "detectable_content:number_placeholders": {"num_placeholders": 2},
    "length_constraints:number_words": {"num_words": 15, "relation": "less than"},
    "length_constraints:number_sentences": {"num_sentences": 2, "relation": "less than"},
    "length_constraints:number_paragraphs": {"num_paragraphs": 2},
    "keywords:forbidden_words": {"forbidden_words": ["tourists", "seine"]},
}


@pytest.mark.parametrize("type_id", sorted(CASES))
def test_each_rewrite_passes_its_checker_and_the_original_did_not(type_id):
    constraints = [{"id": type_id, "kwargs": CASES[type_id]}]
    assert not verify(REFERENCE, constraints, INSTRUCTION).all_strict  # the rewrite is what makes it pass
    demo = demonstrate(REFERENCE, constraints, INSTRUCTION)
    assert demo is not None and verify(demo, constraints, INSTRUCTION).all_strict
    assert "Paris" in demo or "paris" in demo or "PARIS" in demo  # still the same answer


def test_two_constraints_compose_in_a_safe_order():
    constraints = [{"id": "change_case:english_lowercase", "kwargs": {}},
                   {"id": "startend:end_checker", "kwargs": {"end_phrase": "Is there anything else I can help with?"}}]
    demo = demonstrate(REFERENCE, constraints, INSTRUCTION)
    # the end phrase is added first and lower-cased with the rest (IFEval's end check ignores case)
    assert demo.endswith("\n\nis there anything else i can help with?") and demo == demo.lower()
    assert verify(demo, constraints, INSTRUCTION).all_strict
    ok = demonstrate(REFERENCE, [{"id": "punctuation:no_comma", "kwargs": {}},
                                 {"id": "startend:quotation", "kwargs": {}}], INSTRUCTION)
    assert ok == '"Paris is the capital of France. It lies on the Seine in the north of the country. ' \
                 'Millions of tourists visit it every year! Its museums are famous."'


def test_what_cannot_be_rewritten_is_dropped():
    assert demonstrate("Yes.", [{"id": "detectable_format:number_bullet_lists", "kwargs": {"num_bullets": 3}}],
                       INSTRUCTION) is None  # one sentence cannot make three bullets
    existence = [{"id": "keywords:existence", "kwargs": {"keywords": ["harbour"]}}]
    assert demonstrate(REFERENCE, existence, INSTRUCTION) is None  # no faithful way to add a word
    assert demonstrate("The harbour is busy.", existence, INSTRUCTION) == "The harbour is busy."  # already follows


def test_every_supported_type_either_demonstrates_or_is_dropped():
    for type_id in SUPPORTED:
        c = make_constraint(type_id, seed=5)
        demo = demonstrate(REFERENCE, [c.to_json()], INSTRUCTION)
        assert demo is None or verify(demo, [c.to_json()], INSTRUCTION).all_strict, type_id


def test_sentences_drop_list_markers():
    assert sentences("Intro. Two!\n- first item\n2. second") == ["Intro.", "Two!", "first item", "second"]

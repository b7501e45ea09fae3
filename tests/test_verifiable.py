"""Verifiable constraints: IFEval's checkers wired per type, deterministic drawing, no conflicts."""

from __future__ import annotations

import json

import pytest

from alignflow import verifiable as V

LOWER = "the sun is a star at the centre of our solar system and it gives us light every day"
# type -> (kwargs, a response that follows it, one that does not)
CASES = {
    "punctuation:no_comma": ({}, "Red and blue are colours.", "Red, blue and green are colours."),
    "change_case:english_lowercase": ({}, LOWER, LOWER.capitalize()),
    "change_case:english_capital": ({}, LOWER.upper(), LOWER),
    "startend:end_checker": ({"end_phrase": "Any other questions?"}, "Paris is the capital. Any other questions?",
                             "Any other questions? Paris is the capital."),
    "startend:quotation": ({}, '"Paris is the capital of France."', "Paris is the capital of France."),
    "detectable_format:title": ({}, "<<Capitals>>\nParis is the capital of France.", "Paris is the capital."),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, "* red\n* blue", "* red\n* blue\n* green"),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 2}, "*first part* and *second part*",
                                                      "*only one* highlighted"),
    "detectable_format:json_format": ({}, '{"capital": "Paris"}', "The capital is Paris."),
    "detectable_content:postscript": ({"postscript_marker": "P.S."}, "Hello there.\nP.S. See you soon.",
                                      "Hello there. See you soon."),
    "detectable_content:number_placeholders": ({"num_placeholders": 2}, "Send it to [name] at [address].",
                                               "Send it to [name]."),
    "length_constraints:number_words": ({"num_words": 5, "relation": "less than"}, "Paris is lovely.",
                                        "Paris is a lovely city in the north of France."),
    "length_constraints:number_sentences": ({"num_sentences": 3, "relation": "at least"},
                                            "It rains. It pours. It stops.", "It rains. It stops."),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2}, "First part.\n***\nSecond part.",
                                             "Only one paragraph here."),
    "keywords:existence": ({"keywords": ["river", "bridge"]}, "A bridge over the river.", "A bridge over the road."),
    "keywords:forbidden_words": ({"forbidden_words": ["river"]}, "A bridge over the road.", "A bridge over the river."),
    "keywords:frequency": ({"keyword": "cat", "frequency": 2, "relation": "at least"}, "A cat saw a cat.",
                           "A cat saw a dog."),
    "keywords:letter_frequency": ({"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zebras buzz.",
                                  "Horses neigh."),
}


def test_every_supported_type_has_a_case():
    assert set(CASES) == set(V.SUPPORTED)


@pytest.mark.parametrize("type_id", sorted(CASES))
def test_checker_accepts_the_good_and_rejects_the_bad_response(type_id):
    kwargs, good, bad = CASES[type_id]
    constraint = [{"id": type_id, "kwargs": kwargs}]
    assert V.verify(good, constraint).all_strict, good
    verdict = V.verify(bad, constraint)
    assert not verdict.all_strict and verdict.ids == (type_id,), bad


def test_loose_forgives_a_preamble_line_strict_does_not():
    constraint = [{"id": "startend:quotation", "kwargs": {}}]
    verdict = V.verify('Sure, here it is:\n"Paris is the capital."', constraint)
    assert (verdict.strict, verdict.loose) == ((False,), (True,))


def test_an_empty_response_follows_nothing():
    verdict = V.verify("", [{"id": "punctuation:no_comma", "kwargs": {}}, {"id": "keywords:forbidden_words",
                                                                          "kwargs": {"forbidden_words": ["x"]}}])
    assert verdict.strict == (False, False) and verdict.fraction_strict == 0.0


def test_unknown_ids_are_refused_by_name():
    with pytest.raises(V.UnknownConstraintError, match="no_such:thing"):
        V.verify("text", [{"id": "no_such:thing", "kwargs": {}}])
    with pytest.raises(V.UnknownConstraintError, match="language:response_language"):
        V.make_constraint("language:response_language", 1)


def test_drawing_is_deterministic_fits_the_budget_and_avoids_conflicts():
    a = [c.to_json() for c in V.pick_constraints(V.SUPPORTED, 3, seed=11)]
    assert a == [c.to_json() for c in V.pick_constraints(V.SUPPORTED, 3, seed=11)]
    assert len({c["id"] for c in a}) == 3
    json.dumps(a)  # stored in the data as JSON
    for seed in range(40):
        words = V.make_constraint("length_constraints:number_words", seed).kwargs["num_words"]
        assert 15 <= words <= 60  # an answer of a few hundred tokens can meet it either way
        picked = V.pick_constraints(V.SUPPORTED, 2, seed)
        if any(c.id == "detectable_format:json_format" for c in picked):
            # IFEval's conflict table: JSON output combines only with keyword constraints
            assert all(c.id.startswith("keywords:") or c.id.endswith("json_format") for c in picked)
    # the description is IFEval's text for the drawn parameters
    end = V.make_constraint("startend:end_checker", 3)
    assert end.kwargs["end_phrase"] in end.description

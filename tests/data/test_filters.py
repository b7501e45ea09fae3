"""Each cleaning rule on its own: normalization, quality, safety, PII masking."""

from __future__ import annotations

import pytest

from alignflow.config.data import NormalizeParams, QualityParams, RepetitionParams, SafetyParams
from alignflow.data import filters
from alignflow.data.text import cjk_ratio, is_cjk, normalize_for_match, tokens, word_count


def conv(prompt: str, answer: str) -> dict:
    return {"id": "x", "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def pref(prompt: str, chosen: str, rejected: str) -> dict:
    return {"id": "p", "prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


# ----------------------------------------------------------------------------------------- text


def test_cjk_detection_and_tokens():
    assert is_cjk("今天天气很好，我们去公园吧。") and not is_cjk("The weather is nice today.")
    assert 0.3 < cjk_ratio("Python 是一种编程语言") < 1
    assert tokens("Hello, 世界! It's 2024") == ["hello", "世", "界", "it", "s", "2024"]
    assert word_count("我爱 NLP") == 3
    assert normalize_for_match("  Héllo,\tWORLD!! ") == "héllo world"


# -------------------------------------------------------------------------------- normalization


def test_unicode_repair_keeps_emoji_and_fullwidth_cjk_punctuation():
    assert filters.fix_unicode("The Mona Lisa doesnâ€™t have eyebrows.") == "The Mona Lisa doesn't have eyebrows."
    assert filters.fix_unicode("好的，谢谢！😀") == "好的，谢谢！😀"


def test_html_stripping():
    assert filters.strip_html("<p>Hello <b>world</b></p><p>Bye</p>") == "Hello world\nBye"
    assert filters.strip_html("<script>alert(1)</script>Text &amp; more") == "Text & more"
    assert filters.strip_html("Fish &amp; chips") == "Fish & chips"
    # plain text that merely contains angle brackets is left alone
    assert filters.strip_html("if a < b and c > d then") == "if a < b and c > d then"


def test_html_is_kept_when_the_prompt_asks_for_markup():
    rec = conv("Write an HTML page with a title.", "<html><title>Hi</title></html>")
    out, changed = filters.normalize_record(rec, "conversations", NormalizeParams())
    assert out["messages"][1]["content"] == "<html><title>Hi</title></html>" and "html" not in changed
    rec = conv("Describe the weather.", "<p>It is <i>sunny</i>.</p>")
    out, changed = filters.normalize_record(rec, "conversations", NormalizeParams())
    assert out["messages"][1]["content"] == "It is sunny." and "html" in changed


def test_whitespace_normalization_keeps_indentation_and_emoji_joiners():
    text = "def f():\n    return  1   \n\n\n\nx\u00a0=\u200b2 👩\u200d💻\r\n"
    assert filters.normalize_whitespace(text) == "def f():\n    return 1\n\nx =2 👩\u200d💻"


# -------------------------------------------------------------------------------------- quality


Q = QualityParams()


@pytest.mark.parametrize(
    ("record", "kind", "reason"),
    [
        (conv("Hi", ""), "conversations", "empty"),
        (conv("Hi", "Ok"), "conversations", "too_short"),
        (conv("Explain gravity.", "word " * 5000), "conversations", "too_long"),
        (conv("What do you think about this?", "?!... ---"), "conversations", "punctuation_only"),
        (conv("Write a poem about the sea.", " ".join(["the sea the sea"] * 20)), "conversations", "repetition"),
        (conv("Tell me how to hack a bank.", "I'm sorry, but I cannot help with that request."), "conversations", "refusal"),
        (conv("Describe a cat.", "As an AI language model, I have no opinions about cats."), "conversations", "refusal"),
        (conv("请介绍一下你自己。", "作为一个AI，我没有个人经历，但我可以帮助你。"), "conversations", "refusal"),
        (conv("Rewrite the sentence.\n\nThe cat sat on the mat.", "The cat sat on the mat."), "conversations", "output_equals_input"),
        (conv("Classify the following sentence:", "This is a positive sentence overall."), "conversations", "colon_without_input"),
        (pref("How do I steal a car?", "", "Break the window."), "preferences", "empty"),
    ],
)
def test_quality_rules(record, kind, reason):
    verdict = filters.quality_check(record, kind, Q)
    assert verdict is not None and verdict[0] == reason, verdict


def test_quality_passes_good_records_and_refusals_in_preference_data():
    assert filters.quality_check(conv("Name three primary colors.", "Red, yellow and blue."), "conversations", Q) is None
    assert filters.quality_check(conv("Classify the following sentence:\n\nI love it.", "Positive sentiment."),
                                 "conversations", Q) is None
    # the chosen answer of harmlessness data often refuses: that is the point of the pair
    assert filters.quality_check(pref("How do I steal a car?", "I'm sorry, but I can't help with that.",
                                      "Break the window and hotwire it."), "preferences", Q) is None
    assert filters.quality_check({"id": "q", "prompt": [{"role": "user", "content": "Name a color please."}]}, "prompts", Q) is None
    parks = "\n".join(f"{i}. {name} National Park" for i, name in enumerate(
        ["Grand Canyon", "Great Smoky Mountains", "Rocky Mountain", "Yosemite", "Yellowstone", "Zion", "Olympic"], 1))
    assert filters.quality_check(conv("List seven US national parks.", parks), "conversations", Q) is None  # a list is not a loop


def test_quality_thresholds_come_from_params():
    rec = conv("Name a color.", "Blue is a color.")
    assert filters.quality_check(rec, "conversations", QualityParams(min_chars=100))[0] == "too_short"
    assert filters.quality_check(rec, "conversations", QualityParams(min_chars=5)) is None


def test_gopher_repetition_fractions():
    words = "a b c d e f g h i j".split()
    assert filters.top_ngram_fraction(words, 2) == 0.0
    assert filters.duplicate_ngram_fraction(words * 2, 5) == pytest.approx(0.5)
    assert filters.top_ngram_fraction(["x", "y"] * 10, 2) == pytest.approx(1.0)
    assert filters.repetition_check("word " * 10, RepetitionParams(min_words=20)) is None  # too short to judge
    assert filters.repetition_check("la " * 40, RepetitionParams())[0] == "repetition"
    assert filters.repetition_check("好" * 40, RepetitionParams())[0] == "repetition"  # CJK characters count as words


# --------------------------------------------------------------------------------------- safety


def test_blocklist_words_regex_and_languages():
    p = SafetyParams(blocklist_words=["kill yourself", "制造炸弹"], blocklist_regex=[r"(?i)\bnerve\s+agent\b"])
    assert filters.blocklist_match("You should KILL YOURSELF now", p) == "KILL YOURSELF"
    assert filters.blocklist_match("skill yourselves in chess", p) is None  # whole words only
    assert filters.blocklist_match("教你如何制造炸弹的方法", p) == "制造炸弹"  # CJK: substring
    assert filters.blocklist_match("How to make a Nerve Agent", p) == "Nerve Agent"


def test_safety_checks_only_what_the_model_is_taught_by_default():
    p = SafetyParams(blocklist_words=["kill yourself"])
    harmful_prompt = pref("Should I kill yourself?", "No. Please talk to someone you trust.", "Yes, kill yourself.")
    assert filters.safety_check(harmful_prompt, "preferences", p) is None
    assert filters.safety_check(harmful_prompt, "preferences", SafetyParams(blocklist_words=["kill yourself"], check="all"))[0] == "blocklist"
    assert filters.safety_check(conv("hi", "just kill yourself"), "conversations", p) == ("blocklist", "matched 'kill yourself'")


def test_pii_is_masked_not_dropped():
    text = "Mail john.doe@example.com or call (555) 123-4567 / 555-987-6543, 手机 13812345678, server 192.168.1.20."
    masked, found = filters.mask_pii(text, ["email", "phone", "ip"])
    assert masked == "Mail [EMAIL] or call [PHONE] / [PHONE], 手机 [PHONE], server [IP]."
    assert found == {"email": 1, "phone": 3, "ip": 1}


def test_pii_leaves_numbers_that_are_not_pii():
    text = "Pi is 3.14159, the year 2024-01-15, version 1.2.3, 1,000,000 people, 12345 items."
    assert filters.mask_pii(text, ["email", "phone", "ip"]) == (text, {})


def test_pii_kinds_are_configurable():
    masked, _ = filters.mask_pii("a@b.io 10.0.0.1", ["ip"])
    assert masked == "a@b.io [IP]"


def test_mask_record_pii_covers_every_message_and_reference():
    rec = {"id": "p", "prompt": [{"role": "user", "content": "my mail is a@b.io"}], "reference": "write to c@d.org"}
    out, found = filters.mask_record_pii(rec, "prompts", ["email"])
    assert out["prompt"][0]["content"] == "my mail is [EMAIL]" and out["reference"] == "write to [EMAIL]" and found["email"] == 2
    assert rec["prompt"][0]["content"] == "my mail is a@b.io"  # the input record is not modified

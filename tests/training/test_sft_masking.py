"""Assistant-only loss: exactly the assistant turns (and their end-of-turn token) are trained on."""

from __future__ import annotations

import pytest

from alignflow.models import CHATML_TEMPLATE, load_tokenizer
from alignflow.training.sft import TemplateError, build_dataset, tokenize_conversation

MULTI_TURN = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3? Explain."},
    {"role": "assistant", "content": "Six: three plus three — 6."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny:llama")  # the SmolLM2 tokenizer and chat template


def trained_text(tok, enc) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, bit in zip(enc["input_ids"], enc["assistant_masks"]):
        if bit:
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


@pytest.mark.parametrize("template", ["model", "chatml"])
def test_multi_turn_masks_every_assistant_turn_and_nothing_else(tokenizer, template):
    if template == "chatml":
        tokenizer = load_tokenizer("tiny:llama")
        tokenizer.chat_template = CHATML_TEMPLATE
    enc = tokenize_conversation(MULTI_TURN, tokenizer)
    assert len(enc["input_ids"]) == len(enc["assistant_masks"])
    # Tokenizing the rendered text gives the same ids as the template's own tokenization.
    assert enc["input_ids"] == tokenizer.apply_chat_template(MULTI_TURN, tokenize=True, return_dict=True)["input_ids"]
    runs = trained_text(tokenizer, enc)
    assert runs == ["4.<|im_end|>\n", "Six: three plus three — 6.<|im_end|>\n"]
    untrained = tokenizer.decode([t for t, b in zip(enc["input_ids"], enc["assistant_masks"]) if not b])
    for text in ("You are terse.", "What is 2+2?", "And 3+3? Explain.", "<|im_start|>assistant\n"):
        assert text in untrained


def test_single_turn_without_system_uses_the_templates_default_system(tokenizer):
    enc = tokenize_conversation(MULTI_TURN[1:3], tokenizer)
    assert trained_text(tokenizer, enc) == ["4.<|im_end|>\n"]
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(enc["input_ids"])


def test_loss_on_all_trains_every_token(tokenizer):
    enc = tokenize_conversation(MULTI_TURN, tokenizer, loss_on="all")
    assert all(enc["assistant_masks"])


def test_template_that_is_not_prefix_preserving_is_refused(tokenizer):
    tok = load_tokenizer("tiny:llama")
    # Renders the last message differently from earlier ones (like templates that strip reasoning).
    tok.chat_template = (
        "{% for m in messages %}{% if loop.last %}[LAST {{ m['role'] }}]{% else %}[{{ m['role'] }}]{% endif %}"
        "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    with pytest.raises(TemplateError, match="loss_on: all"):
        tokenize_conversation(MULTI_TURN, tok)


def test_trl_builds_labels_from_our_masks_with_and_without_packing(tokenizer, tmp_path):
    """What SFTTrainer actually trains on: labels are -100 outside the assistant turns."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from alignflow.models import resolve_spec

    records = [{"messages": MULTI_TURN, "_where": "t:1"}, {"messages": MULTI_TURN[1:3], "_where": "t:2"}]
    dataset = build_dataset(records, tokenizer, "assistant")
    model = AutoModelForCausalLM.from_pretrained(resolve_spec("tiny:llama"))
    for packing in (False, True):
        args = SFTConfig(output_dir=str(tmp_path / f"p{packing}"), max_length=512, packing=packing, report_to="none",
                         use_cpu=True, bf16=False, activation_checkpointing=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        rows = list(trainer.train_dataset)
        labelled = [t for row in rows for t in row["labels"] if t != -100]
        expected = [t for row in dataset for t, b in zip(row["input_ids"], row["assistant_masks"]) if b]
        assert sorted(labelled) == sorted(expected)
        batch = trainer.data_collator(rows)
        decoded = tokenizer.decode([t for t in batch["labels"].flatten().tolist() if t != -100])
        assert "What is 2+2?" not in decoded and "Six: three plus three" in decoded and "4.<|im_end|>" in decoded
        if packing:
            assert len(rows) == 1 and "position_ids" in batch  # two conversations in one block

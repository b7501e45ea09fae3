"""PPO rollouts (see ppo.py): the one forward of the shared base that gives log-probs and values,
sampling responses to a batch of prompts, and the `Rollout` a PPO step learns from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from alignflow.rlhf import core_algos as ca
from alignflow.rlhf.generation import encode_prompts, left_pad

Messages = list[dict]


def make_value_head(model) -> nn.Linear:
    """A scalar head on the policy's last hidden state, zero-initialised (initial values 0)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head = nn.Linear(config.hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head.to(next(model.parameters()).device)


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generate() used them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def policy_forward(model, value_head: nn.Module | None, input_ids, attention_mask, context_len: int, temperature: float):
    """(log-probs of the response tokens, values, logits) from one forward of the shared base."""
    response_len = input_ids.shape[1] - context_len
    # Logits only where a response token is predicted: the LM head over the vocabulary is the
    # costliest layer of a small model, and the prompt positions need none.
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_for(attention_mask),
                output_hidden_states=value_head is not None, use_cache=False, logits_to_keep=response_len + 1)
    logits = out.logits[:, -(response_len + 1) : -1].float() / temperature
    logprobs = ca.logprobs_from_logits(logits, input_ids[:, context_len:])
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, context_len - 1 : -1]
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float()
    return logprobs, values, logits


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, P + R) left-padded prompt, then the response
    attention_mask: torch.Tensor  # 1 on prompt tokens and response tokens up to and including EOS
    response_mask: torch.Tensor  # (B, R)
    context_len: int  # P
    contains_eos: torch.Tensor  # (B,) bool
    logprobs: torch.Tensor  # (B, R) old policy
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # (B,) reward model, after the missing-EOS penalty
    raw_scores: torch.Tensor
    entropy: torch.Tensor  # (B, R)
    responses: list[str]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def response_mask_from_ids(response_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask up to and including the first EOS, contains_eos) for generated ids (B, R)."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))
    seen_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # an EOS strictly earlier in the row
    return (~seen_before).long(), is_eos.any(-1)


class Sampled(NamedTuple):
    input_ids: torch.Tensor  # (B, P + R) left-padded prompt, then the response
    attention_mask: torch.Tensor
    response_ids: torch.Tensor  # (B, R)
    response_mask: torch.Tensor
    contains_eos: torch.Tensor
    context_len: int  # P


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list[Messages], *, max_prompt_length: int, max_new_tokens: int,
                     temperature: float, top_p: float, eos_ids: list[int], pad_id: int, seed: int, device) -> Sampled:
    """One sampled response per prompt (torch seeded with `seed` just before generating)."""
    encoded = encode_prompts(tokenizer, prompts, max_prompt_length)
    prompt_ids, prompt_mask = left_pad(encoded, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=max_new_tokens, do_sample=True,
        temperature=temperature, top_p=top_p, top_k=0, eos_token_id=eos_ids, pad_token_id=pad_id,
        use_cache=True,
    )
    context_len = prompt_ids.shape[1]
    response_ids = out[:, context_len:]
    response_mask, contains_eos = response_mask_from_ids(response_ids, eos_ids)
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    return Sampled(input_ids, attention_mask, response_ids, response_mask, contains_eos, context_len)


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor,
                     eos_ids: list[int]) -> tuple[list[str], list[list[int]]]:
    """(texts, token ids) of each response up to its EOS, EOS excluded: what the reward model scores."""
    texts, ids_list = [], []
    for row, mask in zip(response_ids, response_mask):
        ids = [t for t, m in zip(row.tolist(), mask.tolist()) if m and t not in eos_ids]
        ids_list.append(ids)
        texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts, ids_list

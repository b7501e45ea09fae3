"""The RLHF loop: sampling, judges and ranking, alignment methods (PPO, DPO, GRPO, RLOO, KTO)."""

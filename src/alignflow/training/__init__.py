"""Training stages on Ray Train: SFT (sft.py) and reward model (reward.py), the launcher they share
(launcher.py: Ray Train, checkpoints, resume), their HF trainer callbacks (callbacks.py), the PEFT
methods (peft_methods.py) and the shared helpers (common.py)."""

"""Training stages on Ray Train: SFT and reward model, and the launcher they share."""

"""Instruction-data synthesis (the synthesize stage): Self-Instruct and Evol-Instruct through a
teacher model. teacher.py: the cached, retrying, batched chat client; filters.py: the pure
filter and elimination rules; self_instruct.py, evol_instruct.py: the methods; stage.py: the
stage's `run`."""

"""One thin entry point per pipeline stage: `python -m components.<stage>`."""

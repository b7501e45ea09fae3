"""Model specs: embedded GGUF models, tiny random models, hub ids and local paths."""

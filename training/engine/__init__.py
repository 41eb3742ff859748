"""The ML engine: pure Python/torch/transformers/TRL/PEFT. Nothing in this package may import Django."""

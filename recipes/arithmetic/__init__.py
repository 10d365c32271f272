"""The CPU-sized recipe: tiny Qwen3 models learn multi-digit addition with RL."""

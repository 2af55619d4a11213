"""Reinforcement-learning pieces: completion parsing, reward terms and the GRPO engine."""

"""Orchestration: the loops that move batches between workers — ``ppo`` (token-reward PPO) and
``supervised`` (RM, FIGA and SFT training)."""

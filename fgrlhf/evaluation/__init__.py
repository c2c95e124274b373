"""Evaluation of policies: judges (gold, Claude), win rate vs reference outputs, gold-reward evaluation."""

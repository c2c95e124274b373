"""PPO with token-level rewards on Ray: ``config`` (the typed config and run spec), ``inputs`` (prompts, gold
prefixes, the tiny smoke RM), ``batch`` (the step's typed batch), ``cluster`` (actor groups, placement, the
weight push, restarts), ``trainer`` (the loop, one method per phase; checkpoints) and ``metrics``."""

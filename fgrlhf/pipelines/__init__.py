"""Staged, resumable pipelines that chain ``fgrlhf`` commands: ``stages`` (the runner), ``demo`` (the main job)."""

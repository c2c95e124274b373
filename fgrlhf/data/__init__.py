"""Data: validated loading of prompts, preference pairs and edit records (``loading``)."""

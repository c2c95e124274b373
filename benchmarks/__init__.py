"""The project's benchmarks: ``python -m benchmarks.NAME`` from the checkout, or ``python benchmarks/NAME.py``."""

"""FIGA (arXiv 2311.04072): fine-grained quality-aware SFT on initial/revised response pairs.

``data`` builds the pairs and their token masks, ``task`` is the loss as a task of the supervised trainer,
``train`` is the ``fgrlhf figa`` command.
"""

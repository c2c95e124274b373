"""Token alignment of an original response and its minimal edit (pure functions, no model).

A minimal Levenshtein edit script over token ids (rapidfuzz) splits each side into unchanged positions
U0 and changed positions U1:
- original side: deleted and substituted tokens (what the edit removed: FIGA's negative tokens);
- edited side: inserted and substituted tokens (what the edit added: FIGA's positive tokens).
The token-level RM loss (Eq. 4 of 2406.02756) sums rewards over U1 of each side.

Cost: rapidfuzz trims the common prefix and suffix and aligns the rest bit-parallel, O(n·m/64), which for
two 200k-token sides edited at both ends is a minute. Above ``FULL_ALIGNMENT_CELLS`` the alignment is
banded around the actual distance d instead, O((n + m)·d/64): near-linear for minimal edits. The band can
pick another of several equally minimal scripts, so it is used only there and smaller inputs (about 16k
tokens a side) keep exactly the script they always had.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein, Postfix, Prefix

FULL_ALIGNMENT_CELLS = 2**28


@dataclass(frozen=True)
class TokenAlignment:
    original_changed: tuple[bool, ...]
    edited_changed: tuple[bool, ...]
    edit_distance: int
    opcodes: tuple[tuple[str, int, int, int, int], ...]

    @property
    def changed_fraction(self) -> float:
        """Edit distance relative to the longer side: 0 = identical, 1 = nothing kept."""
        longest = max(len(self.original_changed), len(self.edited_changed))
        return self.edit_distance / longest if longest else 0.0


def align_tokens(original_ids: Sequence[int], edited_ids: Sequence[int]) -> TokenAlignment:
    """U1 masks of both sides from the minimal edit script turning ``original_ids`` into ``edited_ids``.

    Ids are converted with ``int`` first: elements of a torch tensor are 0-d tensors that hash by identity,
    so rapidfuzz would see every token as different and mark everything changed.
    """
    original_ids = [int(token) for token in original_ids]
    edited_ids = [int(token) for token in edited_ids]
    original_changed = [False] * len(original_ids)
    edited_changed = [False] * len(edited_ids)
    opcodes = []
    distance = 0
    for op in Levenshtein.opcodes(original_ids, edited_ids, score_hint=_score_hint(original_ids, edited_ids)):
        opcodes.append((op.tag, op.src_start, op.src_end, op.dest_start, op.dest_end))
        if op.tag == "equal":
            continue
        # Unit costs: a replace block pairs its tokens one to one, so each block costs its longer side.
        distance += max(op.src_end - op.src_start, op.dest_end - op.dest_start)
        original_changed[op.src_start : op.src_end] = [True] * (op.src_end - op.src_start)
        edited_changed[op.dest_start : op.dest_end] = [True] * (op.dest_end - op.dest_start)
    return TokenAlignment(
        original_changed=tuple(original_changed),
        edited_changed=tuple(edited_changed),
        edit_distance=distance,
        opcodes=tuple(opcodes),
    )


def _score_hint(original_ids: list[int], edited_ids: list[int]) -> int | None:
    """None (full alignment) when the part between the common prefix and suffix is small, else a small
    starting band that rapidfuzz widens until it holds the distance."""
    prefix = Prefix.similarity(original_ids, edited_ids)
    suffix = Postfix.similarity(original_ids[prefix:], edited_ids[prefix:])
    cells = (len(original_ids) - prefix - suffix) * (len(edited_ids) - prefix - suffix)
    return None if cells <= FULL_ALIGNMENT_CELLS else 32

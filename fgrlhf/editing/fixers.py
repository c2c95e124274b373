"""Fixer hooks of the rule editor (``fixer: fgrlhf.editing.fixers:NAME`` in a rules file) for faults whose
regex would be quadratic in the response length.

``repeated_sentences`` finds exactly the matches of ``([^.!?\\n]+[.!?])(?:\\s+\\1)+`` (a sentence, or the
tail of one, said again right after itself; the fix keeps one copy). The regex tries every start position
and scans each to the end of its sentence: O(L²) per sentence, hours for a 1 MB response without a full
stop. A copy must start where the whitespace after a sentence's terminator ends, so its length is known
from the next sentence, and one comparison per terminator decides: O(n).
"""

from __future__ import annotations

import re
from bisect import bisect_left

_ENDS = re.compile(r"[.!?\n]")
_WS = re.compile(r"\s+")
# A terminator after sentence text, then whitespace, then a sentence that ends in the same two characters:
# a necessary condition for ending a first copy, checked at C speed (the whitespace is taken atomically, so
# each sentence is scanned once).
_CANDIDATES = re.compile(r"(?<=([^.!?\n]))([.!?])(?=\s(?>\s*)(?:(?<=\s\1)\2|[^.!?\n]*\1\2))")


def repeated_sentences(instruction: str, text: str) -> list[tuple[int, int, str]]:
    r"""``(start, end, kept copy)`` of each match of ``([^.!?\n]+[.!?])(?:\s+\1)+``, as ``re.finditer``
    would find them (leftmost first, then from the end of the previous match)."""
    ends = [m.start() for m in _ENDS.finditer(text)]
    fixes = []
    search = 0  # where re would resume searching: 0 or the end of the previous match
    position = 0
    while candidate := _CANDIDATES.search(text, position):
        q = candidate.start()
        position = q + 1
        before = bisect_left(ends, q)
        lo = max(ends[before - 1] + 1 if before else 0, search)  # the sentence's first usable character
        found = _first_copy(text, ends, q, lo) if q > lo else None
        if found is None:
            continue
        start, sentence, end = found
        # (?:\s+\1)+ is greedy: more copies while whitespace then the same sentence follow.
        lead = len(sentence) - len(sentence.lstrip())
        while True:
            run_end = _whitespace_end(text, end)
            at = run_end - lead
            if at - end < 1 or not text.startswith(sentence, at):
                break
            end = at + len(sentence)
        fixes.append((start, end, sentence))
        search = position = end
    return fixes


def _whitespace_end(text: str, i: int) -> int:
    """The end of the whitespace run that starts at ``i`` (``i`` itself when there is none)."""
    match = _WS.match(text, i)
    return match.end() if match else i


def _first_copy(text: str, ends: list[int], q: int, lo: int) -> tuple[int, str, int] | None:
    """The leftmost start p in ``[lo, q)`` whose ``text[p:q+1]`` follows itself after whitespace, with
    that sentence and the end of its first copy; None if no p does."""
    run_end = _whitespace_end(text, q + 1)
    if run_end == q + 1 or run_end == len(text):
        return None
    # The copy's part after its leading whitespace runs from run_end to the next terminator.
    after = bisect_left(ends, run_end)
    if after == len(ends):
        return None
    q2 = ends[after]
    body = text[run_end : q2 + 1]
    body_start = q - len(body) + 1
    if text[q2] == "\n" or body_start < lo or not text.startswith(body, body_start):
        return None
    # Leading whitespace shared by both copies moves the start left (the leftmost match wins), as long as
    # \s+ keeps at least one character and the copy holds no newline.
    newline = text.rfind("\n", q + 1, run_end)
    copy_min = max(q + 2, newline + 1)
    lead = 0
    while (
        body_start - lead - 1 >= lo
        and run_end - lead - 1 >= copy_min
        and text[body_start - lead - 1] == text[run_end - lead - 1]
    ):
        lead += 1
    start = body_start - lead
    if q - start < 1:  # [^.!?\n]+ needs a character before the terminator
        return None
    return start, text[start : q + 1], q2 + 1

import pytest
import torch

from fgrlhf.algorithms.token_diff import align_tokens


def byte_ids(text: str) -> list[int]:
    """A tokenizer for tests: UTF-8 bytes, so a non-ASCII character spans several tokens."""
    return list(text.encode())


F, T = False, True


def test_identical():
    a = align_tokens([5, 6, 7], [5, 6, 7])
    assert a.original_changed == (F, F, F) and a.edited_changed == (F, F, F)
    assert a.edit_distance == 0 and a.changed_fraction == 0.0
    assert a.opcodes == (("equal", 0, 3, 0, 3),)


def test_pure_insertion():
    a = align_tokens([1, 2, 3], [1, 2, 9, 3])
    assert a.original_changed == (F, F, F)  # nothing removed: the original's U1 is empty
    assert a.edited_changed == (F, F, T, F)
    assert a.edit_distance == 1
    assert a.changed_fraction == pytest.approx(1 / 4)  # relative to the longer side


def test_pure_deletion():
    a = align_tokens([1, 2, 3], [1, 3])
    assert a.original_changed == (F, T, F)
    assert a.edited_changed == (F, F)
    assert a.edit_distance == 1


def test_substitution_marks_both_sides():
    a = align_tokens([1, 2, 3], [1, 7, 3])
    assert a.original_changed == (F, T, F) and a.edited_changed == (F, T, F)
    assert ("replace", 1, 2, 1, 2) in a.opcodes
    assert a.edit_distance == 1


def test_several_edit_blocks():
    # 2→9 substituted, 4 deleted, 7 appended: distance 3 over length 6. The script is unique: keeping
    # 5 6 aligned costs 1 + 1 for the 4/7 block, substituting 4 5 6 → 5 6 7 would cost 3.
    a = align_tokens([1, 2, 3, 4, 5, 6], [1, 9, 3, 5, 6, 7])
    assert a.original_changed == (F, T, F, T, F, F)
    assert a.edited_changed == (F, T, F, F, F, T)
    assert a.edit_distance == 3 and a.changed_fraction == pytest.approx(0.5)


@pytest.mark.parametrize(
    "original, edited, orig_changed, edit_changed, distance",
    [([], [4, 5], (), (T, T), 2), ([4, 5], [], (T, T), (), 2), ([], [], (), (), 0)],
)
def test_empty_sides(original, edited, orig_changed, edit_changed, distance):
    a = align_tokens(original, edited)
    assert a.original_changed == orig_changed and a.edited_changed == edit_changed
    assert a.edit_distance == distance
    assert a.changed_fraction == (1.0 if distance else 0.0)  # both empty: 0, not a division by zero


def test_unicode_bytes():
    # "café" = c a f 0xC3 0xA9 (5 bytes), "cafe" = c a f e (4): é's two bytes → one 'e' = 1 sub + 1 del
    a = align_tokens(byte_ids("café"), byte_ids("cafe"))
    assert a.original_changed == (F, F, F, T, T)
    assert a.edited_changed == (F, F, F, T)
    assert a.edit_distance == 2 and a.changed_fraction == pytest.approx(2 / 5)


def test_whitespace_only_changes():
    # space → tab is a substitution; a trailing newline is an insertion at the end
    a = align_tokens(byte_ids("a b"), byte_ids("a\tb"))
    assert a.original_changed == (F, T, F) and a.edited_changed == (F, T, F)
    b = align_tokens(byte_ids("ab"), byte_ids("ab\n"))
    assert b.original_changed == (F, F) and b.edited_changed == (F, F, T)
    # doubling a space: exactly one of the two spaces counts as inserted
    c = align_tokens(byte_ids("a b"), byte_ids("a  b"))
    assert c.original_changed == (F, F, F) and c.edit_distance == 1
    assert sum(c.edited_changed) == 1 and c.edited_changed.index(T) in (1, 2)


def test_tensor_ids_compare_by_value():
    # regression: 0-d tensor elements hash by identity; unconverted, everything looked changed
    a = align_tokens(torch.tensor([1, 2, 3]), torch.tensor([1, 7, 3]))
    assert a.original_changed == (F, T, F) and a.edited_changed == (F, T, F) and a.edit_distance == 1


def test_long_inputs_with_edits_at_both_ends_are_near_linear():
    # 200k tokens edited at the start, the middle and the end: the common prefix/suffix cannot be trimmed
    # away, so an unbanded O(n·m) alignment takes about a minute; a banded one, well under a second.
    import random
    import time

    rng = random.Random(0)
    original = [rng.randrange(50_000) for _ in range(200_000)]
    edited = [1, 2, *original[3:100_000], 7, 7, *original[100_003:-4], 9]
    start = time.perf_counter()
    a = align_tokens(original, edited)
    assert time.perf_counter() - start < 5.0
    assert a.edit_distance == 3 + 3 + 4  # 2 substitutions + 1 deletion, 2 subst. + 1 del., 1 subst. + 3 del.
    assert sum(a.original_changed) == 3 + 3 + 4 and sum(a.edited_changed) == 2 + 2 + 1
    assert not any(a.original_changed[3:100_000]) and not any(a.original_changed[100_003:-4])

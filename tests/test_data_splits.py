import pytest

from fgrlhf.data.loading import DataError
from fgrlhf.data.splits import check_disjoint, split_by_prompt


def _records(n_prompts: int, per_prompt: int = 2) -> list[dict]:
    return [{"prompt": f"p{i}", "chosen": f"c{i}.{j}"} for i in range(n_prompts) for j in range(per_prompt)]


def _prompts(records: list[dict]) -> set[str]:
    return {record["prompt"] for record in records}


def test_no_prompt_in_two_splits_and_sizes_follow_the_fractions():
    records = _records(100, per_prompt=3)
    splits = split_by_prompt(records, {"rm": 0.5, "ppo": 0.3, "val": 0.1, "eval": 0.1}, seed=0)
    assert [len(_prompts(s)) for s in splits.values()] == [50, 30, 10, 10]
    # every record of a prompt travels with it
    assert [len(s) for s in splits.values()] == [150, 90, 30, 30]
    check_disjoint(splits)
    assert set().union(*map(_prompts, splits.values())) == _prompts(records)


def test_deterministic_for_a_seed_independent_of_order_and_seed_matters():
    records = _records(40)
    fractions = {"a": 0.25, "b": 0.75}
    first = split_by_prompt(records, fractions, seed=3)
    again = split_by_prompt(list(reversed(records)), fractions, seed=3)
    assert {k: _prompts(v) for k, v in first.items()} == {k: _prompts(v) for k, v in again.items()}
    other = split_by_prompt(records, fractions, seed=4)
    assert _prompts(other["a"]) != _prompts(first["a"])
    # records keep their input order within a split
    assert first["b"] == [r for r in records if r["prompt"] in _prompts(first["b"])]


def test_fractions_below_one_drop_the_rest():
    splits = split_by_prompt(_records(10), {"only": 0.3}, seed=0)
    assert len(_prompts(splits["only"])) == 3


@pytest.mark.parametrize(
    "fractions, message",
    [
        ({"a": 0.7, "b": 0.6}, "sum to 1.3"),
        ({"a": -0.1}, "'a' is -0.1"),
        ({}, "at least one split"),
        ({"a": 0.9, "tiny": 0.01}, "split 'tiny': fraction 0.01 of 10 distinct prompts is no prompt"),
    ],
)
def test_bad_fractions_are_one_clear_error(fractions, message):
    with pytest.raises(DataError, match=message):
        split_by_prompt(_records(10), fractions, seed=0)


def test_record_without_a_prompt_names_the_record():
    with pytest.raises(DataError, match="record 1: field 'prompt' must be a string"):
        split_by_prompt([{"prompt": "x"}, {"instruction": "y"}], {"a": 1.0}, seed=0)


def test_check_disjoint_names_both_splits_and_an_example():
    splits = {"rm": [{"prompt": "a"}, {"prompt": "b"}], "ppo": [{"prompt": "c"}], "eval": [{"prompt": "b"}]}
    with pytest.raises(DataError, match=r"splits 'rm' and 'eval' share 1 prompt\(s\), e.g. 'b'"):
        check_disjoint(splits)
    check_disjoint({"rm": splits["rm"], "ppo": splits["ppo"]})

import json

import pytest

from fgrlhf.data.loading import (
    ALPACA_EVAL_PAIRS,
    DataError,
    LoadReport,
    load_edit_inputs,
    load_pairs,
    load_records,
    packaged_data_dir,
    resolve_data_path,
    write_jsonl,
)


def _write(tmp_path, lines: list[bytes]):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "extra": 1}).encode()


@pytest.mark.parametrize(
    "line, message",
    [
        (json.dumps({"prompt": "p", "chosen": "c"}).encode(), "d.jsonl:2: missing field 'rejected'"),
        (
            json.dumps({"prompt": "p", "chosen": 3, "rejected": "r"}).encode(),
            "d.jsonl:2: field 'chosen' must be a string",
        ),
        (json.dumps({"prompt": "p", "chosen": "  ", "rejected": "r"}).encode(), "d.jsonl:2: field 'chosen' is empty"),
        (b'{"prompt": "p", "chosen": ', "d.jsonl:2: not valid JSON"),
        (b'{"prompt": "\xff\xfe"}', "d.jsonl:2: line is not valid UTF-8"),
        (b"[1, 2]", "d.jsonl:2: expected a JSON object"),
    ],
)
def test_invalid_record_names_file_line_field(tmp_path, line, message):
    path = _write(tmp_path, [GOOD, line, GOOD])
    with pytest.raises(DataError) as err:
        load_pairs(path)
    assert message in str(err.value)
    report = LoadReport()
    records = load_pairs(path, skip_invalid=True, report=report)
    assert len(records) == 2 and report.skipped == 1 and report.loaded == 2
    assert message in report.messages[0]


def test_records_keep_extra_fields_and_blank_lines_are_ignored(tmp_path):
    records = load_pairs(_write(tmp_path, [GOOD, b"", GOOD]))
    assert len(records) == 2 and records[0]["extra"] == 1


def test_json_array_and_missing_and_empty_files(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([json.loads(GOOD), {"prompt": "p"}]))
    with pytest.raises(DataError, match=r"d.json:item 1: missing field 'chosen'"):
        load_pairs(path)
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no valid records"):
        load_pairs(_write(tmp_path, [b""]))


def test_hf_datasets_directory(tmp_path):
    from datasets import Dataset

    Dataset.from_list([json.loads(GOOD), {"prompt": "p", "chosen": "", "rejected": "r", "extra": 2}]).save_to_disk(
        str(tmp_path / "ds")
    )
    with pytest.raises(DataError, match="row 1: field 'chosen' is empty"):
        load_pairs(tmp_path / "ds")


def test_edit_inputs_detect_pairs_or_single_responses(tmp_path):
    pairs, field = load_edit_inputs(_write(tmp_path, [GOOD]))
    assert field == "rejected" and pairs[0]["rejected"] == "r"
    single = tmp_path / "s.jsonl"
    single.write_text(json.dumps({"prompt": "p", "response": "x"}) + "\n")
    records, field = load_edit_inputs(single)
    assert field == "response" and records[0]["response"] == "x"


def test_write_jsonl_roundtrip_is_atomic(tmp_path):
    out = tmp_path / "sub" / "o.jsonl"
    write_jsonl(out, [{"a": "é"}, {"b": 2}])
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [{"a": "é"}, {"b": 2}]
    assert not out.with_name("o.jsonl.tmp").exists()


def test_packaged_alpaca_data_loads():
    assert len(load_pairs(ALPACA_EVAL_PAIRS)) == 789  # a relative name resolves into the packaged data
    eval_set = packaged_data_dir() / "alpaca_eval" / "eval_set.jsonl"
    # The real eval set has one empty davinci-003 reference (line 248): strict loading must say so.
    with pytest.raises(DataError, match=r"eval_set\.jsonl:248: field 'reference' is empty"):
        load_records(eval_set, ("prompt", "reference"))
    assert len(load_records(eval_set, ("prompt", "reference"), allow_empty=("reference",))) == 805


def test_data_paths_resolve_cwd_first_then_data_dir(tmp_path, monkeypatch):
    (tmp_path / "override" / "sub").mkdir(parents=True)
    (tmp_path / "override" / "sub" / "p.jsonl").write_text('{"prompt": "from the override"}\n')
    monkeypatch.setenv("FGRLHF_DATA_DIR", str(tmp_path / "override"))
    monkeypatch.chdir(tmp_path)
    assert resolve_data_path("sub/p.jsonl") == tmp_path / "override" / "sub" / "p.jsonl"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.jsonl").write_text('{"prompt": "from cwd"}\n')
    assert load_records("sub/p.jsonl", ("prompt",))[0]["prompt"] == "from cwd"
    with pytest.raises(DataError, match=r"nothere\.jsonl: no such file"):
        load_records("nothere.jsonl", ("prompt",))

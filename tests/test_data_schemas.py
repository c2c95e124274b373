"""Schema recognition (issue 19, stage 1): AlpacaFarm, TRL (standard and conversational) and ``messages``
data, from JSONL, JSON, parquet and ``save_to_disk`` directories, read by every command without flags;
any other schema through a field map, and a mismatch as one line naming the field, the file and the flag."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from fgrlhf.cli import main as cli_main
from fgrlhf.config import ConfigError, load_config
from fgrlhf.data.loading import DataError, LoadReport, load_edit_inputs, load_pairs, load_prompts
from fgrlhf.data.schemas import parse_field_map, render_prompt
from fgrlhf.tokenization import ALPACA_TEMPLATE, format_prompt
from tests.helpers import edit_command

FORMATS = ("jsonl", "json", "parquet", "dataset")

# One preference pair per schema, the same pair each time: prompt "Add 2 and 3." (input "2, 3" where the
# schema has one), chosen "5", rejected "6".
USER = {"role": "user", "content": "Add 2 and 3."}
PAIRS = {
    "trl": {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"},
    "trl_conversational_implicit": {
        "chosen": [USER, {"role": "assistant", "content": "5"}],
        "rejected": [USER, {"role": "assistant", "content": "6"}],
    },
    "trl_conversational_explicit": {
        "prompt": [USER],
        "chosen": [{"role": "assistant", "content": "5"}],
        "rejected": [{"role": "assistant", "content": "6"}],
    },
    "alpaca_farm": {"instruction": "Add 2 and 3.", "input": "2, 3", "output_1": "6", "output_2": "5", "preference": 2},
}
PROMPTS = {
    "prompt": {"prompt": "Add 2 and 3."},
    "messages": {"messages": [USER, {"role": "assistant", "content": "5"}]},
    "alpaca_farm": {"instruction": "Add 2 and 3.", "input": "2, 3"},
}


def write(records: list[dict], path: Path, fmt: str) -> Path:
    """``records`` as ``fmt``: a JSONL file, a JSON array, a parquet file or a ``save_to_disk`` directory."""
    if fmt == "jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif fmt == "json":
        path = path.with_suffix(".json")
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        from datasets import Dataset

        dataset = Dataset.from_list(records)
        if fmt == "parquet":
            path = path.with_suffix(".parquet")
            dataset.to_parquet(str(path))
        else:
            dataset.save_to_disk(str(path))
    return path


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("schema", PAIRS)
def test_pairs_of_every_schema_and_format(tmp_path, schema, fmt):
    second = {**PAIRS[schema]}
    records = load_pairs(write([PAIRS[schema], second], tmp_path / "pairs", fmt))
    assert len(records) == 2
    record = records[0]
    assert (record["prompt"], record["chosen"], record["rejected"]) == ("Add 2 and 3.", "5", "6")
    assert record.get("input", "") == ("2, 3" if schema == "alpaca_farm" else "")
    assert "prompt_messages" not in record  # one user turn is a plain prompt


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("schema", PROMPTS)
def test_prompts_of_every_schema_and_format(tmp_path, schema, fmt):
    records = load_prompts(write([PROMPTS[schema]], tmp_path / "prompts", fmt))
    assert records[0]["prompt"] == "Add 2 and 3."
    assert records[0].get("input", "") == ("2, 3" if schema == "alpaca_farm" else "")


def test_alpaca_farm_keeps_its_fields_and_renders_with_its_template(tmp_path, tokenizer):
    record = load_pairs(write([PAIRS["alpaca_farm"]], tmp_path / "a", "jsonl"))[0]
    assert record["output_1"] == "6" and record["preference"] == 2  # the original fields travel on
    text = render_prompt(tokenizer, record, "alpaca")
    assert text == ALPACA_TEMPLATE["prompt_inputs"].format(instruction="Add 2 and 3.", input="2, 3")
    assert render_prompt(tokenizer, record, "chat") == format_prompt(tokenizer, "Add 2 and 3.", "chat", "2, 3")


def test_alpaca_farm_ties_are_skipped_and_counted_other_values_are_errors(tmp_path):
    rows = [{**PAIRS["alpaca_farm"], "preference": p} for p in (1, 2, 0, 1.5, 2.0)]
    report = LoadReport()
    records = load_pairs(write(rows, tmp_path / "t", "jsonl"), report=report)
    assert [r["chosen"] for r in records] == ["6", "5", "5"] and report.ties == 2 and report.loaded == 3
    for bad, message in (
        (3, "field 'preference' is 3; expected 1 or 2"),
        ("2", "field 'preference' must be 1 or 2, got '2'"),
    ):
        path = write([PAIRS["alpaca_farm"], {**PAIRS["alpaca_farm"], "preference": bad}], tmp_path / "b", "jsonl")
        with pytest.raises(DataError, match=rf"b.jsonl:2: {message}"):
            load_pairs(path)
    only_ties = write([{**PAIRS["alpaca_farm"], "preference": 0}], tmp_path / "z", "jsonl")
    with pytest.raises(DataError, match="no valid records"):
        load_pairs(only_ties)


def test_multi_turn_conversation_is_rendered_with_the_chat_template(tmp_path, tokenizer):
    history = [
        {"role": "system", "content": "Be brief."},
        USER,
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And 3 and 4?"},
    ]
    pair = {
        "chosen": [*history, {"role": "assistant", "content": "7"}],
        "rejected": [*history, {"role": "assistant", "content": "8"}],
    }
    record = load_pairs(write([pair], tmp_path / "c", "parquet"))[0]
    assert record["prompt_messages"] == history and (record["chosen"], record["rejected"]) == ("7", "8")
    assert record["prompt"].startswith("system: Be brief.\n\nuser: Add 2 and 3.")
    expected = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
    assert render_prompt(tokenizer, record, "chat") == expected
    with pytest.raises(DataError, match="a conversation of 4 messages needs prompt_format 'chat'"):
        render_prompt(tokenizer, record, "alpaca")
    prompt = load_prompts(
        write([{"messages": [*history, {"role": "assistant", "content": "7"}]}], tmp_path / "m", "jsonl")
    )[0]
    assert prompt["prompt_messages"] == history  # the trailing answer is not part of the prompt


@pytest.mark.parametrize(
    "pair, message",
    [
        (
            {
                "chosen": [USER, {"role": "assistant", "content": "5"}],
                "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "6"}],
            },
            "'chosen' and 'rejected' conversations differ before their last message",
        ),
        ({"chosen": [USER], "rejected": [USER]}, "field 'chosen' must end with an assistant message"),
        (
            {"chosen": [{"role": "assistant"}], "rejected": "6"},
            "field 'chosen' message 0 must be an object with string 'role' and 'content'",
        ),
        (
            {"chosen": [{"role": "assistant", "content": "5"}], "rejected": [{"role": "assistant", "content": "6"}]},
            "no prompt",
        ),
    ],
)
def test_malformed_conversations_name_the_line_and_field(tmp_path, pair, message):
    with pytest.raises(DataError, match=rf"c.jsonl:1: {message}"):
        load_pairs(write([pair], tmp_path / "c", "jsonl"))


def test_unknown_schema_is_one_line_naming_field_file_and_flag(tmp_path):
    path = write([{"question": "q", "good": "g", "bad": "b"}], tmp_path / "other", "jsonl")
    with pytest.raises(DataError) as err:
        load_pairs(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}:1: missing field 'prompt', 'chosen', 'rejected'")
    assert "(fields: question, good, bad)" in message
    assert message.endswith("map yours with --field-map prompt=FIELD,chosen=FIELD,rejected=FIELD")
    # the closest schema is named: an AlpacaFarm dump without its preference
    alpaca = write([{"instruction": "i", "output_1": "a", "output_2": "b"}], tmp_path / "a", "jsonl")
    with pytest.raises(DataError, match=r"missing field 'preference' .*--field-map preference=FIELD$"):
        load_pairs(alpaca)
    with pytest.raises(DataError, match=r"missing field 'prompt' .*map yours with prompts.field_map.prompt=FIELD$"):
        load_prompts(path, field_map_flag="prompts.field_map")


def test_field_map_renames_another_schema(tmp_path):
    rows = [{"question": "Add 2 and 3.", "good": "5", "bad": "6"}, {"question": "q2", "good": "g"}]
    path = write(rows, tmp_path / "other", "parquet")
    field_map = parse_field_map("prompt=question, chosen=good,rejected=bad")
    with pytest.raises(DataError, match=r"other.parquet:row 1: field 'rejected' must be a string, got NoneType"):
        load_pairs(path, field_map=field_map)  # parquet fills the missing column with None
    record = load_pairs(path, field_map=field_map, skip_invalid=True)[0]
    assert (record["prompt"], record["chosen"], record["rejected"], record["good"]) == ("Add 2 and 3.", "5", "6", "5")
    jsonl = write(rows, tmp_path / "other", "jsonl")
    with pytest.raises(DataError, match=r"other.jsonl:2: no field 'bad' \(mapped to 'rejected' by --field-map\)"):
        load_pairs(jsonl, field_map=field_map)
    with pytest.raises(DataError, match="expected FIELD=SOURCE pairs"):
        parse_field_map("prompt")
    with pytest.raises(DataError, match="--field-map: cannot map to answer; the fields are prompt, input"):
        parse_field_map("answer=x")


def test_edit_inputs_recognise_alpaca_farm_and_conversational_responses(tmp_path):
    records, field = load_edit_inputs(write([PAIRS["alpaca_farm"]], tmp_path / "a", "json"))
    assert field == "rejected" and records[0]["rejected"] == "6" and records[0]["input"] == "2, 3"
    single = {"messages": [USER], "response": "five"}
    records, field = load_edit_inputs(write([single], tmp_path / "r", "jsonl"))
    assert field == "response" and records[0]["prompt"] == "Add 2 and 3."
    mapped = {"q": "Add 2 and 3.", "answer": "five"}
    records, field = load_edit_inputs(
        write([mapped], tmp_path / "m", "jsonl"), field_map={"prompt": "q", "response": "answer"}
    )
    assert field == "response" and records[0]["response"] == "five"


def test_datasets_dict_directory_names_its_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    one = Dataset.from_list([PAIRS["trl"]])
    DatasetDict({"train": one}).save_to_disk(str(tmp_path / "single"))
    assert load_pairs(tmp_path / "single")[0]["chosen"] == "5"
    DatasetDict({"train": one, "test": one}).save_to_disk(str(tmp_path / "both"))
    with pytest.raises(DataError, match=r"holds the splits train, test; name one \(e.g. .*both/train\)"):
        load_pairs(tmp_path / "both")
    assert load_pairs(tmp_path / "both" / "test")[0]["rejected"] == "6"


def test_unreadable_parquet_and_bad_hub_ids_are_one_line(tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"broken.parquet: cannot read it with datasets") as err:
        load_pairs(broken)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"expected hf:REPO\[:CONFIG\[:SPLIT\]\]"):
        load_pairs("hf:")


def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True


def test_hub_dataset_through_load_dataset():
    if not _hub_reachable():
        pytest.skip("no network: huggingface.co:443 is unreachable, so a Hub id cannot be loaded here")
    # TRL's test data sets: a few rows of each preference form
    standard = load_pairs("hf:trl-internal-testing/zen:standard_preference:train")
    conversational = load_pairs("hf:trl-internal-testing/zen:conversational_preference:train")
    assert standard and conversational and all(isinstance(r["chosen"], str) for r in conversational)


# --- the commands read these schemas without flags ------------------------------------------------------


def test_rm_data_reads_alpaca_farm_parquet_and_formats_its_input(tmp_path, tokenizer):
    from fgrlhf.reward.data import encode_pairs, load_preference_records

    records, from_edits = load_preference_records(write([PAIRS["alpaca_farm"]], tmp_path / "a", "parquet"))
    assert not from_edits and records[0]["chosen"] == "5"
    example = encode_pairs(records, tokenizer, "alpaca", 256, 16, with_edit_masks=False)[0]
    assert "### Input:\n2, 3" in tokenizer.decode(example.prompt_ids)
    other = write([{"question": "q", "good": "g", "bad": "b"}], tmp_path / "o", "jsonl")
    assert (
        load_preference_records(other, {"prompt": "question", "chosen": "good", "rejected": "bad"})[0][0]["chosen"]
        == "g"
    )


PPO = ("reward.model=tiny-token",)  # what a PPO config must name besides the prompts


def test_ppo_prompts_read_alpaca_farm_as_it_is_and_a_field_map_from_the_config(tmp_path, tokenizer):
    from fgrlhf.trainers.ppo.config import PPOTrainConfig
    from fgrlhf.trainers.ppo.inputs import load_prompt_ids

    alpaca = write([PAIRS["alpaca_farm"], {"instruction": "Name a colour.", "input": None}], tmp_path / "F", "jsonl")
    cfg = load_config(PPOTrainConfig, None, [*PPO, f"prompts.path={alpaca}", "policy.prompt_format=alpaca"])
    texts, ids = load_prompt_ids(cfg)
    assert texts == [
        ALPACA_TEMPLATE["prompt_inputs"].format(instruction="Add 2 and 3.", input="2, 3"),
        ALPACA_TEMPLATE["prompt_noinputs"].format(instruction="Name a colour."),
    ]
    assert len(ids) == 2
    other = write([{"question": "Add 2 and 3."}], tmp_path / "q", "jsonl")
    cfg = load_config(PPOTrainConfig, None, [*PPO, f"prompts.path={other}"])
    with pytest.raises(DataError, match=r"q.jsonl:1: missing field 'prompt' .*prompts.field_map.prompt=FIELD$"):
        load_prompt_ids(cfg)
    cfg = load_config(PPOTrainConfig, None, [*PPO, f"prompts.path={other}", "prompts.field_map.prompt=question"])
    assert load_prompt_ids(cfg)[0] == [format_prompt(tokenizer, "Add 2 and 3.")]  # the tiny policy's chat template
    with pytest.raises(ConfigError, match=r"prompts.field_map: cannot map to query"):
        load_config(PPOTrainConfig, None, [*PPO, "prompts.field_map.query=question"])


def test_edit_cli_edits_alpaca_farm_and_maps_other_fields(tmp_path, capsys):
    rejected = "Great question! The <b>answer</b> is 4, see see."
    rows = [{**PAIRS["alpaca_farm"], "output_1": rejected, "preference": 2}]
    out = tmp_path / "o.jsonl"
    assert (
        cli_main(
            edit_command(
                write(rows, tmp_path / "a", "parquet"), out, "rule", "tokenizer=tiny", "max_changed_fraction=0.9"
            )
        )
        == 0
    )
    record = json.loads(out.read_text().splitlines()[0])
    assert record["original"] == rejected and record["input"] == "2, 3" and record["status"] == "edited"
    capsys.readouterr()
    other = write([{"q": "p", "good": "g", "bad": rejected}], tmp_path / "o", "jsonl")
    assert cli_main(edit_command(other, out, "rule", "tokenizer=tiny")) == 2
    err = capsys.readouterr().err
    assert "missing field 'prompt', 'chosen', 'rejected'" in err and "--field-map prompt=FIELD" in err
    flags = ["--field-map", "prompt=q,chosen=good,rejected=bad", "tokenizer=tiny", "max_changed_fraction=0.9"]
    assert cli_main(edit_command(other, out, "rule", *flags)) == 0
    assert json.loads(out.read_text().splitlines()[0])["original"] == rejected
    with pytest.raises(SystemExit) as exit_:  # a bad flag is argparse's one-line usage error
        cli_main(edit_command(other, out, "rule", "--field-map", "oops"))
    assert (
        exit_.value.code == 2
        and "argument --field-map: --field-map 'oops': expected FIELD=SOURCE" in capsys.readouterr().err
    )


@pytest.mark.slow
def test_train_rm_accepts_alpaca_farm_parquet_as_it_is(ray_session, tmp_path, one_thread):
    from tests.test_train_rm import train_tiny_rm

    rows = [
        {
            "instruction": f"Describe item {i}.",
            "input": "" if i % 2 else f"item {i}",
            "output_1": "It is lively and fun.",
            "output_2": "It is dull.",
            "preference": 1 + i % 2,
        }
        for i in range(10)
    ]
    out = tmp_path / "rm"
    assert train_tiny_rm(write(rows, tmp_path / "F", "parquet"), out, kind="sequence") == 0
    assert (out / "final" / "config.json").is_file()


def test_the_editor_reads_alpaca_farms_input_with_the_instruction(tmp_path):
    from fgrlhf.data.schemas import instruction_text
    from fgrlhf.editing.config import EditConfig
    from fgrlhf.editing.editors import Editor, EditReply
    from fgrlhf.editing.pipeline import run_edit
    from fgrlhf.editing.retry import Usage

    assert instruction_text({"prompt": "Add 2 and 3.", "input": "2, 3"}) == "Add 2 and 3.\n\n2, 3"
    assert instruction_text({"prompt": "Add 2 and 3.", "input": ""}) == "Add 2 and 3."

    class Recording(Editor):
        name, model, seen = "recording", "none", []

        async def edit(self, instruction: str, text: str) -> EditReply:
            self.seen.append(instruction)
            return EditReply(text + " ok", Usage())

    editor = Recording()
    cfg = load_config(EditConfig, None, ["tokenizer=tiny", "max_changed_fraction=1.0"])
    run_edit(
        cfg, write([PAIRS["alpaca_farm"]], tmp_path / "a", "jsonl"), tmp_path / "o.jsonl", editor=editor, progress=False
    )
    assert editor.seen == ["Add 2 and 3.\n\n2, 3"]  # the numbers to add live in AlpacaFarm's input

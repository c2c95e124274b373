"""The schemas of public preference and prompt data sets, turned into this project's records.

Recognised without flags, from the first record of a source (every record then follows that schema):

- pairs: TRL's ``prompt/chosen/rejected`` with strings, or TRL's conversational form where ``chosen`` and
  ``rejected`` are message lists and the prompt is either their shared leading messages or its own list;
  AlpacaFarm's ``instruction/input/output_1/output_2/preference`` (``preference`` 1 or 2 names the better
  output; 0 and 1.5, the ties some annotation dumps hold, are skipped and counted; any other value is an
  error naming the row);
- prompts: ``prompt`` (a string or a message list), a conversational ``messages`` list (trailing assistant
  turns, the reference answer, are dropped), AlpacaFarm's ``instruction`` (+ ``input``);
- single responses (``fgrlhf edit``): ``prompt/response``.

Any other schema is renamed first by a field map (``--field-map prompt=question,chosen=good``; for PPO's
prompts the config key ``prompts.field_map``); a source matching no schema is one error naming the missing
field and the mapping that fixes it.

Records come out as ``prompt`` (text), ``input`` (AlpacaFarm's, kept apart so the AlpacaFarm template can
place it), ``chosen``/``rejected`` or ``response``, and ``prompt_messages`` when the prompt is a
conversation other than one user turn; every original field is kept. Nothing here needs a tokenizer: a
conversation is rendered with the caller's chat template by :func:`render_prompt`, at encoding time.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from fgrlhf.data.loading import DataError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Kind = Literal["pairs", "prompts", "responses"]

ALPACA_PAIR_FIELDS = ("instruction", "output_1", "output_2", "preference")
TRL_PAIR_FIELDS = ("prompt", "chosen", "rejected")
# What a field map may name: the fields of every recognised schema.
MAPPABLE_FIELDS = ("prompt", "input", "chosen", "rejected", "response", "messages", *ALPACA_PAIR_FIELDS)
# AlpacaFarm's preference: which output is better; ties (no better output) are skipped.
PREFERRED = {1: ("output_1", "output_2"), 2: ("output_2", "output_1")}
TIES = (0, 1.5)

FIELD_MAP_FLAG = "--field-map"


def parse_field_map(text: str, flag: str = FIELD_MAP_FLAG) -> dict[str, str]:
    """``"prompt=question,chosen=good"`` -> ``{"prompt": "question", "chosen": "good"}``."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        target, sep, source = (side.strip() for side in item.partition("="))
        if not sep or not target or not source:
            raise DataError(f"{flag} {text!r}: expected FIELD=SOURCE pairs, e.g. prompt=question,chosen=good")
        mapping[target] = source
    return check_field_map(mapping, flag)


def _field_map_argument(text: str) -> dict[str, str]:
    try:
        return parse_field_map(text)
    except DataError as exc:  # argparse shows an ArgumentTypeError's message, not a ValueError's
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_field_map_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        FIELD_MAP_FLAG,
        type=_field_map_argument,
        metavar="FIELD=SOURCE,...",
        help="read another schema: rename its fields, e.g. prompt=question,chosen=good,rejected=bad "
        "(TRL, AlpacaFarm and conversational data need none; see docs/data.md)",
    )


def check_field_map(mapping: dict[str, str], flag: str = FIELD_MAP_FLAG) -> dict[str, str]:
    unknown = sorted(set(mapping) - set(MAPPABLE_FIELDS))
    if unknown:
        raise DataError(f"{flag}: cannot map to {', '.join(unknown)}; the fields are {', '.join(MAPPABLE_FIELDS)}")
    return mapping


def map_hint(flag: str, fields: list[str] | tuple[str, ...]) -> str:
    """How to map ``fields`` with ``flag``: a command-line flag (``--field-map a=FIELD,b=FIELD``) or a
    config key (``prompts.field_map.a=FIELD``)."""
    if flag.startswith("--"):
        return f"{flag} " + ",".join(f"{name}=FIELD" for name in fields)
    return " ".join(f"{flag}.{name}=FIELD" for name in fields)


def _fields(record: dict) -> str:
    return ", ".join(map(str, record)) or "none"


def _messages(where: str, name: str, value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{name}' must be a string or a non-empty list of messages")
    for index, message in enumerate(value):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise DataError(
                f"{where}: field '{name}' message {index} must be an object with string 'role' and 'content'"
            )
    return [{"role": message["role"], "content": message["content"]} for message in value]


def _prompt_from_messages(messages: list[dict[str, str]]) -> dict[str, Any]:
    """One user turn is a plain prompt (rendered as any other); a longer conversation keeps its messages for
    the chat template and a readable ``prompt`` text for editors, splits and logs."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return {"prompt": messages[0]["content"]}
    text = "\n\n".join(f"{message['role']}: {message['content']}" for message in messages)
    return {"prompt": text, "prompt_messages": messages}


def _response(where: str, name: str, conversation: list[dict[str, str]]) -> str:
    if conversation[-1]["role"] != "assistant":
        raise DataError(f"{where}: field '{name}' must end with an assistant message (the response)")
    return conversation[-1]["content"]


def _trl_pair(where: str, record: dict) -> dict:
    prompt, chosen, rejected = record.get("prompt"), record["chosen"], record["rejected"]
    if not (isinstance(chosen, list) or isinstance(rejected, list)):
        return record  # the standard form; loading checks the strings
    chosen_msgs, rejected_msgs = _messages(where, "chosen", chosen), _messages(where, "rejected", rejected)
    answers = _response(where, "chosen", chosen_msgs), _response(where, "rejected", rejected_msgs)
    if isinstance(prompt, list):  # explicit prompt: chosen/rejected hold only the answer turns
        head = _messages(where, "prompt", prompt)
        chosen_msgs, rejected_msgs = head + chosen_msgs, head + rejected_msgs
    shared = chosen_msgs[:-1]
    if shared != rejected_msgs[:-1]:
        raise DataError(f"{where}: 'chosen' and 'rejected' conversations differ before their last message")
    if not shared:
        if not isinstance(prompt, str):
            raise DataError(f"{where}: no prompt: field 'prompt' is missing and 'chosen' holds only the answer")
        shared = [{"role": "user", "content": prompt}]
    return {**record, **_prompt_from_messages(shared), "chosen": answers[0], "rejected": answers[1]}


def _alpaca_input(where: str, record: dict) -> str:
    value = record.get("input")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field 'input' must be a string, got {type(value).__name__}")
    return value


def _alpaca_pair(where: str, record: dict) -> dict | None:
    preference = record["preference"]
    if isinstance(preference, bool) or not isinstance(preference, int | float):
        raise DataError(f"{where}: field 'preference' must be 1 or 2, got {preference!r}")
    if preference in TIES:
        return None
    if preference not in PREFERRED:
        raise DataError(
            f"{where}: field 'preference' is {preference!r}; expected 1 or 2 (0 and 1.5, ties, are skipped)"
        )
    better, worse = PREFERRED[int(preference)]
    for name in ("instruction", better, worse):
        if not isinstance(record[name], str):
            raise DataError(f"{where}: field '{name}' must be a string, got {type(record[name]).__name__}")
    return {
        **record,
        "prompt": record["instruction"],
        "input": _alpaca_input(where, record),
        "chosen": record[better],
        "rejected": record[worse],
    }


def _prompt(where: str, record: dict) -> dict:
    """The prompt of a record with ``prompt``, ``messages`` or ``instruction`` (checked in that order)."""
    if "prompt" in record:
        value = record["prompt"]
        return (
            record if isinstance(value, str) else {**record, **_prompt_from_messages(_messages(where, "prompt", value))}
        )
    if "messages" in record:
        messages = _messages(where, "messages", record["messages"])
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages:
            raise DataError(f"{where}: field 'messages' holds only assistant messages; no prompt")
        return {**record, **_prompt_from_messages(messages)}
    instruction = record["instruction"]
    if not isinstance(instruction, str):
        raise DataError(f"{where}: field 'instruction' must be a string, got {type(instruction).__name__}")
    return {**record, "prompt": instruction, "input": _alpaca_input(where, record)}


class Schema(NamedTuple):
    name: str
    fields: tuple[str, ...]  # a first record with all of them has this schema
    convert: Callable[[str, dict], dict | None]  # None: skip the record (a tie)
    expected: tuple[str, ...] = ()  # what the mismatch error lists, when more than ``fields``


# Per kind, in order of precedence.
SCHEMAS: dict[Kind, list[Schema]] = {
    "pairs": [
        Schema("prompt/chosen/rejected (TRL)", ("chosen", "rejected"), _trl_pair, TRL_PAIR_FIELDS),
        Schema("AlpacaFarm", ALPACA_PAIR_FIELDS, _alpaca_pair),
    ],
    "prompts": [
        Schema("prompt", ("prompt",), _prompt),
        Schema("messages", ("messages",), _prompt),
        Schema("AlpacaFarm", ("instruction",), _prompt),
    ],
    "responses": [
        Schema("prompt/response", ("prompt", "response"), _prompt),
        Schema("messages/response", ("messages", "response"), _prompt),
        Schema("AlpacaFarm instruction/response", ("instruction", "response"), _prompt),
    ],
}


class Recognizer:
    """Turns the records of one source into this project's records: applies the field map, recognises the
    schema on the first record, converts each record (None: skip it)."""

    def __init__(self, kind: Kind, source: str, field_map: dict[str, str] | None = None, flag: str = FIELD_MAP_FLAG):
        self.kind, self.source, self.flag = kind, source, flag
        self.field_map = check_field_map(dict(field_map or {}), flag)
        self.schema: Schema | None = None

    def __call__(self, where: str, record: dict) -> dict | None:
        for target, name in self.field_map.items():
            if name not in record:
                raise DataError(
                    f"{where}: no field '{name}' (mapped to '{target}' by {self.flag}); fields: {_fields(record)}"
                )
            record = {**record, target: record[name]}
        if self.schema is None:
            self.schema = self._recognise(where, record)
            log.info("%s: %s schema (%s)", self.source, self.schema.name, self.kind)
        for field in self.schema.fields:  # a later record without one: an error naming it, not a KeyError
            if field not in record:
                raise DataError(f"{where}: missing field '{field}'")
        return self.schema.convert(where, record)

    def _recognise(self, where: str, record: dict) -> Schema:
        schemas = SCHEMAS[self.kind]
        for schema in schemas:
            if all(field in record for field in schema.fields):
                return schema
        # Name what the closest schema lacks (ties go to the first: this project's own field names).
        closest = max(schemas, key=lambda s: sum(f in record for f in s.fields) / len(s.fields))
        missing = [field for field in closest.expected or closest.fields if field not in record]
        known = "; ".join("/".join(s.expected or s.fields) for s in schemas)
        raise DataError(
            f"{where}: missing field {', '.join(repr(m) for m in missing)} (fields: {_fields(record)}); "
            f"recognised: {known}; map yours with {map_hint(self.flag, missing)}"
        )


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    record: dict,
    prompt_format: Literal["chat", "alpaca"],
    alpaca_template: dict[str, str] | None = None,
) -> str:
    """The text the policy continues for ``record``: a conversation through the tokenizer's chat template,
    else :func:`fgrlhf.tokenization.format_prompt` of its prompt and input."""
    from fgrlhf.tokenization import format_prompt

    messages = record.get("prompt_messages")
    if messages:
        if prompt_format != "chat":
            raise DataError(
                f"prompt {record['prompt'][:60]!r}...: a conversation of {len(messages)} messages needs "
                f"prompt_format 'chat', not {prompt_format!r}"
            )
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return str(text)
    return format_prompt(tokenizer, record["prompt"], prompt_format, record.get("input") or "", alpaca_template)


def instruction_text(record: dict) -> str:
    """What an editor or judge reads as the instruction: the prompt, followed by AlpacaFarm's ``input`` when
    the record has one (the chat template places it the same way)."""
    extra = record.get("input") or ""
    return f"{record['prompt']}\n\n{extra}" if extra else record["prompt"]

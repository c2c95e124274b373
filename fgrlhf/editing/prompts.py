"""The minimal-edit prompt shared by the LLM editors (Claude and a local HF model), and its reply parser.

PROMPT_VERSION is part of every cache key: change it whenever the wording changes, so cached edits made
with an older prompt are not silently reused. v2 (issue 12) also asks the editor to make the response
follow the instruction and to explain a missing key step or term, as the paper's edits do.
"""

from __future__ import annotations

import re

PROMPT_VERSION = "minimal-edit-v2"

SYSTEM_PROMPT = (
    "You are a careful editor of AI assistant responses. You make minimal edits: you change a response "
    "only where the change makes it more helpful, honest or harmless, and you keep everything else "
    "exactly as it is, character for character."
)

_USER_TEMPLATE = """\
Below is an instruction given to an AI assistant and the assistant's response.

<instruction>
{instruction}
</instruction>

<response>
{response}
</response>

Edit the response minimally so that it is more helpful, honest and harmless:
- Fix factual errors, wrong or unhelpful statements, harmful content, needless filler, hedging and repetition.
- Where the response does not follow the instruction (wrong topic, form, length or a part left out), change
  the fewest words that make it follow the instruction.
- Where a key step or technical term is missing or unexplained, add a brief explanation (a clause or one
  short sentence) at that point.
- Change as few words as possible. Keep every other word, sentence, line break and formatting verbatim.
- Do not rewrite, reorder, shorten or extend the response beyond what these fixes need.
- If the response needs no change, return it unchanged.

Reply with the complete edited response inside <edited_response></edited_response> tags and nothing else."""

_REPLY = re.compile(r"<edited_response>(.*?)</edited_response>", re.DOTALL)


def user_message(instruction: str, response: str) -> str:
    return _USER_TEMPLATE.format(instruction=instruction, response=response)


def parse_reply(reply: str) -> str | None:
    """The edited response inside the tags, or None when the reply is malformed (no complete tag pair).

    A single newline right inside each tag is layout, not content, so it is dropped.
    """
    match = _REPLY.search(reply)
    if match is None:
        return None
    text = match.group(1)
    text = text[1:] if text.startswith("\n") else text
    return text[:-1] if text.endswith("\n") else text

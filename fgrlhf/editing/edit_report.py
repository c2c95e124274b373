"""What ``fgrlhf inspect-edits`` shows of an edit file: the token diff of an edit as spans of its texts,
quantiles and a text histogram of the changed fraction, and the examples as HTML."""

from __future__ import annotations

import html
import statistics

# (kind, text) segments of a merged diff view; kind is "equal", "del" or "ins".
Segment = tuple[str, str]


def diff_segments(tokenizer, original: str, edited: str) -> list[Segment]:
    """Token-level diff of two texts, as character spans of the texts themselves (no decode artefacts)."""
    from fgrlhf.algorithms.token_diff import align_tokens

    enc_o = tokenizer(original, add_special_tokens=False, return_offsets_mapping=True)
    enc_e = tokenizer(edited, add_special_tokens=False, return_offsets_mapping=True)

    def span(text: str, offsets: list, start: int, end: int) -> str:
        # From the start of the first token to the start of the next one, so whitespace is kept.
        lo = offsets[start][0] if start < len(offsets) else len(text)
        hi = offsets[end][0] if end < len(offsets) else len(text)
        return text[lo:hi]

    segments: list[Segment] = []
    alignment = align_tokens(enc_o["input_ids"], enc_e["input_ids"])
    for tag, i1, i2, j1, j2 in alignment.opcodes:
        if tag == "equal":
            segments.append(("equal", span(original, enc_o["offset_mapping"], i1, i2)))
            continue
        if i2 > i1:
            segments.append(("del", span(original, enc_o["offset_mapping"], i1, i2)))
        if j2 > j1:
            segments.append(("ins", span(edited, enc_e["offset_mapping"], j1, j2)))
    return segments


def quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=20, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 19
    return {
        "min": ordered[0],
        "p10": cuts[1],
        "p25": cuts[4],
        "p50": cuts[9],
        "p75": cuts[14],
        "p90": cuts[17],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def histogram(values: list[float], bins: int, width: int = 40) -> list[str]:
    counts = [0] * bins
    for value in values:
        counts[min(int(value * bins), bins - 1)] += 1
    peak = max(counts) or 1
    return [
        f"  [{i / bins:.2f}, {(i + 1) / bins:.2f}{']' if i == bins - 1 else ')'} "
        f"{'#' * round(width * count / peak):<{width}} {count}"
        for i, count in enumerate(counts)
    ]


def render_html(examples: list[tuple[dict, list[Segment]]], source: str) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>edits: {html.escape(source)}</title><style>",
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "pre{white-space:pre-wrap;background:#f7f7f7;padding:.8em;font-size:.95em}"
        "del{background:#fdd;color:#a00}ins{background:#dfd;color:#060;text-decoration:none}"
        ".meta{color:#666;font-size:.9em}",
        "</style></head><body>",
        f"<h1>Edits in {html.escape(source)}</h1>",
    ]
    for number, (record, segments) in enumerate(examples, start=1):
        body = "".join(
            html.escape(text) if kind == "equal" else f"<{kind}>{html.escape(text)}</{kind}>" for kind, text in segments
        )
        meta = (
            f"status {record['status']} · edit distance {record.get('edit_distance')} · "
            f"changed fraction {record.get('changed_fraction')} · {record.get('editor')}/{record.get('model')}"
        )
        parts += [
            f"<h2>Example {number}</h2>",
            f"<p class='meta'>{html.escape(meta)}</p>",
            f"<h3>Prompt</h3><pre>{html.escape(record['prompt'])}</pre>",
            f"<h3>Edit</h3><pre>{body}</pre>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)

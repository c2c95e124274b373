"""Statistics and highlighted examples of an ``fgrlhf edit`` output file.

  fgrlhf inspect-edits edits.jsonl [--examples 5] [--html edits.html] [--tokenizer smollm2]

Prints counts by status, quantiles and a text histogram of the changed fraction, and a few edited examples
with the removed tokens struck through in red and the added ones in green (token diff of the same
tokenizer the statistics use). ``--html`` writes the same examples with <del>/<ins> markup.
"""

from __future__ import annotations

import argparse
import html
import statistics
from collections import Counter
from pathlib import Path

# (kind, text) segments of a merged diff view; kind is "equal", "del" or "ins".
Segment = tuple[str, str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="edit records written by fgrlhf edit")
    parser.add_argument("--examples", type=int, default=3, help="edited examples to render (default 3)")
    parser.add_argument("--status", default="edited", help="status of the rendered examples (default edited)")
    parser.add_argument("--html", metavar="OUT.html", help="also write the examples as HTML")
    parser.add_argument("--tokenizer", default="smollm2", help="tokenizer of the diff (tiny/smollm2/path)")
    parser.add_argument("--bins", type=int, default=10, help="histogram bins over [0, 1]")


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
    return {"min": ordered[0], "p10": cuts[1], "p25": cuts[4], "p50": cuts[9], "p75": cuts[14],
            "p90": cuts[17], "max": ordered[-1], "mean": statistics.fmean(ordered)}


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
            html.escape(text) if kind == "equal" else f"<{kind}>{html.escape(text)}</{kind}>"
            for kind, text in segments
        )
        meta = (f"status {record['status']} · edit distance {record.get('edit_distance')} · "
                f"changed fraction {record.get('changed_fraction')} · {record.get('editor')}/{record.get('model')}")
        parts += [
            f"<h2>Example {number}</h2>",
            f"<p class='meta'>{html.escape(meta)}</p>",
            f"<h3>Prompt</h3><pre>{html.escape(record['prompt'])}</pre>",
            f"<h3>Edit</h3><pre>{body}</pre>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    from fgrlhf.data import EDIT_FIELDS, load_records
    from fgrlhf.models import load_tokenizer

    records = load_records(args.file, EDIT_FIELDS, allow_empty=("edited",))
    console = Console()
    statuses = Counter(record["status"] for record in records)
    console.print(f"[bold]{args.file}[/bold]: {len(records)} records")
    for status, count in statuses.most_common():
        console.print(f"  {status:<40} {count:>7}  ({100 * count / len(records):.1f}%)")

    fractions = [float(r["changed_fraction"]) for r in records
                 if r["status"] == "edited" and isinstance(r.get("changed_fraction"), (int, float))]
    console.print(f"\n[bold]changed fraction of edited records[/bold] (n={len(fractions)})")
    if fractions:
        console.print("  " + "  ".join(f"{name} {value:.3f}" for name, value in quantiles(fractions).items()))
        for line in histogram(fractions, args.bins):
            console.print(line, markup=False, highlight=False)

    chosen = [r for r in records if r["status"] == args.status][: args.examples]
    if not chosen:
        console.print(f"\nno records with status {args.status!r} to show")
        return 0
    tokenizer = load_tokenizer(args.tokenizer)
    examples = [(record, diff_segments(tokenizer, record["original"], record["edited"])) for record in chosen]
    styles = {"equal": "", "del": "strike red", "ins": "bold green"}
    for number, (record, segments) in enumerate(examples, start=1):
        text = Text()
        for kind, piece in segments:
            text.append(piece, style=styles[kind])
        title = (f"example {number}: {record['status']}, edit distance {record.get('edit_distance')}, "
                 f"changed fraction {record.get('changed_fraction')}")
        console.print(Panel(Text(record["prompt"]), title="prompt", title_align="left"))
        console.print(Panel(text, title=title, title_align="left"))
    if args.html:
        Path(args.html).write_text(render_html(examples, args.file), encoding="utf-8")
        console.print(f"wrote {args.html}")
    return 0

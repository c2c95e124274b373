"""Statistics and highlighted examples of an ``fgrlhf edit`` output file.

  fgrlhf inspect-edits edits.jsonl [--examples 5] [--html edits.html] [--tokenizer smollm2]

Prints counts by status, quantiles and a text histogram of the changed fraction, and a few edited examples
with the removed tokens struck through in red and the added ones in green (token diff of the same
tokenizer the statistics use). ``--html`` writes the same examples with <del>/<ins> markup.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="edit records written by fgrlhf edit")
    parser.add_argument("--examples", type=int, default=3, help="edited examples to render (default 3)")
    parser.add_argument("--status", default="edited", help="status of the rendered examples (default edited)")
    parser.add_argument("--html", metavar="OUT.html", help="also write the examples as HTML")
    parser.add_argument("--tokenizer", default="smollm2", help="tokenizer of the diff (tiny/smollm2/path)")
    parser.add_argument("--bins", type=int, default=10, help="histogram bins over [0, 1]")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    from fgrlhf.data.loading import EDIT_FIELDS, load_records
    from fgrlhf.editing.edit_report import diff_segments, histogram, quantiles, render_html
    from fgrlhf.models import load_tokenizer

    records = load_records(args.file, EDIT_FIELDS, allow_empty=("edited",))
    console = Console()
    statuses = Counter(record["status"] for record in records)
    console.print(f"[bold]{args.file}[/bold]: {len(records)} records")
    for status, count in statuses.most_common():
        console.print(f"  {status:<40} {count:>7}  ({100 * count / len(records):.1f}%)")

    fractions = [
        float(r["changed_fraction"])
        for r in records
        if r["status"] == "edited" and isinstance(r.get("changed_fraction"), (int, float))
    ]
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
        title = (
            f"example {number}: {record['status']}, edit distance {record.get('edit_distance')}, "
            f"changed fraction {record.get('changed_fraction')}"
        )
        console.print(Panel(Text(record["prompt"]), title="prompt", title_align="left"))
        console.print(Panel(text, title=title, title_align="left"))
    if args.html:
        Path(args.html).write_text(render_html(examples, args.file), encoding="utf-8")
        console.print(f"wrote {args.html}")
    return 0

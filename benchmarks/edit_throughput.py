"""Throughput of the edit pipeline (real anthropic SDK, retry layer, SQLite cache) against the local fake
Messages API with a fixed per-request latency, at several concurrency levels.

  python benchmarks/edit_throughput.py [--quick] [--latency 0.2] [--json OUT.json]

items/s counts the editing phase only (not the tokenizer load). The ideal is concurrency / latency; the
gap is client overhead (SDK request building, HTTP, cache commit) on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python benchmarks/NAME.py`: only benchmarks/ is on the path
    from _as_module import run_as_module

    run_as_module(__file__)

from fgrlhf.config import load_config
from fgrlhf.editing.config import EditConfig
from fgrlhf.editing.pipeline import run_edit
from tests.fake_messages_server import FakeMessagesServer

KEY = "sk-ant-benchmark-not-a-key"


def measure(server: FakeMessagesServer, workdir: Path, concurrency: int, items: int) -> dict:
    pairs = workdir / f"pairs-{concurrency}.jsonl"
    with pairs.open("w", encoding="utf-8") as handle:
        for index in range(items):
            text = f"Response {index} (c={concurrency}) explains teh answer in two short sentences. It is fine."
            handle.write(json.dumps({"prompt": f"Question {index}?", "chosen": "ok", "rejected": text}) + "\n")
    cfg = load_config(
        EditConfig,
        None,
        [
            "editor=anthropic",
            f"concurrency={concurrency}",
            "tokenizer=tiny",
            f"cache={workdir / f'cache-{concurrency}.sqlite'}",
        ],
    )
    before = server.count()
    summary = run_edit(cfg, pairs, workdir / f"edits-{concurrency}.jsonl", progress=False)
    assert summary.statuses == {"edited": items}, summary.statuses
    assert server.count() - before == items
    return {
        "concurrency": concurrency,
        "items": items,
        "latency_s": server.latency_s,
        "elapsed_s": round(summary.elapsed_s, 3),
        "items_per_s": round(summary.items_per_s, 2),
        "ideal_items_per_s": round(concurrency / server.latency_s, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer items (CI smoke run)")
    parser.add_argument("--latency", type=float, default=0.2, help="fake server latency per request (s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp, FakeMessagesServer(KEY, latency_s=args.latency) as server:
        os.environ["ANTHROPIC_API_KEY"] = KEY
        os.environ["ANTHROPIC_BASE_URL"] = server.base_url
        for concurrency in args.concurrency:
            # Enough items for several rounds of requests at each concurrency level.
            items = max(8, concurrency * (4 if args.quick else 12)) if concurrency > 1 else (8 if args.quick else 25)
            rows.append(measure(server, Path(tmp), concurrency, items))

    print("| concurrency | items | latency (s) | wall (s) | items/s | ideal items/s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['concurrency']} | {row['items']} | {row['latency_s']} | {row['elapsed_s']} | "
            f"{row['items_per_s']} | {row['ideal_items_per_s']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "edit_throughput", "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

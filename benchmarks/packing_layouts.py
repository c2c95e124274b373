"""Micro-batch layouts timed on one model (fgrlhf.workers.packing): padded rows in batch order, length-grouped
padded rows, and packed rows (position ids restarting per sequence), for a forward (the scorers' and
learners' evaluate) and a forward + backward of the response log-probs (a learner's micro-step).

    python benchmarks/packing_layouts.py --model smollm2 --rows 16 32 --micro 8 --json OUT

Prompts of 100-200 and responses of 20-128 tokens (uniform, seeded), the PPO step's shapes. One process, the
torch threads it is given (``--threads``); the CPU default of ``packing: auto`` follows these numbers.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def _lengths(rows: int, seed: int) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    return [rng.randint(100, 200) for _ in range(rows)], [rng.randint(20, 128) for _ in range(rows)]


def main(argv: list[str] | None = None) -> dict:
    import torch

    from fgrlhf.algorithms import ppo_core
    from fgrlhf.config import ModelConfig
    from fgrlhf.models import load_causal_lm, load_tokenizer
    from fgrlhf.workers.packing import lengths_of, lm_response_logits, micro_batches, plan_micro_batches

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--micro", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget per micro-batch instead")
    parser.add_argument("--layouts", nargs="+", default=["padded", "grouped", "packed"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(ModelConfig(name=args.model), tokenizer)
    vocab = model.config.vocab_size
    results = []
    for rows in args.rows:
        prompt_lens, response_lens = _lengths(rows, seed=rows)
        prompts = [torch.randint(3, vocab, (n,)).tolist() for n in prompt_lens]
        responses = [torch.randint(3, vocab, (n,)).tolist() for n in response_lens]
        lengths = lengths_of(prompts, responses)
        for layout in args.layouts:
            plan = plan_micro_batches(lengths, layout, args.micro, args.max_tokens)
            batches = [b for _, b in micro_batches(prompts, responses, tokenizer.pad_token_id, layout, plan)]

            def logprobs(batch):
                logits = lm_response_logits(model, batch.response_index, **batch.inputs(), use_cache=False)
                return ppo_core.logprobs_from_logits(logits.float(), batch.response_ids) * batch.response_mask

            def forward(batches=batches):
                with torch.no_grad():
                    for batch in batches:
                        logprobs(batch)

            def forward_backward(batches=batches):
                for batch in batches:
                    logprobs(batch).sum().backward()
                model.zero_grad(set_to_none=True)

            record = {
                "rows": rows,
                "layout": layout,
                "micro_batches": len(plan),
                "tokens": sum(lengths),
                "computed_tokens": sum(b.input_ids.numel() for b in batches),
            }
            for name, fn in (("forward_s", forward), ("forward_backward_s", forward_backward)):
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)
                record[name] = min(times)
            print(json.dumps(record), flush=True)
            results.append(record)
    out = {"model": args.model, "micro": args.micro, "max_tokens": args.max_tokens, "threads": args.threads}
    out["results"] = results
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()

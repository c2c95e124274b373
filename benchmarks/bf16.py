"""bf16 autocast against float32 on this CPU: speed of the forwards and backwards, and what changes.

  python benchmarks/bf16.py [--model smollm2] [--rows 16] [--prompt-tokens 150] [--response-tokens 64]
                            [--micro-batch 4] [--threads 2] [--repeats 2] [--ppo-steps 3] [--json OUT]

PPO-like shapes: ``--rows`` sequences of about ``--prompt-tokens`` prompt tokens (±20, so rows pad as in a
rollout) and up to ``--response-tokens`` response tokens, cut from the packaged AlpacaEval reference answers
(natural text, so the log-probs are those of likely tokens, not of random ids; fixed by the package, so the
inputs do not change with the docs). The batch runs in micro-batches of ``--micro-batch`` rows through the
project's own layout (``workers/packing.pack``), as the workers do.

Measured, float32 then ``torch.autocast(cpu, bfloat16)`` over the same float32 weights (``model.autocast``):

- ``forward_s`` / ``forward_backward_s``: the median over ``--repeats`` of the policy's no-grad forward of the
  batch, and of forward + backward of a PPO loss (what a learner's micro-step does);
- ``logprob_abs_diff_{max,mean}``: |Δ| of the response tokens' log-probs (the policy, reference and rollout
  forwards' output);
- ``token_reward_abs_diff_{max,mean}``: |Δ| of a token reward model's per-token rewards (a SmolLM2 backbone
  with a seeded head: the reward worker's and critic's forward);
- ``ppo``: ``--ppo-steps`` AdamW steps (lr 1e-5) of the clipped PPO loss on the batch with seeded advantages,
  from the same start in each precision: the loss at every step in both, and the final log-probs' |Δ|.

``decision``: bf16 is worth making the default where both timings are faster and every |Δ| is within
:data:`TOLERANCE` (docs/precision.md gives the reasons for each bound). One summary line goes to stdout; the
whole record to ``--json OUT``.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python benchmarks/NAME.py`: only benchmarks/ is on the path
    from _as_module import run_as_module

    run_as_module(__file__)

import torch

# The change bf16 may make and still be the default (docs/precision.md):
TOLERANCE = {
    # mean |Δ log π| well under the PPO clip (log 1.2 ≈ 0.18): the ratio's noise is a tenth of its clip range
    "logprob_abs_diff_mean": 0.02,
    # the same for a token reward, in units of the RM's own spread (its std over the batch's tokens)
    "token_reward_abs_diff_mean_over_std": 0.05,
    # after a few updates the loss follows the float32 run: |Δ loss| below 5 % of the float32 loss's scale
    "ppo_loss_rel_diff_max": 0.05,
}


def _batch(tokenizer, rows: int, prompt_tokens: int, response_tokens: int, seed: int):
    from fgrlhf.data.loading import ALPACA_EVAL_SET, load_records

    rng = random.Random(seed)
    # AlpacaEval has a few empty references (e.g. its koala "Make a slide to introduce Cantonese")
    records = load_records(ALPACA_EVAL_SET, ("reference",), allow_empty=("reference",))
    text = "\n\n".join(record["reference"] for record in records if record["reference"])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prompts, responses = [], []
    for _ in range(rows):
        p = prompt_tokens + rng.randint(-20, 20)
        r = rng.randint(response_tokens * 2 // 3, response_tokens)
        start = rng.randrange(0, len(ids) - p - r)
        prompts.append(ids[start : start + p])
        responses.append(ids[start + p : start + p + r])
    return prompts, responses


def _precision(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _logprobs(model, batches, bf16: bool, grad: bool = False) -> list:
    from fgrlhf.algorithms import ppo_core
    from fgrlhf.workers.packing import lm_response_logits

    out = []
    with torch.set_grad_enabled(grad), _precision(bf16):
        for batch in batches:
            logits = lm_response_logits(model, batch.response_index, **batch.inputs()).float()
            out.append(ppo_core.logprobs_from_logits(logits, batch.response_ids) * batch.response_mask)
    return out


def _ppo_loss(model, batch, old, advantages, bf16: bool):
    from fgrlhf.algorithms import ppo_core

    (logprobs,) = _logprobs(model, [batch], bf16, grad=True)
    loss, _ = ppo_core.policy_loss(logprobs, old, advantages, batch.response_mask, 0.2)
    return loss


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _abs_diff(a: list, b: list, masks: list) -> tuple[float, float]:
    diffs = torch.cat([(x - y).abs()[m.bool()] for x, y, m in zip(a, b, masks)])
    return float(diffs.max()), float(diffs.mean())


def run(args) -> dict:
    from fgrlhf.config import ModelConfig
    from fgrlhf.models import load_causal_lm, load_tokenizer
    from fgrlhf.reward.model import build_reward_model
    from fgrlhf.workers.packing import at_response, pack

    torch.set_num_threads(args.threads)
    cfg = ModelConfig(name=args.model)
    tokenizer = load_tokenizer(args.model)
    prompts, responses = _batch(tokenizer, args.rows, args.prompt_tokens, args.response_tokens, args.seed)
    parts = range(0, args.rows, args.micro_batch)
    batches = [
        pack(prompts[i : i + args.micro_batch], responses[i : i + args.micro_batch], tokenizer.pad_token_id)
        for i in parts
    ]
    masks = [b.response_mask for b in batches]
    generator = torch.Generator().manual_seed(args.seed)
    advantages = [torch.randn(m.shape, generator=generator) * m for m in masks]

    model = load_causal_lm(cfg, tokenizer).train()  # dropout is 0 in Llama: train() changes nothing computed
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    result: dict = {"model": args.model, "threads": args.threads, "rows": args.rows, "micro_batch": args.micro_batch}
    result["tokens"] = sum(int(b.attention_mask.sum()) for b in batches)
    logprobs = {"fp32": _logprobs(model, batches, False)}  # the old log-probs of every PPO loss below
    for name, bf16 in (("fp32", False), ("bf16", True)):
        _logprobs(model, batches[:1], bf16)  # warm-up: oneDNN picks its kernels on the first call
        result[f"forward_s_{name}"] = _timed(lambda bf16=bf16: _logprobs(model, batches, bf16), args.repeats)

        def forward_backward(bf16: bool = bf16) -> None:
            for batch, adv, old in zip(batches, advantages, logprobs["fp32"]):
                _ppo_loss(model, batch, old, adv, bf16).backward()
            model.zero_grad(set_to_none=True)

        result[f"forward_backward_s_{name}"] = _timed(forward_backward, args.repeats)
    logprobs["bf16"] = _logprobs(model, batches, True)
    result["logprob_abs_diff_max"], result["logprob_abs_diff_mean"] = _abs_diff(
        logprobs["fp32"], logprobs["bf16"], masks
    )

    ppo: dict = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        model.load_state_dict(start_state)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        losses = []
        for _ in range(args.ppo_steps):
            total = 0.0
            for batch, adv, old in zip(batches, advantages, logprobs["fp32"]):
                loss = _ppo_loss(model, batch, old, adv, bf16) / len(batches)
                loss.backward()
                total += float(loss.detach())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
        ppo[f"loss_{name}"] = losses
        ppo[f"final_logprobs_{name}"] = _logprobs(model, batches, False)
    scale = max(abs(x) for x in ppo["loss_fp32"]) or 1.0
    ppo_record = {
        "steps": args.ppo_steps,
        "loss_fp32": ppo["loss_fp32"],
        "loss_bf16": ppo["loss_bf16"],
        "loss_rel_diff_max": max(abs(a - b) for a, b in zip(ppo["loss_fp32"], ppo["loss_bf16"])) / scale,
    }
    ppo_record["final_logprob_abs_diff_max"], ppo_record["final_logprob_abs_diff_mean"] = _abs_diff(
        ppo["final_logprobs_fp32"], ppo["final_logprobs_bf16"], masks
    )
    result["ppo"] = ppo_record

    torch.manual_seed(args.seed)  # the seeded reward head
    rm = build_reward_model("token", cfg).eval()
    rewards = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        with torch.no_grad(), _precision(bf16):
            rewards[name] = [
                at_response(rm(b.input_ids, b.attention_mask).float(), b.response_index) * b.response_mask
                for b in batches
            ]
    result["token_reward_abs_diff_max"], result["token_reward_abs_diff_mean"] = _abs_diff(
        rewards["fp32"], rewards["bf16"], masks
    )
    real = torch.cat([r[m.bool()] for r, m in zip(rewards["fp32"], masks)])
    result["token_reward_std"] = float(real.std())

    result["speedup_forward"] = result["forward_s_fp32"] / result["forward_s_bf16"]
    result["speedup_forward_backward"] = result["forward_backward_s_fp32"] / result["forward_backward_s_bf16"]
    measured = {
        "logprob_abs_diff_mean": result["logprob_abs_diff_mean"],
        "token_reward_abs_diff_mean_over_std": result["token_reward_abs_diff_mean"] / result["token_reward_std"],
        "ppo_loss_rel_diff_max": ppo_record["loss_rel_diff_max"],
    }
    within = all(measured[key] <= bound for key, bound in TOLERANCE.items())
    faster = result["speedup_forward"] > 1.0 and result["speedup_forward_backward"] > 1.0
    result["tolerance"], result["measured_vs_tolerance"] = TOLERANCE, measured
    result["within_tolerance"], result["faster"] = within, faster
    result["decision"] = "bf16" if within and faster else "fp32"
    return result


def summary(r: dict) -> str:
    return (
        f"bf16 autocast vs fp32 ({r['model']}, {r['rows']} rows, {r['threads']} threads): forward "
        f"{r['forward_s_fp32']:.2f}s -> {r['forward_s_bf16']:.2f}s (x{r['speedup_forward']:.2f}), fwd+bwd "
        f"{r['forward_backward_s_fp32']:.2f}s -> {r['forward_backward_s_bf16']:.2f}s "
        f"(x{r['speedup_forward_backward']:.2f}); |dlogprob| max {r['logprob_abs_diff_max']:.3g} mean "
        f"{r['logprob_abs_diff_mean']:.3g}; |dreward| max {r['token_reward_abs_diff_max']:.3g} mean "
        f"{r['token_reward_abs_diff_mean']:.3g}; PPO loss rel diff {r['ppo']['loss_rel_diff_max']:.3g} over "
        f"{r['ppo']['steps']} steps; decision: {r['decision']}"
    )


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny or an HF checkpoint directory")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=150)
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ppo-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", type=Path)
    args = parser.parse_args(argv)
    result = run(args)
    print(summary(result))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``fgrlhf paper --dry-run``: ``fgrlhf plan`` for every stage's config, the Claude requests, tokens and price the
job implies, and an estimate of its GPU-hours. Nothing starts; the verdict says "fits" or what does not.

Counts come from the data when it is on this machine (the splits are computed, nothing is written), else from
``estimate.*``. Token counts of Claude are characters / ``estimate.chars_per_token``; compute is FLOPs
(6·params per trained token, 2·params per scored or generated token) at ``estimate.mfu`` of
``estimate.gpu_tflops``: a first-order estimate, printed with its assumptions.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from fgrlhf.pipelines.paper import SPLITS, make_splits, ppo_overrides, repo_file, rm_configs, rm_overrides, segment_ends
from fgrlhf.pipelines.paper_config import PaperConfig


@dataclass
class Sizes:
    """Records per split and mean characters of prompts, responses and references."""

    counts: dict[str, int]
    prompt_chars: float
    response_chars: float
    reference_chars: float
    measured: bool


def data_sizes(cfg: PaperConfig) -> Sizes:
    from fgrlhf.data.loading import DataError

    try:
        splits = make_splits(cfg)
    except DataError as exc:
        e = cfg.estimate
        if e.pairs is None:
            raise DataError(f"{exc} (for a dry run away from the data, set estimate.pairs)") from None
        n = e.pairs
        s = cfg.splits
        counts = {
            "rm_pairs": round(n * s.rm_pairs),
            "heldout_pairs": round(n * s.heldout_pairs),
            "ppo_prompts": e.ppo_prompts or round(n * s.ppo_prompts),
            "validation": s.max_validation or round(805 * s.validation),
            "eval": s.max_eval or round(805 * (1 - s.validation)),
        }
        return Sizes(counts, e.prompt_chars, e.response_chars, e.response_chars, False)
    pairs = splits["rm_pairs"] + splits["heldout_pairs"]
    refs = splits["validation"] + splits["eval"]
    return Sizes(
        {name: len(splits[name]) for name in SPLITS},
        statistics.fmean(len(p["prompt"]) for p in pairs),
        statistics.fmean(len(p["rejected"]) for p in pairs),
        statistics.fmean(len(r["reference"]) for r in refs),
        True,
    )


def claude_cost(cfg: PaperConfig, sizes: Sizes) -> dict:
    """Requests, tokens and USD of the editor and the judge (one request per comparison with
    ``eval.claude.positions`` random, two with both; batch prices where they use Message Batches)."""
    from fgrlhf.config import load_config
    from fgrlhf.editing.config import EditConfig
    from fgrlhf.editing.prompts import SYSTEM_PROMPT as EDIT_SYSTEM
    from fgrlhf.editing.prompts import user_message
    from fgrlhf.evaluation.judges import SYSTEM_PROMPT as JUDGE_SYSTEM
    from fgrlhf.evaluation.judges import judge_message

    e, c = cfg.estimate, sizes.counts
    tokens = lambda chars: chars / e.chars_per_token  # noqa: E731
    out = {"edit": {"requests": 0, "input_tokens": 0.0, "output_tokens": 0.0, "usd": 0.0}}
    out["judge"] = dict(out["edit"])
    editor, judge = cfg.uses_claude()
    if editor:
        edit = load_config(EditConfig, None, cfg.editor.overrides)
        n = c["rm_pairs"] + c["heldout_pairs"]
        text = EDIT_SYSTEM + user_message("x" * int(sizes.prompt_chars), "x" * int(sizes.response_chars))
        inp, outp = n * tokens(len(text)), n * (tokens(sizes.response_chars) + e.edit_thinking_tokens)
        price = edit.anthropic
        usd = (inp * price.input_usd_per_mtok + outp * price.output_usd_per_mtok) / 1e6
        out["edit"] = {
            "requests": n,
            "input_tokens": inp,
            "output_tokens": outp,
            "usd": usd * (edit.batch.price_factor if cfg.editor.batch else 1.0),
        }
    if judge:
        runs = len(cfg.ppo.arms) * len(cfg.ppo.seeds)
        comparisons = c["validation"] * (1 + runs * len(segment_ends(cfg))) + c["eval"] * (1 + runs)
        answer = min(sizes.reference_chars, cfg.eval.max_new_tokens * e.chars_per_token)
        text = JUDGE_SYSTEM + judge_message(
            "x" * int(sizes.prompt_chars), "x" * int(sizes.reference_chars), "x" * int(answer)
        )
        j = cfg.eval.claude
        n = j.requests_per_comparison() * comparisons
        inp, outp = n * tokens(len(text)), n * e.judge_output_tokens
        out["judge"] = {
            "requests": n,
            "input_tokens": inp,
            "output_tokens": outp,
            "usd": (inp * j.input_usd_per_mtok + outp * j.output_usd_per_mtok) / 1e6 * j.price_factor(),
        }
    return out


def plans(cfg: PaperConfig) -> list[tuple[str, dict, Any]]:
    """(stage, fgrlhf plan's verdict dict, typed config) of each RM and PPO arm; the RM a PPO arm will use is
    stood in for by the policy's architecture (an RM is its backbone plus a scalar head)."""
    from fgrlhf.runtime.planning import default_gpu_memory_gb, default_host_ram_gb, evaluate, plan_job

    e, found = cfg.estimate, []
    gpu_memory = e.gpu_memory_gb or default_gpu_memory_gb()
    rm_typed = rm_configs(cfg)  # also checks the two RMs' batch sizes
    stages = [
        (f"rm-{kind}", "rm", cfg.rm.sequence_config if kind == "sequence" else cfg.rm.token_config,
         [*rm_overrides(cfg, kind), f"model.name={cfg.policy}"])
        for kind in rm_typed
    ]  # fmt: skip
    for arm in cfg.ppo.arms:
        overrides = ppo_overrides(cfg, arm, cfg.ppo.seeds[0], cfg.policy, "prompts.jsonl", cfg.ppo.steps)
        stages.append((f"ppo-{arm}", "ppo", cfg.ppo.config, overrides))
    for name, kind, path, overrides in stages:
        _, typed, job = plan_job(repo_file(path), overrides, kind, cfg.architecture)
        ram = default_host_ram_gb(job)
        found.append((name, evaluate(job, gpu_memory, ram, e.gpus_per_node), typed))
    return found


def estimate_hours(cfg: PaperConfig, sizes: Sizes, planned: list[tuple[str, dict, Any]]) -> dict:
    from fgrlhf.runtime.planning import load_arch

    e = cfg.estimate
    per_gpu = e.gpu_tflops * 1e12 * e.mfu
    policy = load_arch(cfg.policy, None, cfg.architecture)
    p_lm, p_rm = policy.lm_params, policy.rm_params
    c = sizes.counts
    hours: dict[str, dict] = {}
    for name, plan, typed in planned:
        gpus = plan["gpus"]
        if name.startswith("rm-"):
            pairs = c["rm_pairs"]
            tokens = (
                2
                * pairs
                * typed.epochs
                * min(
                    typed.max_prompt_tokens + typed.max_response_tokens,
                    (sizes.prompt_chars + sizes.response_chars) / e.chars_per_token,
                )
            )
            flops = 6 * p_rm * tokens
        else:
            ppo = typed.ppo
            tokens = ppo.rollout_batch_size * (typed.prompts.max_prompt_tokens + typed.rollout.max_new_tokens)
            per_step = tokens * (2 * p_lm + 2 * (2 * p_lm + 2 * p_rm) + ppo.epochs * 6 * (p_lm + p_rm))
            flops = per_step * cfg.ppo.steps * len(cfg.ppo.seeds)
        gpu_hours = flops / per_gpu / 3600 if gpus else 0.0
        hours[name] = {"gpus": gpus, "gpu_hours": gpu_hours, "wall_hours": gpu_hours / gpus if gpus else None}
    runs = len(cfg.ppo.arms) * len(cfg.ppo.seeds)
    answers = (c["validation"] + c["eval"]) * (1 + runs * len(segment_ends(cfg)))
    gen_flops = answers * (cfg.eval.max_prompt_tokens + cfg.eval.max_new_tokens) * 2 * p_lm
    gpus = cfg.eval.num_gpus
    hours["evaluation"] = {
        "gpus": gpus,
        "gpu_hours": gen_flops / per_gpu / 3600 if gpus else 0.0,
        "wall_hours": gen_flops / per_gpu / 3600 / gpus if gpus else None,
    }
    return hours


def dry_run(cfg: PaperConfig, render_plan) -> tuple[bool, str]:
    """(fits, the text to print)."""
    sizes = data_sizes(cfg)
    planned = plans(cfg)
    lines = []
    for name, plan, _ in planned:
        lines += [f"== {name}: fgrlhf plan", render_plan(plan), ""]
    source = "measured from the data" if sizes.measured else "assumed (estimate.*; the data is not on this machine)"
    lines.append("records per split (" + source + "): " + ", ".join(f"{k} {v}" for k, v in sizes.counts.items()))
    cost = claude_cost(cfg, sizes)
    for who, spent in cost.items():
        lines.append(
            f"Claude {who}: {spent['requests']} requests, ~{spent['input_tokens'] / 1e6:.2f}M input + "
            f"~{spent['output_tokens'] / 1e6:.2f}M output tokens ≈ ${spent['usd']:.2f}"
        )
    hours = estimate_hours(cfg, sizes, planned)
    e = cfg.estimate
    lines.append(f"compute estimate ({e.gpu_tflops:g} TFLOP/s per GPU at {e.mfu:.0%} utilisation):")
    for name, h in hours.items():
        wall = f"{h['wall_hours']:.2f} h on {h['gpus']:g} GPU(s)" if h["wall_hours"] is not None else "CPU only"
        lines.append(f"  {name}: {h['gpu_hours']:.2f} GPU-hours ({wall})")
    total_usd = sum(spent["usd"] for spent in cost.values())
    gpu_hours = sum(h["gpu_hours"] for h in hours.values())
    failing = [name for name, plan, _ in planned if not plan["fits"]]
    verdict = (
        f"verdict: fits ({len(planned)} stage configs planned); Claude cost ≈ ${total_usd:.2f}; ≈ {gpu_hours:.1f} GPU-hours"
        if not failing
        else f"verdict: does NOT fit: {', '.join(failing)} (see their plans above); Claude cost ≈ ${total_usd:.2f}"
    )
    lines.append(verdict)
    return not failing, "\n".join(lines)

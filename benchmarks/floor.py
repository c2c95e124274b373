"""The compute floor of a PPO step: the same step's arithmetic with no framework around it.

  python benchmarks/floor.py [--model tiny|smollm2] [--steps 3] [--warmup 1] [--threads 1] [--json OUT]
                             [key=value ...]   # PPOTrainConfig overrides of configs/ppo-tiny-cpu.yaml

One process, one torch thread by default (like each fgrlhf actor and the TRL run of ``throughput.py``), the
models ``throughput.py --model`` builds (policy and reference the config's policy; reward model the
config's RM, or ``throughput.py``'s seeded SmolLM2 token RM; the critic initialised from the RM as
``fgrlhf ppo`` does), the config's rollout batch, prompts (the same per step: ``batch_indices``), response
length, minibatch and epochs. Nothing is padded: every sequence is generated alone (HF ``generate`` with
its KV cache, one prompt at a time) and every forward and backward sees one sequence at its own length.
A step, in phases (CPU seconds from psutil, user + system of this process, and wall):

- ``generate``: the rollout;
- ``logprobs``, ``reference``, ``reward``, ``value``: the four scoring forwards (no grad);
- ``advantages``: KL shaping, GAE and whitening (``compute_advantages``, as fgrlhf's driver does);
- ``train_policy``, ``train_critic``: ``ppo.epochs`` passes over the batch in minibatches of
  ``ppo.step_batch_size``, forward + backward per sequence, then clipping and an AdamW step per minibatch.

The phases are contiguous, so their CPU seconds add up to the step's. ``throughput.py`` calls
:func:`run_floor_apart` in the same invocation as fgrlhf and TRL and reports
``ratio_cpu_seconds_fgrlhf_vs_floor``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python benchmarks/NAME.py`: only benchmarks/ is on the path
    from _as_module import run_as_module

    run_as_module(__file__)

PHASES = (
    "generate",
    "logprobs",
    "reference",
    "reward",
    "value",
    "advantages",
    "train_policy",
    "train_critic",
)
log = logging.getLogger("benchmarks.floor")


class PhaseClock:
    """Contiguous phases: each :meth:`mark` closes the phase that ran since the previous mark."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self._last = self._now()

    def _now(self) -> tuple[float, float]:
        times = self._process.cpu_times()
        return times.user + times.system, time.perf_counter()

    def mark(self, phase: str) -> None:
        now = self._now()
        self.cpu[phase] = self.cpu.get(phase, 0.0) + now[0] - self._last[0]
        self.wall[phase] = self.wall.get(phase, 0.0) + now[1] - self._last[1]
        self._last = now


def reward_model_dir(cfg, workdir: Path) -> Path:
    """The RM directory the PPO run scores with; the config's random tiny RM is built as ``fgrlhf ppo`` does."""
    from fgrlhf.trainers.ppo.config import TINY_RMS
    from fgrlhf.trainers.ppo.inputs import save_tiny_reward_model

    if cfg.reward.model not in TINY_RMS:
        return Path(cfg.reward.model)
    path = workdir / f"floor_tiny_rm_{TINY_RMS[cfg.reward.model]}"
    if not path.is_dir():
        save_tiny_reward_model(TINY_RMS[cfg.reward.model], cfg.policy, path)
    return path


def run_floor(cfg, workdir: Path, warmup: int, threads: int = 1) -> dict:
    """Time ``cfg.steps - warmup`` floor steps after ``warmup`` untimed ones; medians and per-phase means."""
    import torch

    from fgrlhf.algorithms import ppo_core
    from fgrlhf.models import load_causal_lm, load_tokenizer
    from fgrlhf.reward.model import load_reward_model
    from fgrlhf.trainers.ppo.inputs import batch_indices, load_prompt_ids

    ppo, rollout = cfg.ppo, cfg.rollout
    if ppo.reward_mode not in ("token", "sequence", "fine_grained_sequence"):
        raise ValueError(f"the floor scores with a reward model; ppo.reward_mode={ppo.reward_mode!r} needs a gold")
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.policy.name)
    policy, reference = load_causal_lm(cfg.policy, tokenizer), load_causal_lm(cfg.policy, tokenizer)
    rm_dir = reward_model_dir(cfg, workdir)
    reward, critic = load_reward_model(rm_dir), load_reward_model(rm_dir)
    reference.eval()
    reward.eval()
    optimizers = {
        "policy": torch.optim.AdamW(
            policy.parameters(), lr=cfg.policy_learner.lr, weight_decay=cfg.policy_learner.weight_decay
        ),
        "critic": torch.optim.AdamW(
            critic.parameters(), lr=cfg.critic_learner.lr, weight_decay=cfg.critic_learner.weight_decay
        ),
    }
    _, prompt_ids = load_prompt_ids(cfg)
    eos = tokenizer.eos_token_id

    def response_logprobs(model, ids: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=ids).logits[:, prompt_len - 1 : -1]
        return ppo_core.logprobs_from_logits(logits, ids[:, prompt_len:])[0], logits

    def head_at_response(model, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
        return model(ids, torch.ones_like(ids))[0, prompt_len - 1 : -1]  # the state before each response token

    def padded(rows: list[torch.Tensor], width: int) -> torch.Tensor:
        out = torch.zeros(len(rows), width)
        for i, row in enumerate(rows):
            out[i, : row.numel()] = row.float()
        return out

    rows, clocks = [], []
    for step in range(cfg.steps):
        clock = PhaseClock()
        prompts = [prompt_ids[i] for i in batch_indices(len(prompt_ids), ppo.rollout_batch_size, step, cfg.seed)]
        policy.eval()  # eval mode to sample and score, train mode for the updates, as fgrlhf's workers do
        critic.eval()
        sequences = []
        with torch.no_grad():
            for prompt in prompts:
                out = policy.generate(
                    input_ids=torch.tensor([prompt]),
                    attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                    max_new_tokens=rollout.max_new_tokens,
                    do_sample=True,
                    temperature=rollout.temperature,
                    top_p=rollout.top_p,
                    eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
                )
                sequences.append(out)  # stops at EOS: each sequence at its own length
            clock.mark("generate")
            lens = [len(p) for p in prompts]
            old_logprobs = [response_logprobs(policy, s, n)[0] for s, n in zip(sequences, lens, strict=True)]
            clock.mark("logprobs")
            ref_logprobs = [response_logprobs(reference, s, n)[0] for s, n in zip(sequences, lens, strict=True)]
            clock.mark("reference")
            # Both RM kinds read the head at the response tokens; a token RM scores each (r_t), a sequence
            # RM its last (EOS).
            token_scores = [reward(s, torch.ones_like(s))[0, n:] for s, n in zip(sequences, lens, strict=True)]
            clock.mark("reward")
            old_values = [head_at_response(critic, s, n) for s, n in zip(sequences, lens, strict=True)]
            clock.mark("value")
            width = max(s.size(1) - n for s, n in zip(sequences, lens, strict=True))
            mask = padded([torch.ones(s.size(1) - n) for s, n in zip(sequences, lens, strict=True)], width)
            scores = padded(token_scores, width)
            task = (
                {"token_rewards": scores}
                if ppo.reward_mode == "token"
                else {"sequence_reward": reward.sequence_scores(scores, mask)}
            )
            result = ppo_core.compute_advantages(
                ppo.reward_mode,
                mask,
                padded(old_logprobs, width),
                padded(ref_logprobs, width),
                padded(old_values, width),
                kl_coef=ppo.kl_coef,
                kl_estimator=ppo.kl_estimator,
                kl_clamp=ppo.kl_clamp,
                center_tokens=ppo.center_token_rewards,
                reward_clip=ppo.reward_clip,
                whiten_rewards=ppo.whiten_rewards,
                whiten_advantages=ppo.whiten_advantages,
                gamma=ppo.gamma,
                lam=ppo.lam,
                **task,
            )
            clock.mark("advantages")
        policy.train()
        critic.train()
        for role, model, learner in (
            ("policy", policy, cfg.policy_learner),
            ("critic", critic, cfg.critic_learner),
        ):
            for _ in range(ppo.epochs):
                for start in range(0, len(sequences), ppo.step_batch_size):
                    chunk = range(start, min(start + ppo.step_batch_size, len(sequences)))
                    for i in chunk:
                        n, length = lens[i], sequences[i].size(1) - lens[i]
                        m = mask[i : i + 1, :length]
                        if role == "policy":
                            new, logits = response_logprobs(policy, sequences[i], n)
                            loss, _ = ppo_core.policy_loss(
                                new[None],
                                old_logprobs[i][None],
                                result.advantages[i : i + 1, :length],
                                m,
                                ppo.clip_eps,
                            )
                            if ppo.entropy_coef:
                                entropy = ppo_core.masked_mean(ppo_core.entropy_from_logits(logits), m)
                                loss = loss - ppo.entropy_coef * entropy
                        else:
                            values = head_at_response(critic, sequences[i], n)
                            loss, _ = ppo_core.value_loss(
                                values[None],
                                old_values[i][None],
                                result.returns[i : i + 1, :length],
                                m,
                                ppo.value_clip_eps,
                            )
                            loss = ppo.vf_coef * loss
                        (loss / len(chunk)).backward()
                    if learner.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), learner.grad_clip)
                    optimizers[role].step()
                    optimizers[role].zero_grad(set_to_none=True)
            clock.mark(f"train_{role}")
        if step >= warmup:
            clocks.append(clock)
            rows.append([s.size(1) - n for s, n in zip(sequences, lens, strict=True)])
    if not clocks:
        raise ValueError(f"no measured floor step: {cfg.steps} steps, {warmup} warm-up")
    median, mean = statistics.median, statistics.fmean
    cpu_all = [sum(c.cpu.values()) for c in clocks]
    return {
        "step_seconds": median(sum(c.wall.values()) for c in clocks),
        "step_seconds_all": [sum(c.wall.values()) for c in clocks],
        "cpu_seconds_per_step": median(cpu_all),
        "cpu_seconds_all": cpu_all,
        # Means over the measured steps, so the phases add up to the mean step.
        "cpu_seconds_per_step_mean": mean(cpu_all),
        "phase_cpu_seconds": {name: mean(c.cpu[name] for c in clocks) for name in PHASES},
        "phase_wall_seconds": {name: mean(c.wall[name] for c in clocks) for name in PHASES},
        "response_lengths": rows,  # per measured step, each response's tokens
        "torch_threads": threads,
    }


def run_floor_apart(cfg, workdir: Path, warmup: int, threads: int = 1) -> dict:
    """:func:`run_floor` in a fresh process (its models and optimizer states leave with it; its thread count
    does not leak into the caller)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_floor, cfg, workdir, warmup, threads).result()


def render(floor: dict) -> str:
    lines = [
        "| floor phase | CPU s / step (mean) | wall s / step (mean) |",
        "| --- | ---: | ---: |",
        *[
            f"| {name} | {floor['phase_cpu_seconds'][name]:.3f} | {floor['phase_wall_seconds'][name]:.3f} |"
            for name in PHASES
        ],
        f"| step (median) | {floor['cpu_seconds_per_step']:.3f} | {floor['step_seconds']:.3f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import throughput
    from benchmarks.common import write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=throughput.CONFIG)
    parser.add_argument("--model", choices=throughput.MODELS, default="tiny")
    parser.add_argument("--steps", type=int, default=3, help="measured steps")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and not measured")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", metavar="OUT", type=Path)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cfg = throughput.load_cfg(argparse.Namespace(**vars(args), quick=False, learner_ranks=None), workdir)
        cfg = cfg.model_copy(update={"steps": args.warmup + args.steps})
        if args.model == "smollm2":
            throughput.save_token_rm(cfg, workdir / throughput.SMOLLM2_RM)
        result = run_floor(cfg, workdir, args.warmup, args.threads)
    print(render(result))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

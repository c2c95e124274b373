"""The PPO loop with token-level rewards (orchestration only: no model code here).

One step, one method per phase: prompts → :meth:`PPOTrainer._rollout` (the rollout actors generate) →
:meth:`~PPOTrainer._gold` (the gold hook, when set) → :meth:`~PPOTrainer._score` (in parallel: the RM scores,
the reference model gives log-probs and the learners keep their shards and give old log-probs/values; the
token ids go to every actor once, through the object store) → :meth:`~PPOTrainer._advantages` (rewards per
``ppo.reward_mode``, KL shaping, GAE and whitening on the driver:
:func:`fgrlhf.algorithms.ppo_core.compute_advantages`) → :meth:`~PPOTrainer._train` (policy and critic PPO
updates in parallel; each rank receives only its shard's advantages or returns) → :meth:`~PPOTrainer._push`
(the policy's weights to the rollout actors). Metrics go to ``DIR/metrics.jsonl``, TensorBoard (``DIR/tb``),
the Ray dashboard and a tqdm bar; checkpoints to ``DIR/checkpoints/step_N`` (resumable); the final policy to
``DIR/final`` as an HF checkpoint. DIR is a run directory of :mod:`fgrlhf.runtime.run_dir` (``PPO_RUN``: a used one
needs --resume or --overwrite).

``ppo.async_rollout``: the rollout actors generate batch k+1 while the learners score and train on batch k
(one step off-policy, see :meth:`PPOTrainer._rollout`); ``rollout_staleness`` in the metrics is the number
of updates between the weights that sampled a batch and those trained on it (0 in the synchronous loop, 1
after the first async step).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgrlhf.runtime.device_stats import step_gpu_metrics
from fgrlhf.runtime.run_dir import RunDir, open_run
from fgrlhf.trainers.ppo.batch import RolloutBatch
from fgrlhf.trainers.ppo.cluster import Cluster
from fgrlhf.trainers.ppo.config import PPO_RUN, TINY_RMS, PPOTrainConfig, StopAtGold
from fgrlhf.trainers.ppo.guards import DriftMonitor, ShapingState
from fgrlhf.trainers.ppo.inputs import batch_indices, load_prompt_ids, prefix_gold_scores, save_tiny_reward_model
from fgrlhf.trainers.ppo.metrics import MetricsSink, gpu_actors, step_metrics

log = logging.getLogger(__name__)

Gold = Callable[[list[str], list[str]], list[float]]


def gold_target_reached(golds: list[float], stop: StopAtGold | None) -> bool:
    """Whether the mean of the last ``stop.window`` gold values is ≥ ``stop.target`` (never before a full
    window; never without ``stop``)."""
    return stop is not None and len(golds) >= stop.window and statistics.fmean(golds[-stop.window :]) >= stop.target


@dataclass
class InFlight:
    """A generation submitted to the rollout actors, not yet collected: per actor, in rank order, the refs of
    its response shard, of its ``generation_info`` and (async) of its behaviour log-probs."""

    batch: RolloutBatch
    responses: list[Any]
    infos: list[Any]
    logprobs: list[Any] = field(default_factory=list)


def _pad_to(tensor, width: int):
    import torch.nn.functional as F

    return F.pad(tensor, (0, width - tensor.size(1)))


class PPOTrainer:
    cluster: Cluster  # the job's actors, built by run() before any step

    def __init__(self, cfg: PPOTrainConfig, run: RunDir):
        """``run``: ``--out`` opened with ``open_run(path, PPO_RUN, cfg, ...)`` (see :func:`train`)."""
        self.cfg, self.rundir, self.out_dir = cfg, run, run.path
        self.phase_seconds: dict[str, float] = {}
        self.golds: list[float] = []  # gold_reward_mean of every logged step (stop_at_gold)
        self.pending: InFlight | None = None  # async_rollout: the next step's batch, being generated
        self.shaping = ShapingState.start(cfg.ppo)  # replaced by a checkpoint's on --resume (run)
        self.eos_token_id: int | None = None  # the policy tokenizer's (ppo.no_eos_penalty)

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + time.perf_counter() - start

    def _resolve_reward_model(self) -> None:
        """``reward.model: tiny-token|tiny-sequence`` builds a random tiny RM in DIR/tiny_rm (smoke runs)."""
        name = self.cfg.reward.model
        if name not in TINY_RMS:
            return
        path = self.out_dir / f"tiny_rm_{TINY_RMS[name]}"
        if not path.is_dir():
            save_tiny_reward_model(TINY_RMS[name], self.cfg.policy, path)
        self.cfg = self.cfg.model_copy(update={"reward": self.cfg.reward.model_copy(update={"model": str(path)})})

    def run(self) -> dict:
        import ray
        from tqdm import tqdm

        from fgrlhf.envs import load_gold
        from fgrlhf.models import load_tokenizer

        texts, prompt_ids = load_prompt_ids(self.cfg)
        gold = load_gold(self.cfg.gold_reward) if self.cfg.gold_reward is not None else None
        self.rundir.start()  # after the inputs load: bad input loses nothing
        self._resolve_reward_model()
        cfg = self.cfg
        tokenizer = load_tokenizer(cfg.policy.name)
        self.eos_token_id = tokenizer.eos_token_id

        start_step = 0
        latest = self.rundir.resume_checkpoint()
        self.shaping = ShapingState.start(cfg.ppo, latest.state if latest is not None else None)
        if self.rundir.mode == "resume" and latest is None:
            log.info("--resume: no complete checkpoint under %s, starting at step 0", self.out_dir)
        self.cluster = cluster = Cluster(cfg)
        try:
            if latest is not None:
                start_step, path = latest.step, latest.path
                ray.get(
                    cluster.policy.submit("load_checkpoint", str(path / "policy"), "ds")
                    + cluster.critic.submit("load_checkpoint", str(path / "critic"), "ds")
                )
                log.info("resumed from %s (step %d)", path, start_step)
            # The checkpoint holds the policy after start_step updates. An async run's batch that was in
            # flight when it was written is not in it: the first resumed step generates its batch anew.
            cluster.policy_version = start_step
            cluster.resync_weights()  # rollout actors start from the learner's (possibly resumed) weights
            sink = MetricsSink(self.out_dir, start_step)
            record: dict = {}
            golds = self.golds = [r["gold_reward_mean"] for r in sink.history if "gold_reward_mean" in r]
            drift = DriftMonitor.resume(cfg.ppo.drift, sink.history)
            bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="ppo", unit="step")
            for step in bar:
                if gold_target_reached(golds, cfg.stop_at_gold):  # also a resumed run that had stopped here
                    assert cfg.stop_at_gold is not None  # never reached without it
                    log.info("stop_at_gold: the trailing gold mean reached %s", cfg.stop_at_gold.target)
                    break
                record = self._step(step, texts, prompt_ids, tokenizer, gold)
                done = step + 1
                if cfg.stop_at_gold is not None:
                    golds.append(record["gold_reward_mean"])
                    record["stopped_at_gold"] = gold_target_reached(golds, cfg.stop_at_gold)
                record["alarms"] = drift.check(record)
                if cfg.ppo.drift.stop and record["alarms"]:
                    record["stopped_by_drift"] = [alarm["kind"] for alarm in record["alarms"]]
                last = done == cfg.steps or record.get("stopped_at_gold") or record.get("stopped_by_drift")
                if (cfg.save_every and done % cfg.save_every == 0) or last:
                    record["phase_seconds"]["checkpoint"] = self._save_checkpoint(done)
                sink.write_step(record)
                bar.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl_mean']:.4f}")
                if record.get("stopped_by_drift"):
                    log.warning(
                        "ppo.drift.stop: run ended after step %d (%s)", done, ", ".join(record["stopped_by_drift"])
                    )
                    self.pending = None  # an async run's next batch (already collected) is not trained on
                    break
            bar.close()
            sink.close()
            with self.rundir.staging_final() as partial:  # a crash mid-save never leaves a half-written final/
                cluster.policy.all("save_hf", str(partial))
            self.rundir.finish(record)
            return record
        finally:
            cluster.shutdown()

    # --- one step ---------------------------------------------------------------------------------------------
    def _step(self, step: int, texts: list[str], prompt_ids: list[list[int]], tokenizer, gold: Gold | None) -> dict:
        self.phase_seconds = {}
        start = time.perf_counter()
        batch = self.pending.batch if self.pending is not None else self._batch(step, prompt_ids)
        with self._phase("rollout"):
            self._rollout(batch)
        if gold is not None:
            with self._phase("gold"):
                self._gold(batch, [texts[i] for i in batch.indices], tokenizer, gold)
        if self.cfg.ppo.async_rollout and self._continues(batch):
            with self._phase("rollout"):
                self.pending = self._launch(self._batch(step + 1, prompt_ids))
        with self._phase("score"):
            self._score(batch)
        with self._phase("advantages"):
            self._advantages(batch)
        with self._phase("train"):
            policy_stats, critic_stats = self._train(batch)
        if self.pending is not None:
            with self._phase("rollout"):  # the part of the next generation that training did not hide
                self.cluster.recovering(self._await_pending)
        with self._phase("weight_push"):
            self._push()
        # Under async_rollout the rollout phase is only the wait for a generation that overlapped the other
        # phases: the rollout's speed is then measured by the actors' own generation time.
        rollout_seconds = self.phase_seconds["rollout"]
        if self.cfg.ppo.async_rollout:
            assert batch.generation_seconds is not None  # filled in by _collect
            rollout_seconds = batch.generation_seconds
        record = step_metrics(
            batch,
            policy_stats,
            critic_stats,
            self.phase_seconds,
            time.perf_counter() - start,
            self.cluster.restarts,
            rollout_seconds,
            kl_coef=self.shaping.kl_coef,
            reward_scale=self.shaping.reward_scale,
            repetition_ngram=self.cfg.ppo.drift.ngram,
        )
        # each GPU actor's memory (peak: this step's) and utilisation, after every phase; no call without GPUs
        record.update(step_gpu_metrics(gpu_actors(self.cluster)))
        self.shaping.update_kl_coef(self.cfg.ppo, record["kl_seq_mean"], len(batch.indices))
        return record

    def _batch(self, step: int, prompt_ids: list[list[int]]) -> RolloutBatch:
        indices = batch_indices(len(prompt_ids), self.cfg.ppo.rollout_batch_size, step, self.cfg.seed)
        return RolloutBatch(step, indices, [prompt_ids[i] for i in indices])

    def _continues(self, batch: RolloutBatch) -> bool:
        """Whether a step follows ``batch``'s: not after the last, nor once its gold meets ``stop_at_gold``
        (known before training), so the run never ends with a generation in flight."""
        golds = self.golds + ([statistics.fmean(batch.gold)] if batch.gold is not None else [])
        return batch.step + 1 < self.cfg.steps and not gold_target_reached(golds, self.cfg.stop_at_gold)

    def _rollout(self, batch: RolloutBatch) -> None:
        """``batch``'s responses: the generation launched for it during the previous step (async_rollout), or
        one launched now. One that failed (a rollout actor died) is launched again once the restarted actor
        has the current weights, so that batch is sampled by the policy it trains (staleness 0).

        Off-policy correction under async_rollout: batch k (k ≥ 1), launched during step k−1, is sampled by the
        policy after k−1 updates while the learners, updated k times, train on it. The PPO ratio π_θ/π_old is an importance weight for
        samples drawn from π_old, so π_old must be the policy that sampled them: the rollout actors give
        those log-probs (``RolloutWorker.behaviour_logprobs``, right after ``generate``, with the same weights) and
        the policy learners take them as their old log-probs instead of recomputing them. Recomputing with
        the learners' current weights (what a synchronous step does, where the two coincide) would start
        the ratio at 1 as if the batch were on-policy and ignore the update it missed. The same log-probs
        are the batch's ``old_logprobs`` for the KL shaping and metrics, as in the synchronous loop, where
        they also belong to the sampling policy. The critic's values are still its current ones: a baseline
        needs no correction."""
        import ray
        import torch

        flight, self.pending = self.pending, None

        def generate() -> None:
            nonlocal flight
            current, flight = flight or self._launch(batch), None
            self._collect(current)

        self.cluster.recovering(generate)
        assert batch.response_ids is not None  # filled in by _collect
        batch.refs = (ray.put(batch.prompt_ids), ray.put(batch.response_ids))
        batch.mask = torch.zeros(len(batch.response_ids), max(len(r) for r in batch.response_ids))
        for row, r in enumerate(batch.response_ids):
            batch.mask[row, : len(r)] = 1.0

    def _launch(self, batch: RolloutBatch) -> InFlight:
        """Submit ``batch``'s generation (each rollout actor a contiguous shard, its own seed), nothing waited
        for. Each actor runs its calls in submission order, so a push submitted later applies after it."""
        from fgrlhf.workers.packing import split

        cfg, rollout = self.cfg, self.cluster.rollout
        seeds = [cfg.seed * 1_000_003 + batch.step * 101 + i for i in range(len(rollout))]
        shards = split(batch.prompt_ids, len(rollout))
        responses = rollout.submit_each(
            "generate",
            [
                (shard, cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, seed)
                for shard, seed in zip(shards, seeds, strict=True)
            ],
        )
        flight = InFlight(batch, responses, rollout.submit("generation_info"))
        if cfg.reuses_rollout_logprobs:  # recorded while sampling: no forward for them (see its description)
            flight.logprobs = rollout.submit("sampled_logprobs")
        elif cfg.ppo.async_rollout:
            flight.logprobs = rollout.submit_each("behaviour_logprobs", list(zip(shards, responses, strict=True)))
        return flight

    def _collect(self, flight: InFlight) -> None:
        """Wait for ``flight`` and fill its batch: responses, the sampling policy's version and generation
        seconds, and (async, or ``reuses_rollout_logprobs``) its log-probs as the batch's old log-probs."""
        import ray
        import torch

        batch = flight.batch
        batch.response_ids = [r for part in ray.get(flight.responses) for r in part]
        infos = ray.get(flight.infos)
        batch.policy_version = min(info["version"] for info in infos)
        batch.generation_seconds = max(info["seconds"] for info in infos)
        if flight.logprobs:
            parts = ray.get(flight.logprobs)
            width = max(part.size(1) for part in parts)
            batch.old_logprobs = torch.cat([_pad_to(part, width) for part in parts])

    def _await_pending(self) -> None:
        """Wait for the next step's generation before the push. The push would queue behind it on each rollout
        actor anyway; waiting here keeps the generation out of the push group's ``weight_sync.timeout_s``. A
        failed one (an actor died) is dropped, and :meth:`_rollout` launches it again."""
        import ray

        flight = self.pending
        if flight is None:  # dropped by a failed wait that the restart handling now retries
            return
        try:
            ray.get(flight.responses + flight.infos + flight.logprobs)
        except BaseException:
            self.pending = None
            raise

    def _gold(self, batch: RolloutBatch, prompt_texts: list[str], tokenizer, gold: Gold) -> None:
        """The gold of each response, and in ``oracle_token`` mode of every prefix (one gold call)."""
        assert batch.response_ids is not None  # gold follows the rollout
        if self.cfg.ppo.reward_mode == "oracle_token":
            batch.prefix_gold = prefix_gold_scores(gold, prompt_texts, batch.response_ids, tokenizer)
            # the full response is its own last prefix: the sequence gold comes for free
            batch.gold = [float(batch.prefix_gold[row, len(r)]) for row, r in enumerate(batch.response_ids)]
        else:
            batch.gold = gold(prompt_texts, tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True))

    def _score(self, batch: RolloutBatch) -> None:
        """All at once: reference log-probs, the learners' old log-probs/values (each rank keeps its shard for
        the update; async_rollout: the policy ranks keep the sampler's log-probs, see :meth:`_rollout`) and,
        unless the reward is the gold, the RM's scores."""
        import ray
        import torch

        from fgrlhf.workers.packing import inverse_order

        cluster, refs = self.cluster, batch.refs
        assert refs is not None and batch.response_ids is not None  # put by _rollout
        reference, reward = cluster.reference, cluster.reward
        assert reference is not None and reward is not None  # set once Cluster() returned
        oracle = self.cfg.ppo.reward_mode.startswith("oracle_")
        order = batch.rank_orders = {role: self._rank_order(batch, role) for role in ("policy", "critic")}
        prompts, responses = batch.prompt_ids, batch.response_ids
        puts = {tuple(range(len(prompts))): refs}  # one object-store copy per row order

        def rows(role: str) -> tuple:
            key = tuple(order[role])
            if key not in puts:
                puts[key] = ray.put([prompts[i] for i in key]), ray.put([responses[i] for i in key])
            return puts[key]

        sampled = () if batch.old_logprobs is None else (ray.put(batch.old_logprobs[order["policy"]]),)

        def score() -> list:
            futures = [
                reference.logprobs.remote(*refs),
                cluster.policy.submit("evaluate", *rows("policy"), *sampled),
                cluster.critic.submit("evaluate", *rows("critic")),
            ]
            if not oracle:  # the oracle modes' reward is the gold: the RM is not asked
                futures.append(reward.score.remote(*refs))
            return [ray.get(f) for f in futures]

        ref_logprobs, old_logprobs, old_values, *rm = cluster.recovering(score)
        width = ref_logprobs.size(1)
        batch.ref_logprobs = ref_logprobs
        if not sampled:  # back to batch order
            batch.old_logprobs = torch.cat([_pad_to(t, width) for t in old_logprobs])[inverse_order(order["policy"])]
        batch.old_values = torch.cat([_pad_to(t, width) for t in old_values])[inverse_order(order["critic"])]
        if rm:
            batch.rm_sequence, batch.rm_token = rm[0]["sequence"], rm[0].get("token")

    def _advantages(self, batch: RolloutBatch) -> None:
        """Rewards to advantages (:func:`~fgrlhf.algorithms.ppo_core.compute_advantages`) with the run's shaping
        state: on the first batch the task reward's scale (``ppo.reward_scale: initial_std``) and the length
        penalty's target are measured and fixed for the run."""
        import torch

        from fgrlhf.algorithms import ppo_core

        ppo, shaping = self.cfg.ppo, self.shaping
        if ppo.reward_mode == "token" and batch.rm_token is None:
            raise ValueError("ppo.reward_mode=token needs a TokenRewardModel as reward.model")
        # filled in by _rollout and _score
        assert batch.mask is not None and batch.old_logprobs is not None and batch.response_ids is not None
        assert batch.ref_logprobs is not None and batch.old_values is not None
        width = batch.mask.size(1)
        task_inputs = {
            "sequence_reward": batch.sequence_reward if ppo.reward_mode in ppo_core.SEQUENCE_MODES else None,
            "token_rewards": batch.rm_token if ppo.reward_mode == "token" else None,
            "prefix_scores": _pad_to(batch.prefix_gold, width + 1) if ppo.reward_mode == "oracle_token" else None,
        }
        lengths = batch.mask.sum(1)
        task = ppo_core.task_rewards(ppo.reward_mode, batch.mask, center_tokens=ppo.center_token_rewards, **task_inputs)
        shaping.measure(ppo, batch.step, ppo_core.return_scale(task, batch.mask), float(lengths.mean()))
        penalties = []
        if ppo.length_penalty is not None and shaping.length_target is not None:
            penalties.append(ppo_core.length_penalty(lengths, ppo.length_penalty.coef, shaping.length_target))
        if ppo.no_eos_penalty is not None:
            budget = self.cfg.rollout.max_new_tokens  # a shorter response stopped at an EOS, which it keeps
            ended = [len(r) < budget or (bool(r) and r[-1] == self.eos_token_id) for r in batch.response_ids]
            penalties.append(ppo_core.no_eos_penalty(torch.tensor(ended), ppo.no_eos_penalty))
        batch.result = ppo_core.compute_advantages(
            ppo.reward_mode,
            batch.mask,
            batch.old_logprobs,
            batch.ref_logprobs,
            batch.old_values,
            kl_coef=shaping.kl_coef,
            kl_estimator=ppo.kl_estimator,
            kl_clamp=ppo.kl_clamp,
            center_tokens=ppo.center_token_rewards,
            reward_scale=shaping.reward_scale,
            reward_clip=ppo.reward_clip,
            penalty=torch.stack(penalties).sum(0) if penalties else None,
            whiten_rewards=ppo.whiten_rewards,
            whiten_advantages=ppo.whiten_advantages,
            gamma=ppo.gamma,
            lam=ppo.lam,
            **task_inputs,
        )

    def _rank_order(self, batch: RolloutBatch, role: str) -> list[int]:
        """The order in which ``role``'s learner group takes the batch's rows, rank r the r-th contiguous equal
        shard (:func:`~fgrlhf.workers.packing.rank_order`). Per-row results come back through its inverse."""
        from fgrlhf.workers.packing import lengths_of, rank_order

        assert batch.response_ids is not None  # filled in by _rollout
        lengths = lengths_of(batch.prompt_ids, batch.response_ids)
        return rank_order(lengths, len(getattr(self.cluster, role)), getattr(self.cfg, f"{role}_learner").balance_ranks)

    def _train(self, batch: RolloutBatch) -> tuple[list[dict], list[dict]]:
        """Policy and critic updates at once; rank r gets rows r·B/W .. (r+1)·B/W of its targets in the group's
        :meth:`_rank_order` as :meth:`_score` fixed it, the shard each rank kept there."""
        import ray

        from fgrlhf.workers.learner_worker import PPOUpdate

        ppo, cluster, seed = self.cfg.ppo, self.cluster, self.cfg.seed + batch.step
        assert batch.result is not None and batch.rank_orders is not None  # filled in by _advantages and _score

        def submit(group, targets, update: PPOUpdate) -> list:
            # cloned: a view would ship its whole base tensor to every rank
            return group.submit_each("train", [(shard.clone(), update) for shard in targets.chunk(len(group))])

        policy = submit(
            cluster.policy,
            batch.result.advantages[batch.rank_orders["policy"]],
            PPOUpdate(
                epochs=ppo.epochs,
                minibatch_size=ppo.step_batch_size // len(cluster.policy),
                clip_eps=ppo.clip_eps,
                coef=1.0,
                entropy_coef=ppo.entropy_coef,
                seed=seed,
            ),
        )
        critic = submit(
            cluster.critic,
            batch.result.returns[batch.rank_orders["critic"]],
            PPOUpdate(
                epochs=ppo.epochs,
                minibatch_size=ppo.step_batch_size // len(cluster.critic),
                clip_eps=ppo.value_clip_eps,
                coef=ppo.vf_coef,
                seed=seed,
            ),
        )
        stats = ray.get(policy), ray.get(critic)
        cluster.policy_version = batch.step + 1  # what the next push labels the rollout actors' weights
        return stats

    def _push(self) -> None:
        self.cluster.recovering(self.cluster.push_weights)

    def _save_checkpoint(self, step: int) -> float:
        """DeepSpeed checkpoints of both learners, then ``state.json`` (its presence marks completeness)."""
        import ray

        start = time.perf_counter()
        path = self.rundir.checkpoint_dir(step)
        with self.rundir.space_guard(path, "checkpoint"):  # a full disk: one line, run.json "failed"
            ray.get(
                self.cluster.policy.submit("save_checkpoint", str(path / "policy"), "ds")
                + self.cluster.critic.submit("save_checkpoint", str(path / "critic"), "ds")
            )
        state = {"step": step, "data_position": step * self.cfg.ppo.rollout_batch_size, "seed": self.cfg.seed}
        state.update(self.shaping.to_state())  # the reward scale, β and length target a resume continues with
        self.rundir.commit_checkpoint(path, state, self.cfg.keep_checkpoints)
        return time.perf_counter() - start


def train(cfg: PPOTrainConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Run PPO into ``out_dir`` under the ``--out`` policy of :mod:`fgrlhf.runtime.run_dir` (Ray must already be
    initialised); returns the last step's metrics (a finished run's saved ones when it is not redone)."""
    run = open_run(out_dir, PPO_RUN, cfg, resume=resume, overwrite=overwrite)
    if run.done:
        assert run.result is not None  # a finished run's run.json holds its result
        return run.result
    return PPOTrainer(cfg, run).run()

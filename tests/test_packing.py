"""Micro-batch layouts (padded, length-grouped, packed), token-budget micro-batches and the rank-balancing
order of fgrlhf.workers.packing: every layout gives the same log-probs, values and token rewards; a token
budget gives the same optimizer step as one micro-batch; balancing changes no per-row result."""

import random

import pytest
import torch

from fgrlhf.algorithms import ppo_core
from fgrlhf.workers.packing import (
    at_response,
    balanced_order,
    build,
    inverse_order,
    lm_response_logits,
    micro_batch_tokens,
    pack_row,
    plan_micro_batches,
    rank_order,
    response_logprobs,
    split,
    split_to_count,
)

LAYOUTS = ("padded", "grouped", "packed")


def _sequences(rows: int, seed: int = 0, vocab: int = 200) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 12))] for _ in range(rows)]
    responses = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 9))] for _ in range(rows)]
    return prompts, responses


# --- layouts ----------------------------------------------------------------------------------------------------
def test_packed_row_restarts_positions_and_maps_each_response_token():
    batch = pack_row([[5, 6], [7]], [[8, 9, 10], [11]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 8, 9, 10, 7, 11]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    assert set(batch.inputs()) == {"input_ids", "position_ids"}  # no attention_mask: derived from positions
    assert batch.response_ids.tolist() == [[8, 9, 10], [11, 0, 0]]
    # padding past a response points at its own sequence's last token (in bounds, masked)
    assert batch.response_index.tolist() == [[2, 3, 4], [6, 6, 6]]
    assert batch.response_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    per_position = torch.arange(7.0).unsqueeze(0)
    assert at_response(per_position, batch.response_index, shift=-1).tolist() == [[1, 2, 3], [5, 5, 5]]
    with pytest.raises(ValueError, match="prompt token"):
        pack_row([[]], [[1]], pad_id=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_layouts_give_the_same_logprobs(tokenizer, attention):
    """transformers builds the block-diagonal mask from restarting position ids (Llama, no KV cache): packed
    sequences see nothing of each other."""
    from fgrlhf.config import ModelConfig
    from fgrlhf.models import load_causal_lm

    model = load_causal_lm(ModelConfig(), tokenizer).eval()
    model.config._attn_implementation = attention
    prompts, responses = _sequences(7)
    pad = tokenizer.pad_token_id
    want = response_logprobs(model, prompts, responses, pad, micro_batch_size=1)  # one sequence a forward
    for layout in LAYOUTS:
        got = response_logprobs(model, prompts, responses, pad, micro_batch_size=3, layout=layout)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        budget = response_logprobs(model, prompts, responses, pad, 3, layout=layout, max_tokens=30)
        torch.testing.assert_close(budget, want, atol=1e-5, rtol=1e-5)
    assert (want != 0).sum() == sum(len(r) for r in responses)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_lm_head_runs_only_where_a_logit_predicts_a_response_token(tokenizer, layout):
    """The full forward's logits before each response token, and the LM head fed only those positions (the union
    over a padded batch's rows); gradients reach the same weights."""
    from fgrlhf.config import ModelConfig
    from fgrlhf.models import load_causal_lm

    model = load_causal_lm(ModelConfig(), tokenizer)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12]]
    responses = [[13, 14], [15, 16, 17]]
    batch = build(prompts, responses, tokenizer.pad_token_id, layout)
    head_rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[1]))

    got = lm_response_logits(model, batch.response_index, **batch.inputs(), use_cache=False)
    (ppo_core.logprobs_from_logits(got, batch.response_ids) * batch.response_mask).sum().backward()
    got_grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    full = model(**batch.inputs(), use_cache=False).logits
    want = at_response(full, batch.response_index, shift=-1)
    (ppo_core.logprobs_from_logits(want, batch.response_ids) * batch.response_mask).sum().backward()

    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # float32 sums in another order: equal to ~1e-6 of the gradient's scale
    torch.testing.assert_close(got_grad, model.model.layers[0].mlp.up_proj.weight.grad, atol=1e-4, rtol=1e-3)
    # the head's inputs with and without: padded {5, 6} ∪ {1, 2, 3} of 8 positions, packed {5, 6, 9, 10, 11} of 13
    assert head_rows == ([5, 8] if layout == "padded" else [5, 13])


def test_lm_response_logits_refuses_a_model_that_ignores_logits_to_keep():
    class FullLogits(torch.nn.Module):
        def forward(self, input_ids, **_):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 4)})()

    batch = build([[1, 2, 3]], [[4]], 0, "padded")
    with pytest.raises(TypeError, match="logits_to_keep"):
        lm_response_logits(FullLogits(), batch.response_index, **batch.inputs())


@pytest.mark.parametrize("kind", ["token", "sequence"])
def test_layouts_give_the_same_rewards_and_values(tmp_path, tokenizer, kind):
    from fgrlhf.config import ModelConfig
    from fgrlhf.reward.model import build_reward_model, per_position_scores
    from fgrlhf.workers.packing import build
    from fgrlhf.workers.reward_worker import RewardWorker

    torch.manual_seed(0)
    rm = build_reward_model(kind, ModelConfig())
    with torch.no_grad():  # the tiny RM's head starts near 0: make the scores differ by position
        rm.head.weight.normal_()
    rm.save_pretrained(tmp_path / "rm", tokenizer)
    prompts, responses = _sequences(6, seed=1)
    pad = tokenizer.pad_token_id
    scores = {
        layout: RewardWorker(str(tmp_path / "rm"), pad, 4, layout=layout).score(prompts, responses)
        for layout in LAYOUTS
    }
    for layout in LAYOUTS[1:]:
        assert (
            scores[layout].keys()
            == scores["padded"].keys()
            == ({"sequence", "token"} if kind == "token" else {"sequence"})
        )
        for key, value in scores[layout].items():
            torch.testing.assert_close(value, scores["padded"][key], atol=1e-5, rtol=1e-5)
    # the critic reads the same module as V(s_t) = its head one position before token t
    rm = rm.eval()
    values = {}
    for layout in LAYOUTS:
        batch = build(prompts, responses, pad, layout)
        with torch.no_grad():
            values[layout] = at_response(per_position_scores(rm, **batch.inputs()), batch.response_index, -1)
        values[layout] = values[layout] * batch.response_mask
    for layout in LAYOUTS[1:]:
        torch.testing.assert_close(values[layout], values["padded"], atol=1e-5, rtol=1e-5)


# --- micro-batch plans ------------------------------------------------------------------------------------------
def test_plans_keep_order_sort_by_length_and_respect_a_token_budget():
    lengths = [5, 1, 4, 2, 3]
    assert plan_micro_batches(lengths, "padded", 2) == [[0, 1], [2, 3], [4]]
    assert plan_micro_batches(lengths, "grouped", 2) == [[1, 3], [4, 2], [0]]
    # padded cost = rows x longest: [1, 2] costs 4, [3, 4] costs 8, [5] alone
    assert plan_micro_batches(lengths, "grouped", 2, max_tokens=8) == [[1, 3], [4, 2], [0]]
    assert plan_micro_batches(lengths, "packed", 2, max_tokens=8) == [[1, 3, 4], [2], [0]]
    assert plan_micro_batches([9, 1], "packed", 1, max_tokens=4) == [[1], [0]]  # too long alone: its own
    for layout in LAYOUTS:
        plan = plan_micro_batches(lengths, layout, 1, max_tokens=6)
        assert sorted(i for group in plan for i in group) == list(range(5))
        assert all(micro_batch_tokens([lengths[i] for i in g], layout) <= 6 for g in plan)


def test_split_to_count_halves_the_costliest_group():
    lengths = [1, 2, 3, 4]
    # [0, 1, 2, 3] -> [0, 1] (cost 3) + [2, 3] (cost 7) -> the latter halved
    assert split_to_count([[0, 1, 2, 3]], lengths, 3, "packed") == [[0, 1], [2], [3]]
    assert split_to_count([[0], [1, 2, 3]], lengths, 2, "packed") == [[0], [1, 2, 3]]
    with pytest.raises(ValueError, match="cannot cut"):
        split_to_count([[0, 1]], lengths, 3, "packed")


# --- rank balancing ---------------------------------------------------------------------------------------------
def test_balanced_order_hand_example():
    # longest first to the emptiest shard with room: 10 -> s0, 9 -> s1, 2 -> s1 (9 < 10), 1 -> s0 (s1 full)
    assert balanced_order([10, 9, 2, 1], 2) == [0, 3, 1, 2]
    assert [sum(s) for s in split([[10, 9, 2, 1][i] for i in [0, 3, 1, 2]], 2)] == [11, 11]
    assert balanced_order([3, 1, 2], 1) == [0, 1, 2]  # one rank: batch order
    with pytest.raises(ValueError, match="equal shards"):
        balanced_order([1, 2, 3], 2)


def test_rank_order_balances_only_when_asked():
    # the one choice the trainer and the compute floor share: balance_ranks on -> balanced shards, off -> batch order
    assert rank_order([10, 9, 2, 1], 2, balance=True) == [0, 3, 1, 2]
    assert rank_order([10, 9, 2, 1], 2, balance=False) == [0, 1, 2, 3]


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_balanced_order_is_an_equal_cardinality_permutation_with_close_totals(parts):
    rng = random.Random(parts)
    lengths = [rng.randint(20, 300) for _ in range(12 * parts)]
    order = balanced_order(lengths, parts)
    assert sorted(order) == list(range(len(lengths)))
    shards = split([lengths[i] for i in order], parts)
    assert {len(s) for s in shards} == {12}
    totals = [sum(s) for s in shards]
    assert max(totals) - min(totals) <= max(lengths) - min(lengths)
    naive = [sum(s) for s in split(sorted(lengths), parts)]  # the worst contiguous assignment
    assert max(totals) - min(totals) < max(naive) - min(naive)
    rows = [f"row{i}" for i in range(len(lengths))]
    permuted = [rows[i] for i in order]
    assert [permuted[k] for k in inverse_order(order)] == rows
    values = torch.arange(len(lengths) * 2.0).view(-1, 2)
    assert torch.equal(values[order][inverse_order(order)], values)


# --- token-budget micro-batches in the learner ------------------------------------------------------------------
def _trained_weights(ray, ds, prompts, responses, targets, out_dir, ranks: int = 1):
    """One PPO minibatch step of ``ranks`` policy learner ranks, rank r on the r-th equal shard of the rows:
    rank 0's old log-probs and stats, and the weights after the step."""
    from fgrlhf.config import ModelConfig
    from fgrlhf.workers.learner_worker import PolicyLearner, PPOUpdate

    learners = [
        ray.remote(PolicyLearner).options(num_cpus=0.5 / ranks).remote(r, ranks, ds, ModelConfig())
        for r in range(ranks)
    ]
    shard = len(prompts) // ranks
    rows = [slice(r * shard, (r + 1) * shard) for r in range(ranks)]
    try:
        address = ray.get(learners[0].rendezvous_address.remote())
        ray.get([learner.setup.remote(*address) for learner in learners])
        old = ray.get([learner.evaluate.remote(prompts, responses) for learner in learners])  # each keeps its shard
        update = PPOUpdate(epochs=1, minibatch_size=shard, clip_eps=0.2, coef=1.0, entropy_coef=0.01)
        stats = ray.get([learner.train.remote(targets[s], update) for learner, s in zip(learners, rows)])
        ray.get([learner.save_hf.remote(str(out_dir)) for learner in learners])
    finally:
        for learner in learners:
            ray.kill(learner)
    from safetensors.torch import load_file

    return old[0], stats[0], load_file(str(out_dir / "model.safetensors"))


@pytest.mark.slow
def test_token_budget_micro_batches_take_the_same_step_as_one_micro_batch(ray_session, tmp_path, tokenizer):
    """DeepSpeed ZeRO-0 on CPU, one rank: one minibatch as one padded micro-batch, then cut by a token budget
    into packed or length-grouped micro-batches; the parameters after the optimizer step agree with each
    other and with plain torch's clipped AdamW step on the same PPO loss."""
    from fgrlhf.config import DeepSpeedConfig, ModelConfig
    from fgrlhf.models import load_causal_lm

    prompts, responses = _sequences(8, seed=2)
    targets = torch.randn(8, max(len(r) for r in responses), generator=torch.Generator().manual_seed(0))
    base = DeepSpeedConfig(micro_batch_size=8, lr=1e-3, num_cpus_per_rank=0.5)
    runs = {}
    for name, ds in {
        "one": base.model_copy(update={"packing": "padded"}),
        "packed": base.model_copy(update={"packing": "packed", "max_tokens_per_micro_batch": 40}),
        "grouped": base.model_copy(update={"packing": "grouped", "max_tokens_per_micro_batch": 60}),
    }.items():
        runs[name] = _trained_weights(ray_session, ds, prompts, responses, targets, tmp_path / name)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    assert len(plan_micro_batches(lengths, "packed", 8, 40)) > 2  # really cut
    assert len(plan_micro_batches(lengths, "grouped", 8, 60)) > 2
    model = load_causal_lm(ModelConfig(), tokenizer)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    old, stats, weights = runs["one"]
    moved = max(float((weights[n] - p).abs().max()) for n, p in initial.items())
    assert moved > 1e-4  # the step changed the weights
    # Oracle: the lone rank's step (DeepSpeed's all-reduce skipped) is plain torch's on the same loss.
    batch = build(prompts, responses, tokenizer.pad_token_id, "padded")
    logits = at_response(model(**batch.inputs(), use_cache=False).logits, batch.response_index, -1).float()
    mask, width = batch.response_mask, batch.response_ids.size(1)
    loss, _ = ppo_core.policy_loss(
        ppo_core.logprobs_from_logits(logits, batch.response_ids), old, targets[:, :width], mask, 0.2
    )
    (loss - 0.01 * ppo_core.masked_mean(ppo_core.entropy_from_logits(logits), mask)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), base.grad_clip)
    torch.optim.AdamW(model.parameters(), lr=base.lr, weight_decay=base.weight_decay).step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(weights[n], p.detach(), atol=1e-5, rtol=1e-4, msg=f"torch oracle: {n}")
    for name in ("packed", "grouped"):
        other_old, other_stats, other_weights = runs[name]
        torch.testing.assert_close(other_old, old, atol=1e-5, rtol=1e-5)
        for key in ("policy_loss", "entropy", "approx_kl"):
            assert other_stats[key] == pytest.approx(stats[key], abs=1e-5), key
        for n, tensor in weights.items():
            torch.testing.assert_close(other_weights[n], tensor, atol=1e-5, rtol=1e-4, msg=f"{name}: {n}")


@pytest.mark.slow
def test_zero2_ranks_with_different_token_budget_plans_take_the_same_step(ray_session, tmp_path):
    """Two ZeRO-2 ranks (gloo) whose shards need different numbers of micro-batches under a token budget: they
    agree on one count (ZeRO-2 reduces at every backward, so unequal counts would hang) and the step equals
    the one without a budget (one micro-batch per rank)."""
    from fgrlhf.config import DeepSpeedConfig

    prompts, responses = _sequences(8, seed=3)
    by_length = sorted(range(8), key=lambda i: len(prompts[i]) + len(responses[i]))  # rank 0 short, rank 1 long
    prompts, responses = [prompts[i] for i in by_length], [responses[i] for i in by_length]
    targets = torch.randn(8, max(len(r) for r in responses), generator=torch.Generator().manual_seed(1))
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    budget = 30
    counts = [len(plan_micro_batches(lengths[s], "grouped", 4, budget)) for s in (slice(0, 4), slice(4, 8))]
    assert counts[0] < counts[1]  # the ranks' own plans differ
    base = DeepSpeedConfig(
        zero_stage=2, world_size=2, micro_batch_size=4, lr=1e-3, num_cpus_per_rank=0.25, packing="grouped"
    )
    whole = _trained_weights(ray_session, base, prompts, responses, targets, tmp_path / "whole", ranks=2)
    cut_cfg = base.model_copy(update={"max_tokens_per_micro_batch": budget})
    cut = _trained_weights(ray_session, cut_cfg, prompts, responses, targets, tmp_path / "cut", ranks=2)
    torch.testing.assert_close(cut[0], whole[0], atol=1e-5, rtol=1e-5)
    for key in ("policy_loss", "entropy"):
        assert cut[1][key] == pytest.approx(whole[1][key], abs=1e-5), key
    # Adam's first step is lr · g / (|g| + eps): a gradient entry near eps turns float rounding into a few % of lr
    for n, tensor in whole[2].items():
        torch.testing.assert_close(cut[2][n], tensor, atol=0.05 * base.lr, rtol=1e-4, msg=n)


# --- rank balancing in the PPO step -----------------------------------------------------------------------------
@pytest.mark.slow
def test_balancing_the_ranks_changes_no_per_row_result(ray_session, tmp_path, monkeypatch):
    """One PPO step with 2 policy and 2 critic ranks, with and without balance_ranks (same seed): the learners
    get the rows in another order, and old log-probs, values, advantages and returns come back the same."""
    from pathlib import Path

    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig
    from fgrlhf.trainers.ppo.trainer import PPOTrainer, train
    from fgrlhf.workers.packing import lengths_of

    captured: dict[bool, dict] = {}
    original = PPOTrainer._train

    def recording(self, batch):
        result = batch.result
        captured[self.cfg.policy_learner.balance_ranks] = {
            "order": rank_order(lengths_of(batch.prompt_ids, batch.response_ids), 2, balance=True),
            "old_logprobs": batch.old_logprobs.clone(),
            "old_values": batch.old_values.clone(),
            "advantages": result.advantages.clone(),
            "returns": result.returns.clone(),
        }
        return original(self, batch)

    monkeypatch.setattr(PPOTrainer, "_train", recording)
    config = Path(__file__).resolve().parents[1] / "configs" / "ppo-tiny-cpu.yaml"
    for balance in (False, True):
        overrides = ["steps=1", "save_every=0", "rollout.max_new_tokens=8"]
        overrides += [f"policy_learner.balance_ranks={balance}", f"critic_learner.balance_ranks={balance}"]
        train(load_config(PPOTrainConfig, config, overrides), tmp_path / str(balance))
    assert captured[True]["order"] != list(range(len(captured[True]["order"])))  # the shards really changed
    for key in ("old_logprobs", "old_values", "advantages", "returns"):
        torch.testing.assert_close(captured[True][key], captured[False][key], atol=1e-5, rtol=1e-5, msg=key)

"""VLLMEngine against transformers on the same weights, for real (CPU: run ``scripts/test_vllm_cpu.sh``).

The reference is HF ``generate`` one prompt at a time (no padding), greedy, float32. The tiny random-init
Llama is used (head_dim 32, vLLM's CPU minimum). The pushed model is a second seed with its attention weights
scaled up: its greedy outputs differ from the first model's, so a push that did not land cannot pass, and they
depend strongly on the context, so stale prefix-cached KV from the old weights would show.
"""

from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("vllm", reason="vllm is not installed (main venv); run scripts/test_vllm_cpu.sh or use a GPU")

from fgrlhf.config import ModelConfig
from fgrlhf.models import load_causal_lm
from fgrlhf.runtime.distributed import free_port
from fgrlhf.runtime.weight_sync import WeightSyncGroup, buckets, checksums, layout_of
from fgrlhf.workers.rollout_worker import strip_after_eos
from fgrlhf.workers.vllm_engine import VLLMEngine

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_NEW = 12
ATTENTION_SCALE = 4.0
TEXTS = ["Hello there, how are you?", "Write a haiku about the sea.", "2 + 2 ="]


@pytest.fixture(scope="module")
def prompts(tokenizer):
    ids = [tokenizer(text)["input_ids"] for text in TEXTS]
    # Longer than one KV block (128 tokens by default on vLLM CPU), so the prefix cache holds full
    # blocks of it: a push that left stale cached KV behind would change this prompt's output.
    long = tokenizer(" ".join(TEXTS * 30))["input_ids"][:300]
    return ids + [long]


@pytest.fixture(scope="module")
def engine():
    engine = VLLMEngine(
        ModelConfig(name="tiny", seed=0), kv_cache_memory_bytes=128 * 2**20, max_model_len=512, max_num_seqs=8
    )
    yield engine
    engine.shutdown()


@torch.no_grad()
def tiny_model(seed: int, attention_scale: float, tokenizer):
    model = load_causal_lm(ModelConfig(name="tiny", seed=seed), tokenizer).eval()
    for name, param in model.named_parameters():
        if ".self_attn." in name:
            param.mul_(attention_scale)  # random init (std 0.02) leaves attention nearly uniform
    return model


@torch.no_grad()
def hf_greedy(model, tokenizer, prompts: list[list[int]]) -> list[list[int]]:
    out = []
    for ids in prompts:
        row = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=MAX_NEW,
            pad_token_id=tokenizer.pad_token_id,
        )
        out.append(strip_after_eos(row[0, len(ids) :].tolist(), tokenizer.eos_token_id))
    return out


def test_greedy_matches_transformers(engine, tokenizer, prompts):
    expected = hf_greedy(tiny_model(0, 1.0, tokenizer), tokenizer, prompts)
    assert engine.generate(prompts, MAX_NEW, 0.0, 1.0, seed=0) == expected


def test_logprobs_of_sampled_responses_match_transformers(engine, tokenizer, prompts):
    """The behaviour log-probs ``ppo.async_rollout`` trains with: teacher-forced and from the raw logits,
    as the learners (and transformers) compute them on the same weights."""
    from fgrlhf.workers.packing import response_logprobs

    responses = engine.generate(prompts, MAX_NEW, 1.0, 1.0, seed=5)
    want = response_logprobs(tiny_model(0, 1.0, tokenizer), prompts, responses, tokenizer.pad_token_id, 2)
    got = engine.logprobs(prompts, responses)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4)


def test_load_weights_switches_the_served_model(engine, tokenizer, prompts):
    original, pushed = tiny_model(0, 1.0, tokenizer), tiny_model(1, ATTENTION_SCALE, tokenizer)
    expected_original, expected_pushed = hf_greedy(original, tokenizer, prompts), hf_greedy(pushed, tokenizer, prompts)
    assert expected_original != expected_pushed  # otherwise this test could not tell a push from no push
    engine.generate(prompts, MAX_NEW, 0.0, 1.0, seed=0)  # fill the prefix cache with the old weights' KV

    # As fgrlhf.runtime.weight_sync delivers them: views into one flat buffer, tied lm_head not repeated.
    params = list(pushed.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for _, p in params])
    views, offset = [], 0
    for name, param in params:
        views.append((name, flat[offset : offset + param.numel()].view(param.shape)))
        offset += param.numel()
    engine.load_weights(views)
    assert engine.generate(prompts, MAX_NEW, 0.0, 1.0, seed=0) == expected_pushed

    # And back, as a full state dict (tied lm_head.weight included): leaves the module's engine as it was.
    engine.load_weights(original.state_dict().items())
    assert engine.generate(prompts, MAX_NEW, 0.0, 1.0, seed=0) == expected_original


def test_sampling_is_seeded_per_prompt(engine, prompts):
    batch = [prompts[0]] * 3 + [prompts[1]]
    first = engine.generate(batch, MAX_NEW, 1.0, 0.9, seed=7)
    assert engine.generate(batch, MAX_NEW, 1.0, 0.9, seed=7) == first
    assert engine.generate(batch, MAX_NEW, 1.0, 0.9, seed=8) != first
    # Same prompt three times in one batch: three different samples (each prompt gets seed + index).
    assert len({tuple(row) for row in first[:3]}) == 3
    assert all(1 <= len(row) <= MAX_NEW for row in first)


SMALL_BUCKET_MB = 0.05  # ~50 KiB: the tiny model's weights travel in several buckets


def assert_same_weights(served: dict[str, float], learner: dict[str, float]) -> None:
    """Every learner tensor is served with the same fingerprint (vLLM may also hold extra tensors)."""
    missing = set(learner) - set(served)
    assert not missing, f"not served: {sorted(missing)[:5]}"
    for name, value in learner.items():
        assert served[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name


def test_served_weights_read_back_as_the_checkpoint(engine, tokenizer):
    # The read-back (fused q/k/v and gate/up split, CPU-packed linears read through their kernels) is what
    # the push tests below rely on, so check it against the model the engine was built from.
    engine.load_weights(tiny_model(0, 1.0, tokenizer).state_dict().items())
    assert_same_weights(engine.weights_checksum(), checksums(tiny_model(0, 1.0, tokenizer).state_dict().items()))


def test_multi_bucket_push_through_the_group_lands_every_parameter(engine, tokenizer, prompts):
    """The real push path: the engine's worker joins the push group (gloo here, NCCL on GPU) and loads the
    buckets as they arrive; the sender is this process, like policy learner rank 0."""
    pushed = tiny_model(1, ATTENTION_SCALE, tokenizer)
    named = list(pushed.named_parameters())  # what a learner sends: the tied lm_head only once, by name
    layout = layout_of(named)
    groups = buckets(layout, SMALL_BUCKET_MB)
    assert len(groups) > 5
    port, errors = free_port(), []

    def sender():
        try:
            group = WeightSyncGroup("127.0.0.1", port, 0, 2, "gloo", "vllm-test", timeout_s=120)
            for indices in groups:
                group.send_bucket([named[i][1] for i in indices])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    engine.join_weight_sync("127.0.0.1", port, 1, 2, "gloo", "vllm-test", 120)
    engine.receive_weights(layout, SMALL_BUCKET_MB)
    thread.join()
    assert not errors
    assert_same_weights(engine.weights_checksum(), checksums(pushed.state_dict().items()))
    assert engine.generate(prompts, MAX_NEW, 0.0, 1.0, seed=0) == hf_greedy(pushed, tokenizer, prompts)


def test_load_weights_keeps_tensors_whose_buckets_reuse_memory(engine, tokenizer):
    """Buckets arrive one after another and a freed bucket's memory is reused by the next, so the first
    tensors of different buckets share a data_ptr: none of them may be taken for a duplicate."""
    pushed = tiny_model(2, ATTENTION_SCALE, tokenizer)
    named = list(pushed.named_parameters())
    layout = layout_of(named)
    groups = buckets(layout, SMALL_BUCKET_MB)
    arena = torch.empty(max(sum(named[i][1].numel() for i in g) for g in groups))  # one buffer, reused

    def reused_buckets():
        for indices in groups:
            offset = 0
            for i in indices:
                name, param = named[i]
                view = arena[offset : offset + param.numel()].view(param.shape)
                view.copy_(param.detach())
                yield name, view
                offset += param.numel()

    assert len({v.data_ptr() for _, v in reused_buckets()}) < len(named)  # pointers do repeat
    engine.load_weights(reused_buckets())
    assert_same_weights(engine.weights_checksum(), checksums(pushed.state_dict().items()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA IPC needs a CUDA GPU")
def test_cuda_ipc_push_lands_every_parameter(tokenizer, prompts):
    """The colocated push: this process's CUDA tensors opened by vLLM's worker process through IPC handles."""
    from fgrlhf.workers.vllm_engine import share_cuda_tensors

    gpu_engine = VLLMEngine(ModelConfig(name="tiny", seed=0), gpu_memory_utilization=0.2, max_model_len=512)
    try:
        pushed = tiny_model(1, ATTENTION_SCALE, tokenizer).cuda()
        payload, keep = share_cuda_tensors(pushed.named_parameters())
        gpu_engine.receive_cuda_ipc(payload)
        del keep
        assert_same_weights(gpu_engine.weights_checksum(), checksums(pushed.state_dict().items()))
        assert gpu_engine.generate(prompts, MAX_NEW, 0.0, 1.0, seed=0) == hf_greedy(pushed.cpu(), tokenizer, prompts)
    finally:
        gpu_engine.shutdown()

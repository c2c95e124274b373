"""Rollout: the Ray actor that generates responses, and the generation-engine interface it drives.

An engine turns prompt ids into response ids and accepts new weights by name. ``HFEngine`` (transformers
``generate``, CPU default) lives here; ``fgrlhf.workers.vllm_engine.VLLMEngine`` implements the same
protocol. The actor receives the policy's weights from policy learner rank 0 over a dedicated process group
(:mod:`fgrlhf.runtime.weight_sync`) and hands them to ``engine.load_weights``; an engine that runs its model in
another process (vLLM) instead joins the group there itself (``join_weight_sync``/``receive_weights``), so
the weights go straight from the group into the model, never through this actor.

The actor is a plain (non-async) Ray actor: it runs one call at a time, in the order the driver submitted
them. ``ppo.async_rollout`` relies on that: a push submitted after a generation waits for it, and
``generation_info``/``behaviour_logprobs`` submitted right after ``generate`` see the weights it sampled with.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from fgrlhf.config import ModelConfig

if TYPE_CHECKING:
    from fgrlhf.runtime.weight_sync import WeightSyncGroup


class WeightsNotSynced(RuntimeError):
    """The actor has no pushed weights yet, e.g. Ray restarted it: the driver must re-push first."""


class GenerationEngine(Protocol):
    def generate(
        self, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float, top_p: float, seed: int
    ) -> list[list[int]]:
        """Sampled response ids per prompt, ending in EOS if one was produced (nothing after it)."""

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> torch.Tensor:
        """``[B, T]`` log p(a_t | s_t) of the given response tokens under the served weights (raw logits, no
        temperature or top-p: the learners' definition), 0 on padding, T = longest response."""

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the weights named like the HF checkpoint's state dict (``model.layers.0...``)."""

    def weights_checksum(self) -> dict[str, float]:
        """``weight_sync.checksums`` of the served weights under the HF checkpoint's names."""


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``[B, L]`` of prompts left-padded to the longest, as ``generate``
    needs them: every row's last prompt token sits in the last column."""
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def strip_after_eos(ids: list[int], eos_id: int | set[int]) -> list[int]:
    """Cut a generated row just after its first EOS (padding and anything sampled later go)."""
    eos = {eos_id} if isinstance(eos_id, int) else eos_id
    for index, token in enumerate(ids):
        if token in eos:
            return ids[: index + 1]
    return ids


class _SampledLogprobs:
    """Forward hook on the model inside ``generate``: log p(a_t | s_t) of each sampled token under the raw
    logits (no temperature or top-p: the learners' definition, whatever the sampling settings). Each decoding
    forward takes the token sampled from the previous forward's distribution as its input, so a step's
    distribution is kept only until the next forward names its token: one ``[B]`` vector per step stays, never
    ``[B, V]`` per step (what ``output_logits`` would hold)."""

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None  # [B, V] log-probs of the step not yet sampled from
        self.steps: list[torch.Tensor] = []

    def __call__(self, module, args, kwargs, output) -> None:
        if self.pending is not None:
            self.steps.append(self.pending.gather(1, kwargs["input_ids"][:, -1:]).squeeze(1))
        self.pending = torch.log_softmax(output.logits[:, -1].float(), dim=-1)

    def result(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """``[B, n]`` over the ``n`` generated tokens; ``last_tokens``: the final sampled column."""
        assert self.pending is not None  # generate ran at least one forward
        return torch.stack([*self.steps, self.pending.gather(1, last_tokens[:, None]).squeeze(1)], dim=1)


class HFEngine:
    """transformers ``generate`` on a left-padded batch; the default engine, and the CPU one."""

    def __init__(self, model_cfg: ModelConfig, device: str | None = None, logprobs_micro_batch_size: int = 8):
        from fgrlhf.models import load_causal_lm, load_tokenizer
        from fgrlhf.runtime.distributed import choose_device

        self.logprobs_micro_batch_size = logprobs_micro_batch_size  # rows per teacher-forced forward
        self.model_cfg = model_cfg
        self.last_logprobs: torch.Tensor | None = None  # [B, T] of the last generate's sampled tokens
        self.tokenizer = load_tokenizer(model_cfg.name)
        self.device = torch.device(device) if device else choose_device()
        # transformers types .to as an unbound Module.to
        self.model = load_causal_lm(model_cfg, self.tokenizer).to(self.device).eval()  # type: ignore[arg-type]
        self.pad_id = self.tokenizer.pad_token_id
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos) if isinstance(eos, list) else {eos if eos is not None else self.tokenizer.eos_token_id}

    @torch.no_grad()
    def generate(
        self, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float, top_p: float, seed: int
    ) -> list[list[int]]:
        input_ids, attention_mask = left_pad(prompt_ids, self.pad_id)
        width = input_ids.size(1)
        from fgrlhf.models import autocast

        torch.manual_seed(seed)
        sampling = temperature > 0
        hook = _SampledLogprobs()
        handle = self.model.register_forward_hook(hook, with_kwargs=True)
        try:
            with autocast(self.model_cfg, self.device):
                output = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention_mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=sampling,
                    temperature=temperature if sampling else None,
                    top_p=top_p if sampling else None,
                    top_k=0 if sampling else None,  # pure nucleus sampling, no hidden top-k=50 default
                    pad_token_id=self.pad_id,
                )
        finally:
            handle.remove()
        output = output.cpu()
        responses = [strip_after_eos(row[width:].tolist(), self.eos_ids) for row in output]
        sampled = hook.result(output[:, -1]).cpu()
        self.last_logprobs = torch.zeros(len(responses), max(len(r) for r in responses))
        for row, response in enumerate(responses):
            self.last_logprobs[row, : len(response)] = sampled[row, : len(response)]
        return responses

    def sampled_logprobs(self) -> torch.Tensor:
        """``[B, T]`` log p(a_t | s_t) of the last ``generate``'s tokens under the weights that sampled them, as
        :meth:`logprobs` defines them (raw logits), taken during generation: no forward of their own."""
        if self.last_logprobs is None:
            raise RuntimeError("sampled_logprobs before generate")
        return self.last_logprobs

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> torch.Tensor:
        from fgrlhf.models import autocast
        from fgrlhf.workers.packing import response_logprobs

        with autocast(self.model_cfg, self.device):
            return response_logprobs(self.model, prompt_ids, response_ids, self.pad_id, self.logprobs_micro_batch_size)

    def weights_checksum(self) -> dict[str, float]:
        from fgrlhf.runtime.weight_sync import checksums

        return checksums(self.model.state_dict().items())

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = self.model.state_dict(keep_vars=True)  # includes tied names such as lm_head.weight
        for name, tensor in named_tensors:
            if name not in params:
                raise KeyError(f"pushed weight {name!r} does not exist in the rollout model")
            params[name].copy_(tensor)


def make_engine(
    kind: Literal["hf", "vllm"], model_cfg: ModelConfig, engine_kwargs: dict | None = None
) -> GenerationEngine:
    if kind == "hf":
        return HFEngine(model_cfg, **(engine_kwargs or {}))
    from fgrlhf.workers.vllm_engine import VLLMEngine

    return VLLMEngine(model_cfg, **(engine_kwargs or {}))


class RolloutWorker:
    """Ray actor owning one generation engine; a member of the weight-sync group (rank >= 1)."""

    def __init__(self, kind: Literal["hf", "vllm"], model_cfg: ModelConfig, engine_kwargs: dict | None = None):
        from fgrlhf.runtime.distributed import bind_device

        torch.set_num_threads(1)
        bind_device()  # before the engine asks CUDA: a CPU actor must not see the host's GPUs
        self.engine = make_engine(kind, model_cfg, engine_kwargs)
        self.receiver: WeightSyncGroup | None = None  # join_weight_sync, unless the engine receives itself
        self.synced = False  # a restarted actor holds the initial weights until the next push
        self.version: int | None = None  # the policy version of the last push (the driver numbers them)
        self.last_generation: dict = {}

    def ready(self) -> bool:
        return True

    def device_stats(self) -> dict[str, float]:
        """This actor's GPU memory and utilisation (:func:`fgrlhf.runtime.device_stats.device_stats`). A vLLM
        engine computes in vLLM's worker process, a separate one: this process does not use CUDA, so it reports
        only the device-wide utilisation, which covers that worker; the memory is vLLM's to manage
        (``gpu_memory_utilization``) and is not read from vLLM's internals."""
        from fgrlhf.runtime.device_stats import device_stats

        return device_stats()

    def generate(
        self, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float, top_p: float, seed: int
    ) -> list[list[int]]:
        if not self.synced:
            raise WeightsNotSynced("rollout actor has not received the policy weights (was it restarted?)")
        start = time.perf_counter()
        out = self.engine.generate(prompt_ids, max_new_tokens, temperature, top_p, seed)
        self.last_generation = {"version": self.version, "seconds": time.perf_counter() - start}
        return out

    def generation_info(self) -> dict:
        """The policy version that the last ``generate`` sampled with and its seconds. The actor runs one call
        at a time in submission order, so asked right after ``generate`` it describes that call."""
        return self.last_generation

    def behaviour_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> torch.Tensor:
        """The behaviour log-probs ``[B, T]`` of responses this actor sampled (call before the next push)."""
        return self.engine.logprobs(prompt_ids, response_ids)

    def sampled_logprobs(self) -> torch.Tensor:
        """The last ``generate``'s log-probs ``[B, T]``, recorded while sampling (HF engine only: call right
        after ``generate``, as ``generation_info``)."""
        if not isinstance(self.engine, HFEngine):
            raise TypeError(f"{type(self.engine).__name__} does not record its sampled tokens' log-probs")
        return self.engine.sampled_logprobs()

    def sees_cuda(self) -> bool:
        """Whether this actor (and so its engine's worker, which inherits its GPU) computes on a GPU."""
        from fgrlhf.runtime.distributed import choose_device

        return choose_device().type == "cuda"

    def join_weight_sync(
        self, address: str, port: int, rank: int, world_size: int, backend: str, tag: str, timeout_s: float
    ) -> None:
        if hasattr(self.engine, "join_weight_sync"):
            self.engine.join_weight_sync(address, port, rank, world_size, backend, tag, timeout_s)
            return
        from fgrlhf.runtime.weight_sync import WeightSyncGroup

        self.receiver = WeightSyncGroup(address, port, rank, world_size, backend, tag, timeout_s)

    def receive_weights(
        self, layout: list[tuple[str, tuple[int, ...], str]], bucket_mb: float, version: int | None = None
    ) -> None:
        """Take one push from policy rank 0 (``layout`` = names, shapes, dtypes in push order) of the policy
        after ``version`` updates."""
        if hasattr(self.engine, "receive_weights"):
            self.engine.receive_weights(layout, bucket_mb)
        elif self.receiver is None:
            raise RuntimeError("receive_weights before join_weight_sync")
        else:
            self.engine.load_weights(self.receiver.receive(layout, bucket_mb))
        self.synced, self.version = True, version

    def weights_checksum(self) -> dict[str, float]:
        """Per-tensor fingerprints of the engine's weights, to compare with the learner after a push."""
        return self.engine.weights_checksum()

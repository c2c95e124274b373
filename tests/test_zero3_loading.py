"""ZeRO-3 learners load partitioned and push per bucket (issue 13, defect 9), on CPU with 2 gloo ranks.

- Each PPO learner (the policy from a checkpoint, the critic from a reward-model directory with either head
  init) and a supervised learner holds exactly the checkpoint's weights after loading partitioned.
- Loading never holds a whole model on a rank: the peak RSS growth of each rank (tests/zero3_load_probe.py) is
  its partition plus less than a quarter of the model, where loading the same model whole grows by two copies.
- The push gathers one bucket at a time: as many gathers as buckets, each of exactly its bucket's parameters,
  and the rollout engine ends with the learner's weights.
- Export (``save_hf``, ``weights_checksum``) gathers one parameter at a time and gives what an unpartitioned
  learner gives: the same files, byte for byte, and the same fingerprints.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny causal-LM checkpoint and a token RM directory with a non-trivial head (bias != 0)."""
    from fgrlhf.config import ModelConfig
    from fgrlhf.models import load_causal_lm, load_tokenizer
    from fgrlhf.reward.model import build_reward_model

    root = tmp_path_factory.mktemp("zero3-ckpt")
    tokenizer = load_tokenizer("tiny")
    load_causal_lm(ModelConfig(name="tiny", seed=0), tokenizer).save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    rm = build_reward_model("token", ModelConfig(name="tiny", seed=1))
    with torch.no_grad():
        rm.head.weight.normal_(generator=torch.Generator().manual_seed(2))
        rm.head.bias.fill_(0.5)
    rm.save_pretrained(root / "rm", tokenizer)
    return {"lm": root / "lm", "rm": root / "rm"}


def _file(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _gathered_states(ray, ranks) -> list[dict[str, torch.Tensor]]:
    """The full state dict of every rank (a collective gather, so every rank is asked at once)."""

    def state(worker):
        from fgrlhf.runtime.distributed import iter_full_state

        return {name: tensor.clone() for name, tensor in iter_full_state(worker.engine.module, 3)}

    return ray.get([rank.__ray_call__.remote(state) for rank in ranks])


def _partitioned(ray, ranks) -> list[bool]:
    """Whether each rank's engine holds its share of every parameter (1/2, padded), not the whole."""

    def check(worker):
        return all(
            p.data.numel() == 0 and p.ds_tensor.numel() == -(-p.ds_numel // 2)
            for p in worker.engine.module.parameters()
        )

    return ray.get([rank.__ray_call__.remote(check) for rank in ranks])


def _record_gathers(worker):
    """Record the parameters (``ds_id``) of every gather on this rank from now on; [] for a disabled one."""
    import deepspeed

    enter = deepspeed.zero.GatheredParameters.__enter__
    worker.gathers = []

    def recording(context):
        worker.gathers.append(sorted(p.ds_id for p in context.params) if context.enabled else [])
        return enter(context)

    deepspeed.zero.GatheredParameters.__enter__ = recording


def _take_gathers(ray, ranks) -> list[list[list[int]]]:
    """Each rank's gathers recorded since the last call (:func:`_record_gathers`)."""

    def take(worker):
        gathers, worker.gathers = worker.gathers, []
        return gathers

    return ray.get([rank.__ray_call__.remote(take) for rank in ranks])


def _start(ray, cls, *args, count: int = 2):
    ranks = [ray.remote(cls).options(num_cpus=0.25).remote(rank, count, *args) for rank in range(count)]
    addr, port = ray.get(ranks[0].rendezvous_address.remote())
    ray.get([rank.setup.remote(addr, port) for rank in ranks])
    return ranks


def _ds():
    from fgrlhf.config import DeepSpeedConfig

    return DeepSpeedConfig(zero_stage=3, world_size=2, micro_batch_size=1, num_cpus_per_rank=0.25)


def test_zero3_policy_loads_the_checkpoint_and_pushes_one_bucket_per_gather(ray_session, checkpoints):
    ray = ray_session
    from fgrlhf.config import ModelConfig
    from fgrlhf.runtime.weight_sync import buckets
    from fgrlhf.workers.learner_worker import PolicyLearner
    from fgrlhf.workers.rollout_worker import RolloutWorker

    ranks = _start(ray, PolicyLearner, _ds(), ModelConfig(name=str(checkpoints["lm"])))
    # The generator starts from other (seed 1) weights, so equality can only come from the push.
    rollout = ray.remote(RolloutWorker).options(num_cpus=0.25).remote("hf", ModelConfig(name="tiny", seed=1))
    try:
        ray.get(rollout.ready.remote())  # built before the push group's rendezvous starts its timeout
        assert _partitioned(ray, ranks) == [True, True]
        states = _gathered_states(ray, ranks)
        expected = _file(checkpoints["lm"])
        for state in states:
            # save_pretrained stores the tied lm_head once, as the embedding.
            assert set(state) - set(expected) == {"lm_head.weight"}
            assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
            for name, tensor in expected.items():
                assert torch.equal(state[name], tensor), name

        def bucket_ids(worker, bucket_mb):
            params = [p for _, p in worker._pushed_parameters()]
            return [sorted(params[i].ds_id for i in group) for group in buckets(worker.weight_layout(), bucket_mb)]

        layout = ray.get(ranks[0].weight_layout.remote())
        bucket_mb = 0.05  # ~50 KiB: the tiny model travels in several buckets
        expected_gathers = ray.get(ranks[0].__ray_call__.remote(bucket_ids, bucket_mb))
        assert len(expected_gathers) == len(buckets(layout, bucket_mb)) > 3
        ray.get([rank.__ray_call__.remote(_record_gathers) for rank in ranks])
        addr, port = ray.get(ranks[0].rendezvous_address.remote())
        ray.get(
            [
                ranks[0].join_weight_sync.remote(addr, port, 2, "gloo", "zero3-load", 60),
                rollout.join_weight_sync.remote(addr, port, 1, 2, "gloo", "zero3-load", 60),
            ]
        )
        ray.get(
            [rollout.receive_weights.remote(layout, bucket_mb)]
            + [rank.push_weights.remote(bucket_mb) for rank in ranks]
        )
        assert _take_gathers(ray, ranks) == [
            expected_gathers,
            expected_gathers,
        ]  # one gather per bucket, of that bucket alone

        from fgrlhf.runtime.weight_sync import checksums

        assert ray.get(rollout.weights_checksum.remote()) == checksums(states[0].items())
    finally:
        for actor in ranks + [rollout]:
            ray.kill(actor)


def test_zero3_export_gathers_one_parameter_at_a_time(ray_session, checkpoints, tmp_path):
    """save_hf and weights_checksum under ZeRO-3 gather each parameter alone (never the whole model on a rank)
    and give exactly what an unpartitioned (ZeRO-0, one rank) learner of the same checkpoint gives."""
    ray = ray_session
    from fgrlhf.config import DeepSpeedConfig, ModelConfig
    from fgrlhf.runtime.weight_sync import checksums
    from fgrlhf.workers.learner_worker import PolicyLearner

    model = ModelConfig(name=str(checkpoints["lm"]))
    ranks = _start(ray, PolicyLearner, _ds(), model)
    whole = _start(
        ray,
        PolicyLearner,
        DeepSpeedConfig(zero_stage=0, world_size=1, micro_batch_size=1, num_cpus_per_rank=0.25),
        model,
        count=1,
    )
    try:
        assert _partitioned(ray, ranks) == [True, True]
        param_ids = ray.get(
            ranks[0].__ray_call__.remote(lambda worker: {p.ds_id for p in worker.engine.module.parameters()})
        )
        ray.get([rank.__ray_call__.remote(_record_gathers) for rank in ranks])

        def one_at_a_time(gathers: list[list[int]]) -> None:
            assert gathers and all(len(ids) <= 1 for ids in gathers), gathers
            assert {i for ids in gathers for i in ids} == param_ids  # every parameter, each alone

        ray.get([rank.save_hf.remote(str(tmp_path / "zero3")) for rank in ranks])
        saved = _take_gathers(ray, ranks)
        ray.get(whole[0].save_hf.remote(str(tmp_path / "zero0")))
        sums = ray.get([rank.weights_checksum.remote() for rank in ranks])
        summed = _take_gathers(ray, ranks)
        for gathers in (saved, summed):
            assert gathers[0] == gathers[1]  # the ranks take part in the same gathers, in the same order
            one_at_a_time(gathers[0])

        # (a) the checkpoint's tensors, the tied lm_head under its own name too, as an unpartitioned save
        source = _file(checkpoints["lm"])
        written = _file(tmp_path / "zero3")
        assert set(written) == set(source) | {"lm_head.weight"}
        for name, tensor in {**source, "lm_head.weight": source["model.embed_tokens.weight"]}.items():
            assert torch.equal(written[name], tensor), name
        files = sorted(path.name for path in (tmp_path / "zero0").iterdir())
        assert "model.safetensors" in files and "config.json" in files
        assert sorted(path.name for path in (tmp_path / "zero3").iterdir()) == files
        for name in files:
            assert (tmp_path / "zero3" / name).read_bytes() == (tmp_path / "zero0" / name).read_bytes(), name

        # (b) the fingerprints of the unpartitioned weights, on both ranks, in the state dict's order
        unpartitioned = ray.get(whole[0].weights_checksum.remote())
        assert sums == [unpartitioned, unpartitioned]
        assert list(sums[0]) == list(unpartitioned)
        assert unpartitioned == checksums({**source, "lm_head.weight": source["model.embed_tokens.weight"]}.items())
    finally:
        for actor in ranks + whole:
            ray.kill(actor)


def test_zero3_critic_loads_the_reward_model_with_either_head(ray_session, checkpoints):
    ray = ray_session
    from fgrlhf.config import ModelConfig
    from fgrlhf.workers.learner_worker import CriticLearner

    file = _file(checkpoints["rm"])
    assert float(file["head.bias"]) == 0.5 and file["head.weight"].abs().sum() > 0
    zero_head = {**file, "head.weight": torch.zeros_like(file["head.weight"]), "head.bias": torch.zeros(1)}
    groups = {}
    try:
        for head_init in ("zero", "reward_head"):  # two groups, set up side by side
            groups[head_init] = [
                ray.remote(CriticLearner)
                .options(num_cpus=0.25)
                .remote(rank, 2, _ds(), ModelConfig(name="tiny"), str(checkpoints["rm"]), head_init)
                for rank in range(2)
            ]
        addresses = {head: ray.get(ranks[0].rendezvous_address.remote()) for head, ranks in groups.items()}
        ray.get([rank.setup.remote(*addresses[head]) for head, ranks in groups.items() for rank in ranks])
        for head_init, expected in (("zero", zero_head), ("reward_head", file)):
            ranks = groups[head_init]
            assert _partitioned(ray, ranks) == [True, True]
            for state in _gathered_states(ray, ranks):
                assert set(state) == set(expected)
                for name, tensor in expected.items():
                    assert torch.equal(state[name], tensor), (head_init, name)
    finally:
        for actor in [rank for ranks in groups.values() for rank in ranks]:
            ray.kill(actor)


def test_zero3_supervised_learner_loads_its_checkpoint(ray_session, checkpoints):
    """FIGA/SFT start from a causal-LM checkpoint: the supervised trainer's ranks load it partitioned too."""
    ray = ray_session
    from fgrlhf.config import ModelConfig
    from fgrlhf.figa.task import FigaLossConfig, FigaTask
    from fgrlhf.workers.train_worker import SupervisedTrainWorker

    task = FigaTask(ModelConfig(name=str(checkpoints["lm"])), FigaLossConfig(), pad_id=0)
    ranks = [
        ray.remote(SupervisedTrainWorker).options(num_cpus=0.25).remote(task, rank, 2, _ds(), 0) for rank in range(2)
    ]
    try:
        addr, port = ray.get(ranks[0].rendezvous_address.remote())
        ray.get([rank.setup.remote(addr, port, 1) for rank in ranks])
        expected = _file(checkpoints["lm"])
        for state in _gathered_states(ray, ranks):
            for name, tensor in expected.items():
                assert torch.equal(state[name], tensor), name
    finally:
        for actor in ranks:
            ray.kill(actor)


def _probe(zero_stage: int, world: int, role: str, directory: Path) -> list[dict]:
    import os

    from fgrlhf.runtime.distributed import free_port

    # A fixed mmap threshold: glibc's adaptive one rises to the size of the gathered buffers once they are
    # freed, after which they come from the heap, interleaved with the partitions, and freed ones are not
    # returned (tens of MB of fragmentation that varies from run to run, not tensors anyone holds).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.zero3_load_probe",
                str(rank),
                str(world),
                str(port),
                str(zero_stage),
                role,
                str(directory),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in range(world)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.fixture(scope="module")
def wide_checkpoints(tmp_path_factory):
    """~220 MB float32 models of many small parameters (1024-token vocab): the largest tensor is ~1 % of the
    model, so a whole copy stands far out of the fixed costs of loading (imports, DeepSpeed's buffers)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    from fgrlhf.reward.model import TokenRewardModel

    root = tmp_path_factory.mktemp("zero3-wide")
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=16,
        num_attention_heads=8,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    )
    TokenRewardModel(LlamaModel(config)).save_pretrained(root / "rm")
    LlamaForCausalLM(config).save_pretrained(root / "lm")
    return {"critic": root / "rm", "policy": root / "lm"}


def test_zero3_loading_never_holds_a_whole_model(wide_checkpoints):
    """Peak RSS growth while loading = what a rank holds. Under ZeRO-3 each rank (rank 0 reading the file
    included) ends with exactly half the model and peaks below its partition plus a quarter of the model: one
    parameter at a time, plus fixed costs (~20 MB measured). Loading the critic whole (ZeRO-0) peaks at two
    copies (the file's tensors and the model's), so it fails that bound by far. (A whole policy is not a
    control: transformers maps its checkpoint lazily, so RSS grows only when the weights are first used.)"""
    for role in ("critic", "policy"):
        ranks = _probe(3, 2, role, wide_checkpoints[role])
        model = ranks[0]["model"]
        assert model > 200 * 2**20 and ranks[0]["largest"] < model / 50
        for rank, measured in enumerate(ranks):
            assert measured["partition"] == pytest.approx(model / 2, rel=0.01), (role, rank, measured)
            assert measured["peak_growth"] < measured["partition"] + model / 4, (role, rank, measured)
    (whole,) = _probe(0, 1, "critic", wide_checkpoints["critic"])
    assert whole["partition"] == whole["model"]
    assert whole["peak_growth"] > whole["partition"] + whole["model"] / 2, whole

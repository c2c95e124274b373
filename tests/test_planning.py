"""`fgrlhf plan`: the memory arithmetic against hand-computed values, the placement it reports, the CLI on
every training config in configs/, the refusal in `fgrlhf ppo` / `train-rm`, and the estimate against the
measured memory of real tiny and SmolLM2 learners on CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fgrlhf.runtime.placement import assign_gpus, ppo_placement, slot_devices
from fgrlhf.runtime.planning import (
    PROCESS_BASELINE_GB,
    Arch,
    GiB,
    Role,
    activation_bytes,
    checkpoint_bytes,
    kv_bytes_per_token,
    layer_activation_elements,
    learner_state_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
LLAMA_7B = Arch(
    hidden=4096,
    layers=32,
    heads=32,
    kv_heads=32,
    head_dim=128,
    intermediate=11008,
    vocab=32000,
    lm_params=6_738_415_616,
    lm_head_params=131_072_000,
)
TRAINING = sorted(
    p.name
    for p in CONFIGS.glob("*.yaml")
    if p.name.startswith(("ppo-", "rm-", "sft-")) or (p.name.startswith("figa-") and not p.name.startswith("figa-data"))
)
NOT_TRAINING = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in TRAINING)


# --- pure arithmetic --------------------------------------------------------------------------------------
def test_zero3_bf16_adam_over_8_ranks():
    # 7B parameters, bf16 weights and gradients, fp32 master + Adam moments (12 bytes), all split 8 ways.
    out = learner_state_bytes(7_000_000_000, zero_stage=3, world_size=8, weight_bytes=2, mixed_precision=True)
    assert out == {"weights": 1.75e9, "gradients": 1.75e9, "optimizer": 10.5e9}
    assert sum(out.values()) == 16 * 7e9 / 8  # the ZeRO paper's 16 bytes a parameter, partitioned


@pytest.mark.parametrize(
    "stage,expected",
    [
        (0, (2e9, 2e9, 12e9)),  # nothing partitioned
        (1, (2e9, 2e9, 12e9 / 4)),  # optimizer states
        (2, (2e9, 2e9 / 4, 12e9 / 4)),  # + gradients
        (3, (2e9 / 4, 2e9 / 4, 12e9 / 4)),  # + weights
    ],
)
def test_zero_stages_partition_what_they_should(stage, expected):
    out = learner_state_bytes(1_000_000_000, stage, 4, weight_bytes=2, mixed_precision=True)
    assert (out["weights"], out["gradients"], out["optimizer"]) == pytest.approx(expected)


def test_fp32_adam_and_fp32_gradient_accumulation():
    # Plain fp32 Adam: 4 (weights) + 4 (gradients) + 8 (two moments) bytes a parameter, no master copy.
    assert learner_state_bytes(10, 0, 1, 4, False) == {"weights": 40, "gradients": 40, "optimizer": 80}
    # bf16 weights with gradients accumulated in fp32.
    assert learner_state_bytes(10, 0, 1, 2, True, grad_bytes=4)["gradients"] == 40


def test_llama7b_activation_counts_by_hand():
    # 7h (residual inputs, norm outputs, q, attention output and its copy) + 2h (k, v) + 4i (MLP).
    assert layer_activation_elements(LLAMA_7B) == 7 * 4096 + 2 * 4096 + 4 * 11008 == 80_896
    rows, tokens = 4, 492  # the 8xA100 policy: micro-batch 4 x (192 prompt + 300 response)
    full = activation_bytes(LLAMA_7B, rows, tokens, 2, checkpointing=False)
    assert full == {"activations": 32 * 80_896 * rows * tokens * 2}
    ckpt = activation_bytes(LLAMA_7B, rows, tokens, 2, checkpointing=True, logit_tokens=300)
    assert ckpt["activations"] == (32 * 4096 + 80_896) * rows * tokens * 2  # layer inputs + one rebuilt layer
    # The head runs at the 300 response positions only: its bf16 output and 6 fp32 copies there.
    assert ckpt["logits"] == rows * 300 * 32000 * (2 + 4 * 6)
    # back-propagating through an entropy bonus keeps 5 more fp32 copies
    bonus = activation_bytes(LLAMA_7B, rows, tokens, 2, checkpointing=True, logit_tokens=300, entropy_grad=True)
    assert bonus["logits"] == rows * 300 * 32000 * (2 + 4 * 11)


def test_kv_cache_of_llama7b_is_half_a_mib_per_token():
    assert kv_bytes_per_token(LLAMA_7B, 2) == 2 * 32 * 32 * 128 * 2 == 512 * 1024


def test_checkpoint_bytes():
    p = 1000
    assert checkpoint_bytes(p, 3, 2, True) == 12 * p  # master + 2 moments; ZeRO-3 module files hold no weights
    assert checkpoint_bytes(p, 0, 4, False) == 4 * p + 8 * p  # fp32 weights + 2 fp32 moments
    assert checkpoint_bytes(p, 2, 2, True) == 2 * p + 12 * p


def test_activations_and_optimizer_step_never_coexist():
    role = Role("x", 1, 1.0, {"weights": 10.0, "activations": 5.0, "logits": 2.0, "optimizer_step": 4.0})
    assert role.total == 10 + 7
    role.components["optimizer_step"] = 9.0
    assert role.total == 10 + 9


def test_parameter_counts_from_configs():
    from fgrlhf.config import ModelConfig
    from fgrlhf.models import load_causal_lm
    from fgrlhf.runtime.planning import load_arch

    assert load_arch("missing/dir", fallback="llama-7b").lm_params == 6_738_415_616  # the published 6.74B
    assert load_arch("missing/dir", fallback="llama-13b").lm_params == 13_015_864_320
    assert load_arch("smollm2").lm_params == 134_515_008
    tiny = ModelConfig(tiny_layers=3)
    model = load_causal_lm(tiny)
    arch = load_arch("tiny", tiny)
    assert arch.lm_params == sum(p.numel() for p in model.parameters())
    assert arch.rm_params == arch.lm_params + arch.hidden + 1  # tied head: the RM adds only Linear(h, 1)


def test_missing_checkpoint_needs_model_config():
    from fgrlhf.runtime.planning import PlanError, load_arch

    with pytest.raises(PlanError, match="--model-config"):
        load_arch("/nonexistent/llama")


# --- placement --------------------------------------------------------------------------------------------
def _ppo_cfg(path="ppo-llama7b-8xa100.yaml", *overrides):
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    return load_config(PPOTrainConfig, CONFIGS / path, list(overrides))


def test_8xa100_placement_packs_the_half_gpus_together():
    plan = ppo_placement(_ppo_cfg())
    assert [(s.role, s.index, s.bundle) for s in plan.slots] == [
        ("policy", 0, 0),
        ("policy", 1, 1),
        ("policy", 2, 2),
        ("critic", 0, 3),
        ("critic", 1, 4),
        ("critic", 2, 5),
        ("rollout", 0, 6),
        ("reward", 0, 7),
        ("reference", 0, 8),
    ]
    assert plan.num_gpus == 8
    assert assign_gpus(plan) == [[0], [1], [2], [3], [4], [5], [6], [7], [7]]


def test_colocated_bundle_gives_each_whole_gpu_actor_its_own_device():
    plan = ppo_placement(_ppo_cfg("ppo-llama7b-8xa100.yaml", "placement.mode=colocated"))
    # bundle 0: policy 0, critic 0, rollout (1 GPU each), reward + reference (0.5 each) = 4 GPUs
    assert plan.bundles[0]["GPU"] == 4.0
    assert assign_gpus(plan)[0] == [0, 1, 2, 3]
    by_slot = dict(zip([(s.role, s.index) for s in plan.slots], slot_devices(plan)))
    assert [by_slot[k] for k in [("policy", 0), ("critic", 0), ("rollout", 0), ("reward", 0), ("reference", 0)]] == [
        [0],
        [1],
        [2],
        [3],
        [3],
    ]
    assert by_slot["policy", 1] == [4] and by_slot["critic", 2] == [7]


def test_colocated_critic_on_one_rank_does_not_fit(capsys):
    # One critic rank holds all of its ~137 GiB on one device: spread over bundle 0's four GPUs it looked
    # like 35 GiB each and the plan said it fits.
    code, plan = _plan(
        capsys,
        CONFIGS / "ppo-llama7b-8xa100.yaml",
        "--model-config",
        "llama-7b",
        "placement.mode=colocated",
        "critic_learner.world_size=1",
    )
    assert code == 1 and plan["fits"] is False
    gpus = {g["gpu"]: g for g in plan["placement"]["nodes"][0]["gpus"]}
    assert gpus[1]["roles"] == ["critic[0]"] and gpus[1]["memory_gb"] > 130
    assert gpus[3]["roles"] == ["reward[0]", "reference[0]"]
    assert plan["problems"] == [f"GPU 1 (node 0): critic[0] need {gpus[1]['memory_gb']:.1f} GiB > 80 GiB"]
    critic = next(s for s in plan["placement"]["slots"] if s["role"] == "critic")
    assert critic["devices"] == [1]


def test_balanced_8xa100_layout_leaves_headroom_on_every_learner_gpu(capsys):
    # 3 + 3 learner ranks: neither learner is the hot spot the critic on 2 ranks was (~69 GiB).
    code, plan = _plan(capsys, CONFIGS / "ppo-llama7b-8xa100.yaml", "--model-config", "llama-7b")
    assert code == 0
    learners = [g for g in plan["placement"]["nodes"][0]["gpus"] if g["roles"][0].startswith(("policy", "critic"))]
    assert len(learners) == 6 and max(g["memory_gb"] for g in learners) < 55


def test_colocated_bundles_sum_each_index():
    cfg = _ppo_cfg(
        "ppo-llama7b-8xa100.yaml",
        "placement.mode=colocated",
        "policy_learner.num_gpus_per_rank=0.25",
        "critic_learner.num_gpus_per_rank=0.25",
        "rollout.num_gpus=0.25",
        "reward.num_gpus=0.125",
        "reference.num_gpus=0.125",
        "weight_sync.backend=gloo",
    )
    plan = ppo_placement(cfg)
    # bundle 0: policy 0, critic 0, rollout 0, reward, reference; bundles 1-2: policy i + critic i.
    assert [b["GPU"] for b in plan.bundles] == [1.0, 0.5, 0.5]
    # Best fit: the second half bundle joins the half-used GPU 1, which then holds two ranks of each learner.
    assert assign_gpus(plan) == [[0], [1], [1]]
    assert slot_devices(plan) == [[0], [1], [1], [0], [1], [1], [0], [0], [0]]  # policy 0-2, critic 0-2, ...


def test_plan_rejects_two_ranks_of_one_learner_on_one_gpu(capsys):
    code, plan = _plan(
        capsys,
        CONFIGS / "ppo-llama7b-8xa100.yaml",
        "--model-config",
        "llama-7b",
        "policy_learner.num_gpus_per_rank=0.5",
        "weight_sync.backend=gloo",
    )
    assert code == 1
    assert any("policy" in p and "NCCL" in p for p in plan["problems"]), plan["problems"]


# --- the command ------------------------------------------------------------------------------------------
def _plan(capsys, config, *extra):
    from fgrlhf.cli import main

    code = main(["plan", "--config", str(config), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def _model_config_for(name: str, tmp_path: Path) -> list[str]:
    """Stand-ins for checkpoints these configs name but this machine lacks (runs/…, /checkpoints/…)."""
    if "llama7b" in name:
        return ["--model-config", "llama-7b"]
    if "synthetic" in name:  # the env's SFT'd tiny policy
        from fgrlhf.config import ModelConfig
        from fgrlhf.models import load_tokenizer, tiny_llama_config

        tiny_llama_config(ModelConfig(), load_tokenizer("tiny")).to_json_file(tmp_path / "config.json")
        return ["--model-config", str(tmp_path / "config.json")]
    return ["--model-config", "smollm2-135m"]


@pytest.mark.parametrize("name", TRAINING)
def test_plan_runs_on_every_training_config(capsys, tmp_path, name):
    code, plan = _plan(capsys, CONFIGS / name, *_model_config_for(name, tmp_path), "--host-ram-gb", "64")
    assert code == (0 if plan["fits"] else 1)
    assert {"fits", "gpus", "roles", "host_ram_gb", "checkpoint_gb"} <= set(plan)
    for role in plan["roles"]:
        assert {"role", "gpus", "zero_stage", "memory_gb_per_gpu"} <= set(role)
        assert role["memory_gb"] > 0
    assert plan["checkpoint_gb"] > 0 and plan["host_ram_gb"] > 0
    expected = {"ppo": {"policy", "critic", "rollout", "reward", "reference"}}.get(plan["kind"], {"learner"})
    assert {r["role"] for r in plan["roles"]} == expected
    if "cpu" in name:  # CPU-only configs plan host RAM only, and fit this machine's 2-core class of box
        assert plan["gpus"] == 0 and plan["fits"], plan["problems"]
    if "8xa100" in name:  # the paper's GPU configs fit the cluster they are written for
        assert plan["gpus"] == 8 and plan["fits"], plan["problems"]


@pytest.mark.parametrize("name", NOT_TRAINING)
def test_plan_refuses_configs_that_train_nothing(capsys, name):
    from fgrlhf.cli import main

    assert main(["plan", "--config", str(CONFIGS / name)]) == 2
    assert "plan" in capsys.readouterr().err


def test_paper_setup_fits_8xa100_and_names_the_role_that_does_not_fit_24gb(capsys):
    code, plan = _plan(
        capsys, CONFIGS / "ppo-llama7b-8xa100.yaml", "--model-config", "llama-7b", "--gpu-memory-gb", "80"
    )
    assert code == 0 and plan["fits"] and plan["gpus"] == 8
    roles = {r["role"]: r for r in plan["roles"]}
    assert roles["policy"]["zero_stage"] == 3 and roles["policy"]["gpus"] == 1
    # policy: 16 bytes a parameter over 3 ranks, plus the gathered layers and activations
    assert roles["policy"]["components_gb"]["optimizer"] == pytest.approx(12 * 6_738_415_616 / 3 / GiB, abs=1e-3)
    gpu7 = plan["placement"]["nodes"][0]["gpus"][7]
    assert gpu7["roles"] == ["reward[0]", "reference[0]"]
    code, plan = _plan(
        capsys, CONFIGS / "ppo-llama7b-8xa100.yaml", "--model-config", "llama-7b", "--gpu-memory-gb", "24"
    )
    assert code == 1 and not plan["fits"]
    assert any("critic[0]" in p for p in plan["problems"])  # 16 B x 6.6B / 3 ranks = 33 GiB


def test_two_nodes_split_the_devices(capsys):
    _, plan = _plan(capsys, CONFIGS / "ppo-llama7b-8xa100.yaml", "--model-config", "llama-7b", "--gpus-per-node", "4")
    nodes = plan["placement"]["nodes"]
    assert [len(n["gpus"]) for n in nodes] == [4, 4]
    assert nodes[1]["gpus"][3]["roles"] == ["reward[0]", "reference[0]"]


def test_ppo_and_train_rm_refuse_a_job_that_cannot_fit(capsys, tmp_path):
    import ray

    from fgrlhf.cli import main

    code = main(
        ["ppo", "--config", str(CONFIGS / "ppo-tiny-cpu.yaml"), "--out", str(tmp_path / "ppo"), "--host-ram-gb", "1"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "does not fit" in err and "host RAM of node 0" in err and "policy" in err
    code = main(
        [
            "train-rm",
            "--config",
            str(CONFIGS / "rm-token-tiny-cpu.yaml"),
            "--data",
            str(ROOT / "tests" / "fixtures" / "figa_edits_tiny.jsonl"),
            "--out",
            str(tmp_path / "rm"),
            "--host-ram-gb",
            "0.5",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "learner[0]" in err and "--force" in err
    assert not ray.is_initialized() and not (tmp_path / "ppo").exists() and not (tmp_path / "rm").exists()


# --- the estimate against measured memory -----------------------------------------------------------------
def _measure(name: str, rows: int, prompt: int, response: int, entropy_coef: float) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "tests.memory_probe", name, str(rows), str(prompt), str(response), str(entropy_coef)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _estimate(name: str, rows: int, prompt: int, response: int, entropy_coef: float) -> float:
    from fgrlhf.config import DeepSpeedConfig, ModelConfig
    from fgrlhf.runtime.planning import _learner, load_arch

    arch = load_arch(name, ModelConfig(name=name))
    role = _learner(
        "policy",
        arch,
        arch.lm_params,
        DeepSpeedConfig(micro_batch_size=rows),
        rows,
        prompt + response,
        "float32",
        logit_tokens=response,
        entropy_grad=entropy_coef > 0,
    )
    return role.total


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,rows,prompt,response,entropy_coef",
    [
        ("tiny", 4, 96, 32, 0.0),  # logits dominate: 4 x 32 response positions x 49152 vocab
        ("tiny", 4, 96, 32, 0.01),  # and an entropy bonus back-propagated
        ("smollm2", 2, 48, 16, 0.0),  # Adam states dominate: 16 bytes x 134.5M parameters
    ],
)
def test_estimate_matches_measured_learner_memory(name, rows, prompt, response, entropy_coef):
    """Peak RSS growth of a real learner over two PPO optimizer steps vs the plan's per-rank estimate.

    25 % tolerance: the activation and logit counts follow the code path tensor by tensor but not the
    allocator (glibc keeps some freed blocks mapped, so RSS lags frees) nor small temporaries (norm
    statistics, the CPU attention's score matrix, DeepSpeed's buffers). The peak of one probe varies with the
    allocator's state: for tiny (logits-bound) 218-251 MB in five probes on 2026-12-07 against an estimate of
    232 MB, 293-405 MB in five with the entropy bonus against 358; SmolLM2 (state-bound) 2.67 GB against 2.69. The
    larger of two probes is the peak compared."""
    measured = max(
        (_measure(name, rows, prompt, response, entropy_coef) for _ in range(2)), key=lambda m: m["peak_growth"]
    )
    estimate = _estimate(name, rows, prompt, response, entropy_coef)
    assert measured["peak_growth"] == pytest.approx(estimate, rel=0.25), (measured, estimate)
    # The per-process baseline the host-RAM plan adds is an upper bound of a worker's import-time RSS.
    assert 0.6 * PROCESS_BASELINE_GB * GiB < measured["baseline"] <= PROCESS_BASELINE_GB * GiB

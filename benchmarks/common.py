"""Shared data pipeline of the paper-table benchmarks (rm_accuracy.py, training_hours.py).

env data (gold-labelled pairs, plus the SFT policy on synthetic) -> rule edits of each pair's rejected
response -> reward models -> evaluation. Every stage calls the project's own commands in-process (one Ray
session for the whole benchmark) and writes into the work dir, as a stage of the work dir's
:class:`~fgrlhf.pipelines.stages.Pipeline` (:func:`prepare_data` opens it; :attr:`Prepared.pipeline`): a stage
whose output exists is skipped, so an interrupted benchmark re-run resumes, and the two scripts share data
and RMs when given the same ``--workdir``. Each stage is keyed by its settings (env, sizes, seed, overrides,
...) and the bytes of its input files (edit rules and RM configs included) in ``stage_keys.json``, beside the
seconds each took (``stage_seconds.json``): a re-run whose settings changed under a finished stage stops with
``StageChanged`` instead of reusing its stale output. Work dirs from before these files have no recorded keys:
their outputs are reused as they are.

Layout of a work dir: ``data/round_R/`` (``fgrlhf env-data`` outputs, seed R), ``data/pairs.jsonl`` (all
rounds), ``data/edits.jsonl`` (``fgrlhf edit`` with the rule editor; ``data/edit_rules.txt`` names its
rules and their hash), ``data/heldout.jsonl`` (pairs on the
env's eval prompts labelled by the gold order, never trained on), ``data/heldout_edits.jsonl`` (their
rejected sides rule-edited: edited should beat original), on envs with pre-registered data checks
(``balanced``) ``data/heldout*_length_matched.jsonl`` (|Δ tokens| ≤ 2), ``rm/NAME-sSEED/`` (``fgrlhf train-rm``
run + ``timing.json``), ``eval/*.json`` (``fgrlhf eval-rm`` reports), ``stage_seconds.json`` and
``stage_keys.json`` (the stages' seconds and keys, by their path in the work dir).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fgrlhf.data.loading import read_jsonl
from fgrlhf.envs.env_data import ENV_CHOICES, GRAMMAR_ENVS
from fgrlhf.pipelines import stages

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("benchmarks")


@dataclass(frozen=True)
class Sizes:
    """How much data and training a benchmark run uses (full or ``--quick``)."""

    rounds: int  # env-data repetitions (seeds 0..rounds-1) pooled into the training pairs
    n_prompts: int | None  # pair prompts per round (None: the env-data default)
    sft_steps: int  # synthetic: SFT steps of the initial policy (RM backbone and PPO start)
    heldout_prompts: int | None  # eval-split prompts used for held-out pairs (None: all)
    heldout_per_prompt: int  # gold-labelled held-out pairs per eval prompt
    real_pairs: int | None = None  # alpaca-sim: judged real pairs evaluated (None: all 789)
    gen_tokens: int = 96  # alpaca-sim: SmolLM2's max new tokens per sampled response
    rm_overrides: tuple[str, ...] = ()


SIZES = {
    # 2000 SFT steps: the tiny policy learns to use the prompt only after a plateau (loss 1.75 until step ~800,
    # then 1.44; sampled gold 0.07 -> 0.27-0.41 against the generator's 0.31, BENCHMARKS.md); 200 steps left it
    # writing about random topics.
    ("synthetic", False): Sizes(rounds=8, n_prompts=None, sft_steps=2000, heldout_prompts=None, heldout_per_prompt=8),
    ("synthetic", True): Sizes(
        rounds=1, n_prompts=24, sft_steps=10, heldout_prompts=8, heldout_per_prompt=2, rm_overrides=("max_steps=4",)
    ),
    # balanced: the synthetic sizes. --quick keeps the full data (generated and edited in seconds, no model), so
    # the pre-registered data checks judge the same data a full run trains on; only training shrinks.
    ("balanced", False): Sizes(rounds=8, n_prompts=None, sft_steps=2000, heldout_prompts=None, heldout_per_prompt=8),
    ("balanced", True): Sizes(
        rounds=8,
        n_prompts=None,
        sft_steps=10,
        heldout_prompts=None,
        heldout_per_prompt=8,
        rm_overrides=("max_steps=4",),
    ),
    # SmolLM2 on CPU: a few dozen pairs, so a small global batch (the config's 16 would leave ~2 steps).
    ("alpaca-sim", False): Sizes(
        rounds=1,
        n_prompts=64,
        sft_steps=0,
        heldout_prompts=24,
        heldout_per_prompt=1,
        real_pairs=200,
        rm_overrides=("deepspeed.micro_batch_size=2", "deepspeed.gradient_accumulation_steps=1", "epochs=2"),
    ),
    # The rules fire rarely on short SmolLM2 answers (1 edit in 16 pairs at 48 tokens): a code-path check only.
    ("alpaca-sim", True): Sizes(
        rounds=1,
        n_prompts=16,
        sft_steps=0,
        heldout_prompts=4,
        heldout_per_prompt=1,
        real_pairs=8,
        gen_tokens=48,
        rm_overrides=(
            "max_steps=2",
            "eval_fraction=0",
            "deepspeed.world_size=1",
            "deepspeed.micro_batch_size=1",
            "deepspeed.gradient_accumulation_steps=1",
        ),
    ),
}


@dataclass(frozen=True)
class EnvSetup:
    rm_config: Path  # train-rm config (backbone overridden by ``backbone``)
    rm_overrides: tuple[str, ...]
    edit_rules: Path  # the rule editor's rules for this env
    tokenizer: str  # tokenizer of the edit statistics
    data_checks: bool = False  # enforce fgrlhf.envs.checks before any RM trains (length-neutral envs)


ENV_SETUP = {
    # Grammar responses run to ~130 tokens: the tiny config's 64 would cut off the faults and length they carry.
    # The annotator that also fixes global faults (the paper's premise); --edit-rules
    # configs/edit-rules-synthetic.yaml selects the local-only one.
    "synthetic": EnvSetup(
        ROOT / "configs/rm-token-tiny-cpu.yaml",
        ("max_response_tokens=160",),
        ROOT / "configs/edit-rules-synthetic-global.yaml",
        "tiny",
    ),
    "balanced": EnvSetup(
        ROOT / "configs/rm-token-tiny-cpu.yaml",
        ("max_response_tokens=160",),
        ROOT / "configs/edit-rules-balanced.yaml",
        "tiny",
        data_checks=True,
    ),
    "alpaca-sim": EnvSetup(
        ROOT / "configs/rm-token-smollm2-cpu.yaml", (), ROOT / "configs/edit-rules-alpaca-sim.yaml", "smollm2"
    ),
}


@dataclass
class Prepared:
    """The outputs of :func:`prepare_data`, and the work dir's pipeline that later stages run on."""

    env: str
    pipeline: stages.Pipeline
    pairs: Path
    edits: Path
    prompts_train: Path
    backbone: str  # RM backbone and PPO policy: the SFT policy dir (synthetic) or smollm2
    eval_sets: dict[str, Path] = field(default_factory=dict)  # name -> pairs evaluated against
    summary: dict = field(default_factory=dict)


def add_common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Flags both benchmarks take; ``name`` names the default plot."""
    parser.add_argument("--env", choices=ENV_CHOICES, default="synthetic")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CI smoke run)")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="stage outputs, reused on a re-run and shared by both benchmarks (the fine-grained "
        "RM of seed 0 is the same): default runs/bench/tables-ENV[-quick], "
        "tables-ENV-RULES[-quick] for --edit-rules other than the env's",
    )
    parser.add_argument("--json", metavar="OUT", type=Path, help="write the results as JSON")
    parser.add_argument("--plot", metavar="OUT.png", type=Path, help=f"plot path (default WORKDIR/{name}.png)")
    parser.add_argument("--num-cpus", type=float, default=2.0, help="CPUs of the local Ray instance")
    parser.add_argument(
        "--edit-rules",
        type=Path,
        help="rule-editor rules of the fine-grained data (default: the env's, e.g. "
        "configs/edit-rules-synthetic-global.yaml; configs/edit-rules-synthetic.yaml is the "
        "local-only annotator); a work dir serves one rule file and refuses another",
    )


def default_workdir(env: str, quick: bool, edit_rules: Path | None = None) -> Path:
    """runs/bench/tables-ENV[-RULES][-quick]: rules other than the env's default name their own work dir,
    since a work dir serves one rule file."""
    custom = edit_rules is not None and Path(edit_rules).resolve() != ENV_SETUP[env].edit_rules.resolve()
    rules = f"-{Path(edit_rules).stem}" if custom else ""
    return ROOT / "runs" / "bench" / f"tables-{env}{rules}{'-quick' if quick else ''}"


@contextlib.contextmanager
def ray_session(num_cpus: float, **ray_init_kwargs) -> Iterator[None]:
    """One local Ray instance for every stage of a benchmark (the commands reuse an initialised Ray). Actor
    output stays in Ray's session logs (/tmp/ray/session_latest/logs) so stdout holds only the table; actor
    errors still raise here with their traceback. ``ray_init_kwargs`` go to ``ray.init``."""
    import ray

    from fgrlhf.runtime.distributed import exit_on_termination, init_local_ray

    init_local_ray(num_cpus, log_to_driver=False, **ray_init_kwargs)  # bound to 127.0.0.1
    try:
        with exit_on_termination():  # SIGTERM/SIGHUP also shut Ray down
            yield
    finally:
        ray.shutdown()


def open_pipeline(workdir: Path) -> stages.Pipeline:
    """The stages of a work dir. Their ``fgrlhf`` commands share the Ray session and print their JSON lines
    to stderr, so the benchmark's stdout holds only its table. A stage is done when its output exists (each
    step writes it last, atomically), as in work dirs that predate the timings file."""
    return stages.Pipeline(workdir, "fgrlhf_benchmark_stage", say=log.info, trust_outputs=True)


def portable(path: str | Path, workdir: Path) -> str:
    """``path`` relative to the work dir when inside it, for stage keys: a moved or copied work dir keeps them."""
    path = Path(path)
    return str(path.relative_to(workdir)) if path.is_relative_to(workdir) else str(path)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _eval_prompts(env: str, limit: int | None) -> list[str]:
    from fgrlhf.envs import load_env

    module = load_env(env)
    if env in GRAMMAR_ENVS:
        prompts = module.split_prompts()[1]
    else:
        prompts = [r["prompt"] for r in module.split_records(module.load_eval_set())[1]]
    return prompts[:limit]


def heldout_pairs(env: str, sizes: Sizes, seed: int = 10_000) -> list[dict]:
    """Pairs on the env's eval-split prompts (never trained on), labelled by the gold order without noise;
    gold ties are dropped since neither side is right. Responses come from the same source as the training
    pairs (the grammar generator / SmolLM2), with a seed no training round uses."""
    from fgrlhf.envs import load_env
    from fgrlhf.envs.env_data import GenerationConfig, responses_from_model
    from fgrlhf.envs.preferences import label_pairs

    module = load_env(env)
    prompts = [p for p in _eval_prompts(env, sizes.heldout_prompts) for _ in range(sizes.heldout_per_prompt)]
    if env in GRAMMAR_ENVS:
        responses = [tuple(r) for r in module.sample_responses(prompts, 2, seed)]
    else:
        responses = responses_from_model(GenerationConfig(max_new_tokens=sizes.gen_tokens), prompts, seed)
    flat = module.gold_reward([p for p in prompts for _ in range(2)], [r for pair in responses for r in pair])
    scores = list(zip(flat[::2], flat[1::2]))
    records = label_pairs(prompts, responses, scores, temperature=0.0, label_noise=0.0, seed=seed)
    return [r for r in records if r["gold_chosen"] != r["gold_rejected"]]


def prepare_data(env: str, workdir: Path, sizes: Sizes, edit_rules: Path | None = None) -> Prepared:
    """Env pairs (all rounds pooled), their rule edits (``edit_rules``, default the env's), and the
    gold-labelled held-out pairs."""
    from fgrlhf.data.loading import ALPACA_EVAL_PAIRS, resolve_data_path, write_jsonl

    data = workdir / "data"
    setup = ENV_SETUP[env]
    edit_rules = Path(edit_rules or setup.edit_rules).resolve()
    # Edits, and the RMs trained on them, are cached by name: a work dir serves one set of rules only.
    rules_id = f"{edit_rules.name} sha256:{hashlib.sha256(edit_rules.read_bytes()).hexdigest()[:16]}"
    recorded = data / "edit_rules.txt"
    if recorded.exists() and recorded.read_text(encoding="utf-8").strip() != rules_id:
        raise SystemExit(
            f"{workdir} holds edits made with {recorded.read_text(encoding='utf-8').strip()}, "
            f"not {rules_id}: choose another --workdir"
        )
    data.mkdir(parents=True, exist_ok=True)
    recorded.write_text(f"{rules_id}\n", encoding="utf-8")
    pipeline = open_pipeline(workdir)
    rounds = [data / f"round_{seed}" for seed in range(sizes.rounds)]
    for seed, out in enumerate(rounds):
        # Only round 0 trains the SFT policy: every RM and PPO run starts from that one.
        extra = [f"sft_steps={sizes.sft_steps}"] if env in GRAMMAR_ENVS and seed == 0 and sizes.sft_steps else []
        extra += [f"n_prompts={sizes.n_prompts}"] if sizes.n_prompts else []
        extra += [f"generation.max_new_tokens={sizes.gen_tokens}"] if env == "alpaca-sim" else []
        argv = ["env-data", "--env", env, "--out", out, "--seed", seed, *extra]
        pipeline.command(None, out / "env_data.json", argv, [env, seed, extra])
    pairs = data / "pairs.jsonl"
    pipeline.stage(
        pairs,
        lambda: write_jsonl(pairs, [r for out in rounds for r in read_jsonl(out / "pairs.jsonl")]),
        inputs=tuple(out / "pairs.jsonl" for out in rounds),
    )
    heldout = data / "heldout.jsonl"
    pipeline.stage(
        heldout,
        lambda: write_jsonl(heldout, heldout_pairs(env, sizes)),
        key=[env, sizes.heldout_prompts, sizes.heldout_per_prompt, sizes.gen_tokens],
    )
    edits, heldout_edits = data / "edits.jsonl", data / "heldout_edits.jsonl"
    for source, target in ((pairs, edits), (heldout, heldout_edits)):
        argv = ["edit", "--input", source, "--output", target, "--editor", "rule", "--rules", edit_rules]
        argv += ["--no-progress", f"tokenizer={setup.tokenizer}"]
        pipeline.command(None, target, argv, setup.tokenizer, (source, edit_rules))

    prepared = Prepared(
        env,
        pipeline,
        pairs,
        edits,
        data / "round_0" / "prompts_train.jsonl",
        str(data / "round_0" / "policy") if env in GRAMMAR_ENVS else "smollm2",
        eval_sets={"heldout_gold": heldout},
    )
    edited = [r for r in read_jsonl(heldout_edits) if r["status"] == "edited"]
    if setup.data_checks:
        prepared.summary["data_checks"] = check_data(env, pairs, edits, heldout, heldout_edits, setup.tokenizer)
    if edited:  # eval-rm needs at least one; tiny quick runs may have none
        prepared.eval_sets["heldout_edits"] = heldout_edits
    if setup.data_checks:
        # Table 2's length-matched subsets: pairs whose sides differ by at most 2 tokens, where length cannot
        # decide the pair.
        for name in ("heldout_gold", "heldout_edits"):
            if name not in prepared.eval_sets:
                continue
            matched, source = data / f"{name}_length_matched.jsonl", prepared.eval_sets[name]
            pipeline.stage(
                matched,
                lambda source=source, matched=matched: write_jsonl(
                    matched, length_matched(read_jsonl(source), setup.tokenizer)
                ),
                key=setup.tokenizer,
                inputs=(source,),
            )
            if read_jsonl(matched):
                prepared.eval_sets[f"{name}_length_matched"] = matched
    if env == "alpaca-sim":
        real = data / "alpaca_real_pairs.jsonl"
        pipeline.stage(
            real,
            lambda: write_jsonl(real, read_jsonl(resolve_data_path(ALPACA_EVAL_PAIRS))[: sizes.real_pairs]),
            key=[ALPACA_EVAL_PAIRS, sizes.real_pairs],
        )
        prepared.eval_sets["alpaca_gpt4_judged"] = real
    statuses: dict[str, int] = {}
    for record in read_jsonl(edits):
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    train_pairs = read_jsonl(pairs)
    prepared.summary = {
        **prepared.summary,
        "pairs": len(train_pairs),
        "pairs_label_agrees_with_gold": sum(r["gold_agrees"] for r in train_pairs) / len(train_pairs),
        "edit_statuses": statuses,
        "heldout_pairs": len(read_jsonl(heldout)),
        "heldout_edit_pairs": len(edited),
        "heldout_edits_gold_prefers_edited": _gold_prefers_edited(env, edited),
        "backbone": prepared.backbone,
        "edit_rules": rules_id,
        "edit_token_length_change_mean": _mean_length_change(edited, setup.tokenizer),
        # Faults the annotator fixed in the edits kept as training data (and held out), with the words each
        # kind of fix added on average: the premise the edits carry, and how far they move length.
        "edit_fixes": _fixes_by_fault(read_jsonl(edits)),
        "heldout_edit_fixes": _fixes_by_fault(edited),
    }
    return prepared


def length_matched(records: list[dict], tokenizer_name: str, max_delta: int = 2) -> list[dict]:
    """The pairs (chosen/rejected, or an edit's edited/original) whose sides differ by ≤ ``max_delta`` tokens."""
    from fgrlhf.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    kept = []
    for record in records:
        if record.get("status", "edited") != "edited":
            continue
        a, b = ("edited", "original") if "edited" in record else ("chosen", "rejected")
        ids = tokenizer([record[a], record[b]], add_special_tokens=False)["input_ids"]
        if abs(len(ids[0]) - len(ids[1])) <= max_delta:
            kept.append(record)
    return kept


def check_data(env: str, pairs: Path, edits: Path, heldout: Path, heldout_edits: Path, tokenizer_name: str) -> dict:
    """The pre-registered checks of :mod:`fgrlhf.envs.checks` on the data a run trains and evaluates on,
    printed as they are made (the length checks first); any failure stops the run, naming every failed check
    with its figure.
    Returns ``{check name: {"value", "passed", "rule"}}`` for the results JSON."""
    from fgrlhf.envs import checks, load_env
    from fgrlhf.envs.gold import words
    from fgrlhf.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    module = load_env(env)

    def lengths(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    done: list[checks.Check] = []

    def report(new: list[checks.Check]) -> None:
        for check in new:
            print(f"data check: {check.line()}", flush=True)
        done.extend(new)

    for name, path, sides in (
        ("training pairs", pairs, ("chosen", "rejected")),
        ("training edits", edits, ("edited", "original")),
        ("heldout_gold", heldout, ("chosen", "rejected")),
        ("heldout_edits", heldout_edits, ("edited", "original")),
    ):
        records = [r for r in read_jsonl(path) if r.get("status", "edited") == "edited"]
        report(
            checks.length_checks(name, lengths([r[sides[0]] for r in records]), lengths([r[sides[1]] for r in records]))
        )
    all_edits = [r for path in (edits, heldout_edits) for r in read_jsonl(path) if r["status"] == "edited"]
    report(
        [
            checks.mean_change_check(
                lengths([r["edited"] for r in all_edits]), lengths([r["original"] for r in all_edits])
            )
        ]
    )
    train_edits = [r for r in read_jsonl(edits) if r["status"] == "edited"]
    # An equal-size generator sample on the same prompts, with a seed no data set uses.
    generated = [r[0] for r in module.sample_responses([r["prompt"] for r in train_edits], 1, 20_000)]
    report([checks.marker_check([r["edited"] for r in train_edits], generated)])
    train_prompts = module.split_prompts()[0]
    clean = [r for rs in module.sample_responses(train_prompts, 20, 0, module.CLEAN) for r in rs]
    clean_prompts = [p for p in train_prompts for _ in range(20)]
    report([checks.interior_optimum_check([len(words(r)) for r in clean], module.gold_reward(clean_prompts, clean))])
    checks.enforce(done)
    return {c.name: {"value": c.value, "passed": c.passed, "rule": c.rule} for c in done}


def _fixes_by_fault(records: list[dict]) -> dict[str, dict]:
    """Per fault: fixes in the records with status "edited", words added, mean words added per fix, and
    ``rejected``: fixes in edits the pipeline rejected as too large (``max_changed_fraction``), which no
    RM sees."""
    from fgrlhf.editing.pipeline import EditSummary

    summary = EditSummary()
    summary.add_fixes(records)
    fixes = summary.as_dict()["fixes"]
    for record in records:
        if record["status"].startswith("rejected"):
            for fault, done in (record.get("fixes") or {}).items():
                entry = fixes.setdefault(fault, {"fixed": 0, "delta_words": 0, "mean_delta_words": None})
                entry["rejected"] = entry.get("rejected", 0) + done["fixed"]
    return {fault: {"rejected": 0, **entry} for fault, entry in fixes.items()}


def _mean_length_change(edited: list[dict], tokenizer_name: str) -> float | None:
    """Mean tokens added by an edit (negative: the edit shortens), over held-out edit pairs: near 0 is
    the equal-length premise of Eq. 4; a large negative value makes "edited" a proxy for "shorter"."""
    from fgrlhf.models import load_tokenizer

    if not edited:
        return None
    tokenizer = load_tokenizer(tokenizer_name)
    lengths = tokenizer([r["edited"] for r in edited] + [r["original"] for r in edited], add_special_tokens=False)[
        "input_ids"
    ]
    return sum(len(e) - len(o) for e, o in zip(lengths[: len(edited)], lengths[len(edited) :])) / len(edited)


def _gold_prefers_edited(env: str, edited: list[dict]) -> float | None:
    """Share of edit pairs whose edit raised the gold reward (ties count half): how right "edited wins" is."""
    from fgrlhf.envs import load_env

    if not edited:
        return None
    gold = load_env(env).gold_reward
    prompts = [r["prompt"] for r in edited]
    after, before = gold(prompts, [r["edited"] for r in edited]), gold(prompts, [r["original"] for r in edited])
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(after, before)) / len(edited)


def train_rm(
    prepared: Prepared, workdir: Path, name: str, kind: str, data: Path, seed: int, overrides: tuple[str, ...]
) -> dict:
    """Train (or reuse) reward model ``NAME-sSEED``; returns its timing record (wall seconds include the
    Ray actors' and DeepSpeed's start-up, not Ray's)."""
    from fgrlhf.config import load_config
    from fgrlhf.reward.train import RMTrainConfig

    out = workdir / "rm" / f"{name}-s{seed}"
    timing = out / "timing.json"

    setup = ENV_SETUP[prepared.env]

    def build() -> None:
        began = time.perf_counter()
        prepared.pipeline.run_command(
            "train-rm",
            "--config",
            setup.rm_config,
            "--data",
            data,
            "--kind",
            kind,
            "--model",
            prepared.backbone,
            "--out",
            out,
            "--resume",
            f"seed={seed}",
            *setup.rm_overrides,
            *overrides,
        )
        seconds = time.perf_counter() - began
        steps = read_jsonl(out / "metrics.jsonl")
        # examples_per_s times only the optimizer steps: their sum is the training loop without start-up.
        batch = load_config(RMTrainConfig, out / "config.yaml", []).deepspeed.global_batch_size
        loop = sum(batch / r["examples_per_s"] for r in steps)
        write_json(
            timing,
            {
                "name": name,
                "kind": kind,
                "seed": seed,
                "data": str(data),
                "steps": len(steps),
                "wall_seconds": round(seconds, 2),
                "loop_seconds": round(loop, 2),
                "final_dir": str(out / "final"),
            },
        )

    key = [kind, seed, portable(prepared.backbone, workdir), [*setup.rm_overrides, *overrides]]
    prepared.pipeline.stage(timing, build, key=key, inputs=(data, setup.rm_config))
    # final_dir from this work dir, not the cached record: a moved or copied work dir uses its own RMs.
    return {**json.loads(timing.read_text(encoding="utf-8")), "final_dir": str(out / "final")}


def eval_rm(prepared: Prepared, rm_final: str | Path, data: Path, report: Path) -> dict:
    """Pairwise accuracy with a bootstrap 95% CI (``fgrlhf eval-rm``), cached as ``report``."""
    report.parent.mkdir(parents=True, exist_ok=True)
    argv = ["eval-rm", "--rm", rm_final, "--data", data, "--report", report]
    prepared.pipeline.command(None, report, argv, inputs=(data, Path(rm_final) / "config.json"))
    return json.loads(report.read_text(encoding="utf-8"))


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display in CI or on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def finish(
    args: argparse.Namespace,
    result: dict,
    name: str,
    plot: Callable[[dict, Path], None],
    markdown: Callable[[dict], str],
) -> None:
    """Plot (``--plot`` or WORKDIR/NAME.png), print the Markdown table, write ``--json``."""
    args.plot = args.plot or Path(result["workdir"]) / f"{name}.png"
    result["plot"] = str(args.plot)
    publish(args, result, plot, markdown)


def publish(
    args: argparse.Namespace, result: dict, plot: Callable[[dict, Path], None], markdown: Callable[[dict], str]
) -> None:
    """Print the Markdown table, write ``--json`` and, when ``--plot`` is given, the figure."""
    print(markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
    if args.plot:
        plot(result, args.plot)


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"

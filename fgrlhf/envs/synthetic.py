"""``synthetic``: a tiny stochastic grammar task with a known gold reward (CI-sized).

Prompts name a topic and two of its aspects ("Write about the river, the fish and the bridge."). A
response is 1-7 grammar sentences ("The quiet river rests slowly under the old bridge.") whose nouns come
from the prompt's topic, or, with probability ``off_topic``, from another topic. The generator injects
faults at known rates:

- local (a minimal edit can fix them): filler phrases ("basically", "you know", "kind of", "honestly"),
  a sentence repeated right after itself, a stuttered word ("the the");
- global (no local edit fixes them): off-topic sentences, prompt aspects never mentioned, too few or too
  many sentences.

Gold reward: :mod:`fgrlhf.envs.gold` with the filler phrases as disfavoured phrases, a 15-45 word target
length and repeated word 5-grams. ``sft_synthetic_policy`` trains the ``tiny`` Llama on generator
samples (faults included) so PPO starts from a policy that speaks the grammar and makes its mistakes.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

from fgrlhf.envs import in_eval_split
from fgrlhf.envs.gold import GoldSpec, content_stems, extract_instruction, gold_scores

NAME = "synthetic"
TOPICS = {
    "river": ("fish", "bridge", "boat", "stone", "bank"),
    "mountain": ("peak", "rock", "trail", "cloud", "goat"),
    "forest": ("tree", "owl", "path", "moss", "deer"),
    "city": ("street", "tower", "market", "train", "lamp"),
    "ocean": ("wave", "ship", "shell", "whale", "sand"),
    "garden": ("flower", "bee", "seed", "rose", "bench"),
    "winter": ("snow", "fire", "sled", "coat", "frost"),
    "music": ("song", "drum", "piano", "singer", "band"),
}
ADJECTIVES = ("quiet", "old", "bright", "small", "cold", "green", "tall", "gentle", "dark", "golden")
VERBS = ("rests", "moves", "shines", "waits", "sleeps", "stands", "drifts", "glows")
ADVERBS = ("slowly", "softly", "quietly", "calmly", "proudly")
PREPOSITIONS = ("near", "under", "beside", "above", "behind")
FILLERS = ("basically", "you know", "kind of", "honestly")

# 5-grams: with this tiny vocabulary distinct sentences share 3- and 4-grams by chance.
GOLD = GoldSpec(disfavoured=FILLERS, length_lo=15, length_hi=45, ngram=5)


def gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Gold hook ``fgrlhf.envs.synthetic:gold_reward`` (raw or chat/Alpaca-formatted prompts)."""
    return gold_scores(GOLD, prompts, responses)


@dataclass(frozen=True)
class FaultRates:
    """Per-sentence probabilities of each fault, and the range of the sentence count."""

    off_topic: float = 0.2
    filler: float = 0.25
    repeat: float = 0.15
    stutter: float = 0.1
    min_sentences: int = 1
    max_sentences: int = 7


CLEAN = FaultRates(off_topic=0.0, filler=0.0, repeat=0.0, stutter=0.0, min_sentences=3, max_sentences=4)


def prompt_text(topic: str, aspects: tuple[str, str]) -> str:
    return f"Write about the {topic}, the {aspects[0]} and the {aspects[1]}."


def all_prompts() -> list[str]:
    """Every distinct prompt of the grammar (8 topics x 10 aspect pairs)."""
    return [prompt_text(t, pair) for t, aspects in TOPICS.items() for pair in itertools.combinations(aspects, 2)]


def split_prompts(eval_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    prompts = all_prompts()
    return ([p for p in prompts if not in_eval_split(p, eval_fraction)],
            [p for p in prompts if in_eval_split(p, eval_fraction)])


def parse_prompt(prompt: str) -> tuple[str, tuple[str, ...]]:
    """(topic, aspects) of a raw or formatted synthetic prompt."""
    stems = content_stems(extract_instruction(prompt))
    for topic, aspects in TOPICS.items():
        if topic in stems:
            return topic, tuple(a for a in aspects if a in stems)
    raise ValueError(f"not a synthetic-env prompt (names no topic of {sorted(TOPICS)}): {prompt!r}")


def _sentence(rng: random.Random, nouns: tuple[str, ...], rates: FaultRates) -> str:
    subject, obj = rng.choice(nouns), rng.choice(nouns)
    adverb = rng.choice(ADVERBS)
    parts = ["The", rng.choice(ADJECTIVES), subject, rng.choice(VERBS), adverb, rng.choice(PREPOSITIONS),
             "the", obj]
    end = "."
    if rng.random() < rates.filler:
        filler = rng.choice(FILLERS)
        if filler == "you know":
            end = ", you know."
        elif filler == "kind of":
            parts.insert(4, filler)
        else:
            parts.insert(3, filler)
    if rng.random() < rates.stutter:
        at = rng.randrange(1, len(parts))
        parts.insert(at, parts[at])
    return " ".join(parts) + end


def sample_response(prompt: str, rng: random.Random, rates: FaultRates = FaultRates()) -> str:
    topic, aspects = parse_prompt(prompt)
    # Aspects are weighted up so a typical response mentions them; the topic word itself always can appear.
    on_topic = (topic,) + aspects * 2 + TOPICS[topic]
    others = [t for t in TOPICS if t != topic]
    out = []
    for _ in range(rng.randint(rates.min_sentences, rates.max_sentences)):
        if rng.random() < rates.off_topic:
            other = rng.choice(others)
            sentence = _sentence(rng, (other,) + TOPICS[other], rates)
        else:
            sentence = _sentence(rng, on_topic, rates)
        out.append(sentence)
        if rng.random() < rates.repeat:
            out.append(sentence)
    return " ".join(out)


def sample_responses(prompts: list[str], per_prompt: int, seed: int,
                     rates: FaultRates = FaultRates()) -> list[list[str]]:
    rng = random.Random(seed)
    return [[sample_response(p, rng, rates) for _ in range(per_prompt)] for p in prompts]


def eval_records(prompts: list[str], seed: int) -> list[dict]:
    """Eval prompts with a reference output: a sample of the default (faulty) generator, like davinci-003
    is an imperfect reference in AlpacaEval, seeded per prompt so it does not depend on the split size."""
    records = []
    for prompt in prompts:
        rng = random.Random(f"{seed}:{prompt}")
        records.append({"prompt": prompt, "reference": sample_response(prompt, rng),
                        "reference_generator": "synthetic-grammar"})
    return records


def sft_synthetic_policy(out_dir: str | Path, steps: int = 200, seed: int = 0, batch_size: int = 8,
                         lr: float = 3e-3, log_every: int = 50) -> dict:
    """Train the ``tiny`` Llama on generator samples (chat format, loss on response tokens only) and save
    an HF checkpoint with tokenizer to ``out_dir``; usable as ``--model out_dir`` / ``policy.name``.

    Returns ``{"heldout_loss_before", "heldout_loss_after", "train_losses"}``; the held-out batch is fixed
    so before/after compare the same examples.
    """
    import torch

    from fgrlhf.config import ModelConfig
    from fgrlhf.models import load_causal_lm, load_tokenizer
    from fgrlhf.tokenization import encode_example, format_prompt

    tokenizer = load_tokenizer("tiny")
    model = load_causal_lm(ModelConfig(name="tiny", seed=seed), tokenizer)
    train_prompts, _ = split_prompts()
    rng = random.Random(seed)

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(size):
            prompt = rng.choice(train_prompts)
            ex = encode_example(tokenizer, format_prompt(tokenizer, prompt), sample_response(prompt, rng),
                                max_prompt_tokens=64, max_response_tokens=160)
            rows.append(ex)
        width = max(len(ex.input_ids) for ex in rows)
        ids = torch.full((size, width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((size, width), -100, dtype=torch.long)
        mask = torch.zeros((size, width), dtype=torch.long)
        for i, ex in enumerate(rows):
            n = len(ex.input_ids)
            ids[i, :n] = torch.tensor(ex.input_ids)
            mask[i, :n] = 1
            labels[i, len(ex.prompt_ids):n] = torch.tensor(ex.response_ids)
        return ids, mask, labels

    def loss_of(ids, mask, labels) -> torch.Tensor:
        # The 49k-word LM head dominates the cost: apply it only where a response token is predicted.
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        keep = targets != -100
        return torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]), targets[keep])

    torch.manual_seed(seed)
    heldout = batch(batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.eval()
    with torch.no_grad():
        before = loss_of(*heldout).item()
    model.train()
    losses = []
    for step in range(steps):
        loss = loss_of(*batch(batch_size))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(json.dumps({"sft_step": step + 1, "loss": round(losses[-1], 4)}), flush=True)
    model.eval()
    with torch.no_grad():
        after = loss_of(*heldout).item()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    result = {"heldout_loss_before": before, "heldout_loss_after": after, "train_losses": losses}
    (out_dir / "sft_metrics.json").write_text(json.dumps(result) + "\n", encoding="utf-8")
    return result

"""``synthetic``: a tiny stochastic grammar task with a known gold reward (CI-sized).

Length-confounded: every injected fault is an insertion and the gold counts faults, so its data favour
shorter answers; ``balanced`` (:mod:`fgrlhf.envs.balanced`) is the same grammar without that confound.

Prompts name a topic and two of its aspects ("Write about the river, the fish and the bridge."). A
response is 1-7 grammar sentences ("The quiet river rests slowly under the old bridge.") whose nouns come
from the prompt's topic, or, with probability ``off_topic``, from another topic. The generator injects
faults at known rates:

- local (a minimal edit can fix them): filler phrases ("basically", "you know", "kind of", "honestly"),
  a sentence repeated right after itself, a stuttered word ("the the");
- global (a fix needs the instruction): off-topic sentences, prompt aspects never mentioned, too few or
  too many words. The fixer hooks below (``fix_*``) let the rule editor fix them minimally as well
  (configs/edit-rules-synthetic-global.yaml).

Gold reward: :mod:`fgrlhf.envs.gold` with the filler phrases as disfavoured phrases, a 15-45 word target
length whose credit is gated by relevance, and repeated word 5-grams. ``sft_synthetic_policy`` trains the
``tiny`` Llama on generator samples (faults included) so PPO starts from a policy that speaks the grammar
and makes its mistakes.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fgrlhf.envs import in_eval_split
from fgrlhf.envs.gold import GoldSpec, content_stems, extract_instruction, gold_scores, sentence_spans, stem, words

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

# 5-grams: with this tiny vocabulary distinct sentences share 3- and 4-grams by chance. Length credit is
# gated by relevance: ungated, random-token text earned ~0.4 from length alone, more than the references.
GOLD = GoldSpec(disfavoured=FILLERS, length_lo=15, length_hi=45, ngram=5, length_needs_relevance=True)


def gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Gold hook ``fgrlhf.envs.synthetic:gold_reward`` (raw or chat/Alpaca-formatted prompts)."""
    return gold_scores(GOLD, prompts, responses)


# A generator: (prompt, rng) -> response (``sample_response`` here, the balanced env's in fgrlhf.envs.balanced).
Sampler = Callable[[str, random.Random], str]


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
    return (
        [p for p in prompts if not in_eval_split(p, eval_fraction)],
        [p for p in prompts if in_eval_split(p, eval_fraction)],
    )


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
    parts = ["The", rng.choice(ADJECTIVES), subject, rng.choice(VERBS), adverb, rng.choice(PREPOSITIONS), "the", obj]
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


def sample_responses(
    prompts: list[str], per_prompt: int, seed: int, rates: FaultRates = FaultRates(), sample: Sampler | None = None
) -> list[list[str]]:
    """``per_prompt`` responses to each prompt from one seeded stream; ``sample``: another env's generator."""
    rng = random.Random(seed)
    draw = sample or (lambda prompt, r: sample_response(prompt, r, rates))
    return [[draw(p, rng) for _ in range(per_prompt)] for p in prompts]


def eval_records(prompts: list[str], seed: int, sample: Sampler | None = None, env: str = NAME) -> list[dict]:
    """Eval prompts with a reference output: a sample of the default (faulty) generator (``sample``, default
    this env's), like davinci-003 is an imperfect reference in AlpacaEval, seeded per prompt so it does not
    depend on the split size."""
    sample = sample or sample_response
    records = []
    for prompt in prompts:
        rng = random.Random(f"{seed}:{prompt}")
        records.append({"prompt": prompt, "reference": sample(prompt, rng), "reference_generator": f"{env}-grammar"})
    return records


# ---------------------------------------------------------------- the global-fault annotator
# Fixer hooks of the rule editor (fgrlhf.editing.editors.FixerRule, configs/edit-rules-synthetic-global.yaml):
# each returns one (start, end, replacement) span of ``text`` per global fault it sees; the editor decides
# (per-fault recall) which are fixed. They read the instruction, never the gold score, change as little as
# the fault allows and write only words the grammar produces. The choices among prompt nouns and grammar
# words are seeded by the text, so an edit is reproducible.
NOUNS = frozenset(itertools.chain(TOPICS, *TOPICS.values()))
_WORD_SPAN = re.compile(r"[A-Za-z]+")


def _prompt_nouns(instruction: str) -> tuple[str, ...]:
    topic, aspects = parse_prompt(instruction)
    return (topic, *aspects)


def _nouns_in(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int, str]]:
    """(start, end, stem) of every grammar noun in ``text[start:end]``, offsets into ``text``."""
    return [
        (m.start(), m.end(), stem(m.group().lower()))
        for m in _WORD_SPAN.finditer(text, start, end or len(text))
        if stem(m.group().lower()) in NOUNS
    ]


def _like(word: str, original: str) -> str:
    return word.capitalize() if original[:1].isupper() else word


def fix_off_topic_nouns(instruction: str, text: str) -> list[tuple[int, int, str]]:
    """A sentence whose nouns all belong to other topics gets the prompt's nouns instead (same length)."""
    nouns = _prompt_nouns(instruction)
    family = {nouns[0], *TOPICS[nouns[0]]}
    fixes = []
    for index, (start, end) in enumerate(sentence_spans(text)):
        found = _nouns_in(text, start, end)
        if not found or any(noun in family for _, _, noun in found):
            continue
        rng = random.Random(f"{instruction}\0{index}\0{text[start:end]}")
        pieces, position = [], found[0][0]
        for a, b, _ in found:
            pieces += [text[position:a], _like(rng.choice(nouns), text[a:b])]
            position = b
        fixes.append((found[0][0], found[-1][1], "".join(pieces)))
    return fixes


def fix_missing_aspect(instruction: str, text: str) -> list[tuple[int, int, str]]:
    """Each prompt noun the response never mentions replaces one noun: preferably one the prompt does not
    name, else a mention of a prompt noun that is mentioned again elsewhere (so no other one goes missing)."""
    nouns = _prompt_nouns(instruction)
    mentioned = content_stems(text)
    found = _nouns_in(text)
    counts = {noun: sum(n == noun for _, _, n in found) for noun in nouns}
    rng = random.Random(f"{instruction}\0{text}")
    fixes, used = [], set()
    for missing in (n for n in nouns if n not in mentioned):
        spare = [f for f in found if f[2] not in nouns and f[0] not in used]
        spare = spare or [f for f in found if f[2] in nouns and counts[f[2]] > 1 and f[0] not in used]
        if not spare:
            continue
        start, end, noun = rng.choice(spare)
        if noun in counts:
            counts[noun] -= 1
        used.add(start)
        fixes.append((start, end, _like(missing, text[start:end])))
    return fixes


def fix_too_short(instruction: str, text: str, min_words: int) -> list[tuple[int, int, str]]:
    """Fewer than ``min_words`` words: one grammar sentence about the prompt's nouns is appended."""
    if len(words(text)) >= min_words:
        return []
    nouns = _prompt_nouns(instruction)
    rng = random.Random(f"{instruction}\0{text}")
    sentence = (
        f"The {rng.choice(ADJECTIVES)} {rng.choice(nouns)} {rng.choice(VERBS)} {rng.choice(ADVERBS)} "
        f"{rng.choice(PREPOSITIONS)} the {rng.choice(nouns)}."
    )
    body = text.rstrip()
    return [(len(body), len(text), f" {sentence}" if body else sentence)]


def fix_too_long(instruction: str, text: str, max_words: int) -> list[tuple[int, int, str]]:
    """More than ``max_words`` words: the trailing sentences are dropped, as few as bring it to
    ``max_words`` (the first sentence always stays)."""
    spans = sentence_spans(text)
    if len(words(text)) <= max_words or len(spans) < 2:
        return []
    keep, total = 1, len(words(text[: spans[0][1]]))
    for start, end in spans[1:-1]:
        total += len(words(text[start:end]))
        if total > max_words:
            break
        keep += 1
    return [(spans[keep - 1][1], len(text), "")]


def sft_synthetic_policy(
    out_dir: str | Path,
    steps: int = 2000,
    seed: int = 0,
    batch_size: int = 8,
    lr: float = 3e-3,
    log_every: int = 50,
    sample: Sampler | None = None,
) -> dict:
    """Train the ``tiny`` Llama on generator samples (``sample``, default this env's) (chat format, loss on response tokens only) and save
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
            ex = encode_example(
                tokenizer,
                format_prompt(tokenizer, prompt),
                (sample or sample_response)(prompt, rng),
                max_prompt_tokens=64,
                max_response_tokens=160,
            )
            rows.append(ex)
        width = max(len(ex.input_ids) for ex in rows)
        ids = torch.full((size, width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((size, width), -100, dtype=torch.long)
        mask = torch.zeros((size, width), dtype=torch.long)
        for i, ex in enumerate(rows):
            n = len(ex.input_ids)
            ids[i, :n] = torch.tensor(ex.input_ids)
            mask[i, :n] = 1
            labels[i, len(ex.prompt_ids) : n] = torch.tensor(ex.response_ids)
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

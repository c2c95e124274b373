"""PPO building blocks on right-padded ``[B, T]`` response tensors (mask: 1 = real token, EOS included).

KL estimators, per-token reward shaping (sequence / token / fine_grained_sequence / oracle_sequence /
oracle_token, with the gold telescoped over prefixes for the last), the run's fixed task-reward scale, the
optional guards against reward hacking (adaptive KL coefficient, reward clipping, length and no-EOS
penalties), masked statistics,
GAE, a batch's whole advantage computation (:func:`compute_advantages`), the clipped policy and value
losses, and log-prob / entropy from logits. AlpacaFarm defaults: γ = λ = 1, ε = 0.2 for both clipped losses.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

KLEstimator = Literal["k1", "k2", "k3", "k1_nonneg"]
RewardMode = Literal["sequence", "token", "fine_grained_sequence", "oracle_sequence", "oracle_token"]
SEQUENCE_MODES = ("sequence", "fine_grained_sequence", "oracle_sequence")  # a scalar R at the last token
TOKEN_MODES = ("token", "oracle_token")  # a reward on every token


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator, clamp: float | None = None
) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from log-probs of tokens sampled from π.

    k1 = logπ − logπref (unbiased, can be negative); k2 = ½(logπ − logπref)²; k3 = e^d − 1 − d with
    d = logπref − logπ (unbiased and ≥ 0); k1_nonneg = max(0, logπ − logπref), AlpacaFarm's reward
    shaping (a token π finds likelier than π_ref is penalised, never rewarded). ``clamp`` bounds the
    estimate to [−clamp, clamp] so one off-distribution token cannot dominate the reward.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k1_nonneg":
        kl = log_ratio.clamp(min=0.0)
    elif estimator == "k2":
        kl = 0.5 * log_ratio.square()
    elif estimator == "k3":
        d = -log_ratio
        kl = torch.expm1(d) - d
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1', 'k2', 'k3' or 'k1_nonneg'")
    if clamp is not None:
        kl = kl.clamp(-clamp, clamp)
    return kl


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each right-padded row (mask.sum − 1), ``[B]`` long; −1 for empty rows."""
    return response_mask.sum(-1).long() - 1


def _reward_at_last_token(sequence_reward: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    # R lands ON the last real token (EOS), not one past it: the value of the final state then sees R.
    last = last_token_index(response_mask)
    one_hot = torch.nn.functional.one_hot(last.clamp(min=0), response_mask.size(-1)).to(sequence_reward.dtype)
    one_hot = one_hot * (last >= 0).unsqueeze(-1).to(sequence_reward.dtype)
    return one_hot * sequence_reward.unsqueeze(-1)


def compute_rewards(
    mode: RewardMode,
    kl: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    sequence_reward: torch.Tensor | None = None,
    token_rewards: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token PPO rewards ``[B, T]``, 0 outside the mask: :func:`task_rewards` − β·KL_t.

    - ``sequence``: r_t = −β·KL_t, plus the scalar R at the last real token (index mask.sum − 1).
    - ``fine_grained_sequence``: the same arithmetic; R comes from the RM trained on edited data.
    - ``oracle_sequence``: the same arithmetic; R is the env's gold reward of the response.
    - ``token``: r_t = R_t − β·KL_t (β = 0 gives the paper's literal [R_1, ..., R_n]).
    - ``oracle_token``: the same arithmetic; R_t is the gold telescoped over prefixes
      (:func:`telescoped_rewards`).
    """
    score = task_rewards(mode, response_mask, sequence_reward=sequence_reward, token_rewards=token_rewards)
    return (score - kl_coef * kl) * response_mask.to(kl.dtype)


def task_rewards(
    mode: RewardMode,
    response_mask: torch.Tensor,
    *,
    sequence_reward: torch.Tensor | None = None,
    token_rewards: torch.Tensor | None = None,
    prefix_scores: torch.Tensor | None = None,
    center_tokens: bool = False,
) -> torch.Tensor:
    """The task's part of the per-token rewards ``[B, T]`` (no KL), 0 outside the mask: a sequence mode's
    scalar R on the last real token; a token mode's R_t on every token, centred on the batch when
    ``center_tokens`` (``token`` only, :func:`center_token_rewards`); ``oracle_token`` from ``prefix_scores``
    ``[B, T + 1]`` (:func:`telescoped_rewards`, never centred: Σ r_t is the gold)."""
    if mode == "token" and token_rewards is not None and center_tokens:
        token_rewards = center_token_rewards(token_rewards, response_mask)
    elif mode == "oracle_token" and prefix_scores is not None:
        token_rewards = telescoped_rewards(prefix_scores, response_mask)
    if mode in SEQUENCE_MODES:
        if sequence_reward is None or token_rewards is not None:
            raise ValueError(f"reward mode {mode!r} needs sequence_reward [B] and no token_rewards")
        score = _reward_at_last_token(sequence_reward, response_mask)
    elif mode in TOKEN_MODES:
        if token_rewards is None or sequence_reward is not None:
            raise ValueError(f"reward mode {mode!r} needs token_rewards [B, T] and no sequence_reward")
        score = token_rewards
    else:
        raise ValueError(f"unknown reward mode {mode!r}; expected one of {SEQUENCE_MODES + TOKEN_MODES}")
    return score * response_mask.to(score.dtype)


def return_scale(task: torch.Tensor, response_mask: torch.Tensor, eps: float = 1e-6) -> float | None:
    """The std (unbiased) over responses of the task return Σ_t r_t of :func:`task_rewards` ``task``; None
    when it cannot serve as a scale (fewer than two responses, or every return equal to within ``eps``).

    Measured once, on the initial policy's rollouts, and passed to :func:`compute_advantages` as
    ``reward_scale`` for the whole run: the task reward then has std 1 at the start in every arm, so −β·KL_t
    weighs the same against it whatever the RM's units (logits, per-token scores, a gold in [0, 1]).
    """
    returns = (task * response_mask.to(task.dtype)).sum(-1)
    if returns.numel() < 2:
        return None
    std = float(returns.std())
    return std if std > eps else None


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target: float, horizon: int, n_samples: int) -> float:
    """The next step's β of the adaptive KL controller (arXiv:1909.08593 §2.2, with the horizon of its code and
    of OpenRLHF): e = clip(KL / target − 1, −0.2, 0.2), β ← β·(1 + e·n / horizon), with KL the batch's mean
    KL per response and n the responses it was measured on (AlpacaFarm's k_beta is n / horizon). β grows
    while KL is above target and shrinks below it."""
    if target <= 0 or horizon <= 0:
        raise ValueError(f"adaptive KL needs target > 0 and horizon > 0 (got {target}, {horizon})")
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_samples / horizon)


def length_penalty(lengths: torch.Tensor, coef: float, target: float) -> torch.Tensor:
    """``[B]`` coef·|L − L*| / L*: a penalty for moving off the length L* in either direction (shortening
    and padding are both ways to game a length-biased RM)."""
    if target <= 0:
        raise ValueError(f"length penalty target must be > 0 tokens (got {target})")
    return coef * (lengths.to(torch.float32) - target).abs() / target


def no_eos_penalty(ends_with_eos: torch.Tensor, coef: float) -> torch.Tensor:
    """``[B]`` coef for each response cut off by the token budget (no EOS), 0 for those that ended."""
    return coef * (~ends_with_eos.bool()).to(torch.float32)


def telescoped_rewards(prefix_scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards r_t = g(y≤t) − g(y<t) from a sequence score g of every prefix, 0 outside the mask.

    ``prefix_scores`` ``[B, T + 1]``: column 0 holds g of the empty response, column t the score of the
    first t tokens (columns past a row's length are ignored). Σ_t r_t = g(y) − g(empty): the sequence
    score itself wherever the empty response scores 0 (the envs' gold does, for any prompt with a content
    word), so a telescoped arm has the same return as its sequence arm with the credit spread over tokens.
    With γ = λ = 1 the advantage then differs from the sequence arm's only by −g(y<t), a function of the
    state: a baseline, which leaves the expected policy gradient unchanged; with λ < 1 the dense rewards
    also change which tokens GAE credits.
    """
    if prefix_scores.size(-1) != response_mask.size(-1) + 1:
        raise ValueError(
            f"prefix_scores {tuple(prefix_scores.shape)} must have one column more than the "
            f"response mask {tuple(response_mask.shape)} (the empty prefix)"
        )
    return (prefix_scores[:, 1:] - prefix_scores[:, :-1]) * response_mask.to(prefix_scores.dtype)


def center_token_rewards(token_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """r_t − mean of r over every real token of the batch, 0 outside the mask.

    Eq. 3 trains R = mean r_t through differences only, so adding a constant c to every r_t changes no
    loss; as per-token PPO rewards that c adds c·T to a response's return, a length incentive set by an
    arbitrary constant. Centering on the batch removes it and keeps the RM's ranking of tokens.
    """
    return (token_rewards - masked_mean(token_rewards, response_mask)) * response_mask.to(token_rewards.dtype)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where mask is 1 (over all elements, or along ``dim``)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over masked elements; ``unbiased`` applies Bessel's n/(n−1) (skipped when n ≤ 1)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean).square(), mask)
    if unbiased:
        n = mask.to(values.dtype).sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std over masked elements, 0 outside the mask (advantages)."""
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + 1e-8)
    return whitened * mask.to(values.dtype)


def masked_rescale(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x / std over masked elements, 0 outside the mask: normalises rewards by one positive scalar.

    A pure rescaling keeps every return's sign and the order of returns, so equal rewards at different
    lengths stay equal. Shifting instead ((x − μ)/σ + μ, AlpacaFarm's ``shift_mean=False``) adds the
    constant μ − μ/σ to every real token; over a ragged mask that is a per-token length penalty or bonus
    (AlpacaFarm's padded tensors spread it over every position alike, which a ragged mask cannot).
    """
    return values * torch.rsqrt(masked_var(values, mask) + 1e-8) * mask.to(values.dtype)


class Advantages(NamedTuple):
    """What :func:`compute_advantages` returns, every tensor ``[B, T]`` and 0 outside the mask."""

    kl: torch.Tensor  # the per-token KL estimate the rewards were shaped with
    rewards: torch.Tensor  # per-token PPO rewards after shaping and (optional) rescaling
    advantages: torch.Tensor  # GAE, whitened when asked
    returns: torch.Tensor  # the critic's targets, advantages (before whitening) + values


@torch.no_grad()
def compute_advantages(
    mode: RewardMode,
    response_mask: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    values: torch.Tensor,
    *,
    kl_coef: float,
    kl_estimator: KLEstimator,
    kl_clamp: float | None = None,
    sequence_reward: torch.Tensor | None = None,
    token_rewards: torch.Tensor | None = None,
    prefix_scores: torch.Tensor | None = None,
    center_tokens: bool = True,
    reward_scale: float | None = None,
    reward_clip: float | None = None,
    penalty: torch.Tensor | None = None,
    whiten_rewards: bool = True,
    whiten_advantages: bool = True,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> Advantages:
    """One PPO batch from its scores to advantages and returns (the driver's whole advantage phase).

    Inputs ``[B, T]`` unless noted: ``logprobs`` of the sampled tokens under the policy that sampled them,
    ``ref_logprobs`` under the reference, ``values`` the critic's V(s_t). The reward per mode:
    ``sequence_reward`` ``[B]`` (sequence / fine_grained_sequence / oracle_sequence), ``token_rewards`` (token;
    centred on the batch when ``center_tokens``, see :func:`center_token_rewards`) or ``prefix_scores``
    ``[B, T + 1]`` (oracle_token, telescoped by :func:`telescoped_rewards` and never centred: Σ r_t is the
    gold). In this order (docs/ppo_reward_scaling.md): the task rewards divided by ``reward_scale`` (the
    run's fixed :func:`return_scale`, None = raw units), clipped to ±``reward_clip`` (R, or each R_t), minus
    ``penalty`` ``[B]`` at the last real token (:func:`length_penalty`, :func:`no_eos_penalty`); then −β·KL_t;
    then rescaling by the rewards' std (:func:`masked_rescale`, length-neutral), GAE, and whitening of the
    advantages.
    """
    mask = response_mask.to(logprobs.dtype)
    kl = kl_penalty(logprobs, ref_logprobs, kl_estimator, clamp=kl_clamp) * mask
    score = task_rewards(
        mode,
        mask,
        sequence_reward=sequence_reward,
        token_rewards=token_rewards,
        prefix_scores=prefix_scores,
        center_tokens=center_tokens,
    )
    if reward_scale is not None:
        if not reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0 (got {reward_scale})")
        score = score / reward_scale
    if reward_clip is not None:
        score = score.clamp(-reward_clip, reward_clip)  # a sequence mode's zeros before EOS stay 0
    if penalty is not None:
        score = score - _reward_at_last_token(penalty.to(score.dtype), mask)
    rewards = (score - kl_coef * kl) * mask
    if whiten_rewards:
        rewards = masked_rescale(rewards, mask)
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    if whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return Advantages(kl, rewards, advantages * mask, returns * mask)


@torch.no_grad()
def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns ``(advantages, returns)``, both 0 outside the mask.

    δ_t = r_t + γV_{t+1} − V_t, A_t = δ_t + γλA_{t+1}, with V and A past the last real token taken as 0
    (the episode ends at EOS). returns = advantages + values are the critic's targets. No gradient.
    """
    mask = mask.to(values.dtype)
    horizon = rewards.size(-1)
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(horizon)):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < horizon else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate −min(ρA, clip(ρ, 1±ε)A), token-level masked mean.

    Stats (detached): ``clip_fraction`` = share of tokens where the clipped term is the active one;
    ``approx_kl`` = k3 estimate of KL(π_old ‖ π) from ρ = π/π_old: (ρ − 1) − log ρ.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).to(logprobs.dtype), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ½·max((V_clip − R)², (V − R)²), V_clip = V_old + clip(V − V_old, ±ε).

    Stat ``vf_clip_fraction``: share of tokens where the clipped error is the larger (active) one.
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    error = (values - returns).square()
    clipped_error = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(error, clipped_error), mask)
    with torch.no_grad():
        stats = {"vf_clip_fraction": masked_mean((clipped_error > error).to(values.dtype), mask)}
    return loss, stats


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label], ``[B, T]``.

    One batch row at a time, so only a ``[T, V]`` log-softmax is alive beyond the logits themselves;
    half-precision logits are upcast to float32 (log-prob ratios in bf16 are too coarse for PPO).
    """
    rows = []
    for row_logits, row_labels in zip(logits, labels):
        if row_logits.dtype in (torch.float16, torch.bfloat16):
            row_logits = row_logits.float()
        log_probs = torch.log_softmax(row_logits, dim=-1)
        rows.append(log_probs.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position, ``[B, T]``: logsumexp(z) − Σ_v p_v z_v."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def entropy_bonus(logits: torch.Tensor, mask: torch.Tensor, coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy loss's entropy term ``−coef · H̄`` and the masked mean entropy H̄ (to report).

    With ``coef == 0`` H̄ is computed without autograd: a zero-weighted term would still back-propagate through
    softmax and logsumexp over the whole vocabulary at every response position, for a zero gradient.
    """
    with torch.set_grad_enabled(torch.is_grad_enabled() and coef > 0):
        entropy = masked_mean(entropy_from_logits(logits), mask)
    return -coef * entropy, entropy

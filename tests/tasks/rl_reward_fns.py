"""Reward functions the RL tests name in ``task.reward`` (``tests.tasks.rl_reward_fns:NAME``)."""

from __future__ import annotations


def length(prompts: list[str], responses: list[str]) -> list[float]:
    """Longer answers score more (up to 40 characters): distinct scores for distinct responses."""
    return [min(len(r), 40) / 40 for r in responses]


def nan_on_third(prompts: list[str], responses: list[str]) -> list[float]:
    return [float("nan") if i == 2 else 0.0 for i in range(len(responses))]


def raises_on_second(prompts: list[str], responses: list[str]) -> list[float]:
    """Fails on any batch holding the second response it ever saw (so the failing row can be named)."""
    if not hasattr(raises_on_second, "bad"):
        raises_on_second.bad = responses[1] if len(responses) > 1 else None
    if raises_on_second.bad in responses:
        raise ValueError("cannot score this one")
    return [0.0] * len(responses)


def too_few(prompts: list[str], responses: list[str]) -> list[float]:
    return [0.0]

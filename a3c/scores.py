"""Atari scores as the literature compares them: human-normalised scores, the Atari-5 and Atari-3
estimates of the median human-normalised score over the 57 games, and published agents' scores.

Reads nothing and imports nothing heavy: the benchmark runner and `a3c plot` both use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# Random and human scores of the 57 games, as DQN Zoo's atari_data.py has them (Mnih et al. 2015 and
# Badia et al. 2020, "Agent57", for the games the former lacks): the denominators of the human-
# normalised score. Keys: the game's name in lower case, letters only (see game_key).
REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7), "amidar": (5.8, 1719.5), "assault": (222.4, 742.0),
    "asterix": (210.0, 8503.3), "asteroids": (719.1, 47388.7), "atlantis": (12850.0, 29028.1),
    "bankheist": (14.2, 753.1), "battlezone": (2360.0, 37187.5), "beamrider": (363.9, 16926.5),
    "berzerk": (123.7, 2630.4), "bowling": (23.1, 160.7), "boxing": (0.1, 12.1),
    "breakout": (1.7, 30.5), "centipede": (2090.9, 12017.0), "choppercommand": (811.0, 7387.8),
    "crazyclimber": (10780.5, 35829.4), "defender": (2874.5, 18688.9), "demonattack": (152.1, 1971.0),
    "doubledunk": (-18.6, -16.4), "enduro": (0.0, 860.5), "fishingderby": (-91.7, -38.7),
    "freeway": (0.0, 29.6), "frostbite": (65.2, 4334.7), "gopher": (257.6, 2412.5),
    "gravitar": (173.0, 3351.4), "hero": (1027.0, 30826.4), "icehockey": (-11.2, 0.9),
    "jamesbond": (29.0, 302.8), "kangaroo": (52.0, 3035.0), "krull": (1598.0, 2665.5),
    "kungfumaster": (258.5, 22736.3), "montezumarevenge": (0.0, 4753.3), "mspacman": (307.3, 6951.6),
    "namethisgame": (2292.3, 8049.0), "phoenix": (761.4, 7242.6), "pitfall": (-229.4, 6463.7),
    "pong": (-20.7, 14.6), "privateeye": (24.9, 69571.3), "qbert": (163.9, 13455.0),
    "riverraid": (1338.5, 17118.0), "roadrunner": (11.5, 7845.0), "robotank": (2.2, 11.9),
    "seaquest": (68.4, 42054.7), "skiing": (-17098.1, -4336.9), "solaris": (1236.3, 12326.7),
    "spaceinvaders": (148.0, 1668.7), "stargunner": (664.0, 10250.0), "surround": (-10.0, 6.5),
    "tennis": (-23.8, -8.3), "timepilot": (3568.0, 5229.2), "tutankham": (11.4, 167.6),
    "upndown": (533.4, 11693.2), "venture": (0.0, 1187.5), "videopinball": (16256.9, 17667.9),
    "wizardofwor": (563.5, 4756.5), "yarsrevenge": (3092.9, 54576.9), "zaxxon": (32.5, 9173.3),
}


@dataclass(frozen=True)
class Subset:
    """A few games whose log human-normalised scores predict the median over the 57 by a linear
    regression without intercept: estimate = 10 ** sum(w * log10(1 + max(score, 0))) - 1."""

    name: str
    games: tuple[str, ...]  # ALE names, as in "ALE/BattleZone-v5"
    weights: tuple[float, ...]
    relative_error: float  # the paper's cross-validated error of the estimate, in percent


# Aitchison, Sweetser and Hutter, "Atari-5: Distilling the Arcade Learning Environment down to Five
# Games" (ICML 2023; code: github.com/maitchison/Atari-5): the fitted weights of its two subsets.
SUBSETS: dict[str, Subset] = {
    "atari5": Subset("Atari-5", ("BattleZone", "DoubleDunk", "NameThisGame", "Phoenix", "Qbert"),
                     (0.3819751237831753, 0.0679099488887574, 0.310804148620847, 0.12412619402774641,
                      0.08048518286466755), 10.4),
    "atari3": Subset("Atari-3", ("BattleZone", "NameThisGame", "Phoenix"),
                     (0.3705645071598444, 0.513268255229986, 0.10151691314166367), 13.7),
}


@dataclass(frozen=True)
class PublishedAgent:
    """An agent's published per-game scores, and how they were measured."""

    label: str
    frames: float | None  # the training budget in frames, where it is one
    measure: str
    scores: dict[str, float]  # game_key -> score


# Published agents, for the games that this project's benchmarks and plots use. The A3C paper
# (Mnih et al. 2016, table S3) evaluated from human starts after four days of training; the PPO
# paper (Schulman et al. 2017, table 6) reports the mean of the last 100 training episodes after
# 40 M frames, on the 49 games of DQN, which leave out Phoenix.
PUBLISHED_AGENTS: tuple[PublishedAgent, ...] = (
    PublishedAgent("A3C FF, 4 days (Mnih et al. 2016, table S3)", None, "evaluation from human starts",
                   {"battlezone": 12950.0, "doubledunk": -0.1, "namethisgame": 10476.1, "phoenix": 52894.1,
                    "qbert": 15148.8, "kungfumaster": 28819.0, "pong": 5.6, "breakout": 681.9}),
    PublishedAgent("A3C LSTM, 4 days (Mnih et al. 2016, table S3)", None, "evaluation from human starts",
                   {"battlezone": 20760.0, "doubledunk": 0.1, "namethisgame": 12093.7, "phoenix": 74786.7,
                    "qbert": 21307.5, "kungfumaster": 40835.0, "pong": 10.7, "breakout": 766.8}),
    PublishedAgent("A2C, 40 M frames (Schulman et al. 2017, table 6)", 40e6, "training, last 100 episodes",
                   {"battlezone": 3080.0, "doubledunk": -16.2, "namethisgame": 5961.2, "qbert": 10065.7,
                    "kungfumaster": 24900.3, "pong": 19.7, "breakout": 303.0}),
    PublishedAgent("ACER, 40 M frames (Schulman et al. 2017, table 6)", 40e6, "training, last 100 episodes",
                   {"battlezone": 8983.3, "doubledunk": -13.2, "namethisgame": 8488.0, "qbert": 15316.6,
                    "kungfumaster": 27599.3, "pong": 20.7, "breakout": 456.4}),
    PublishedAgent("PPO, 40 M frames (Schulman et al. 2017, table 6)", 40e6, "training, last 100 episodes",
                   {"pong": 20.7, "breakout": 274.8}),
    # The PPO paper's own code (openai/baselines ppo2) on all 57 games, 10 M steps of 4 frames each, as
    # rerun by Huang et al. (2022) and tabulated in CleanRL's documentation (docs.cleanrl.dev, "PPO",
    # ppo_atari_envpool_xla_jax, its baselines-ppo2-cnn column): the one PPO at 40 M frames with Phoenix.
    PublishedAgent("PPO (baselines ppo2), 40 M frames (Huang et al. 2022, CleanRL docs)", 40e6,
                   "training, the latest episodes at the end, mean over seeds",
                   {"battlezone": 19980.0, "doubledunk": -12.96, "namethisgame": 6815.63, "phoenix": 9517.73,
                    "qbert": 15228.25, "kungfumaster": 30451.67, "pong": 20.45, "breakout": 405.73}),
)


def game_key(game: str) -> str:
    """"ALE/NameThisGame-v5", "NameThisGame" or "name_this_game" -> "namethisgame"."""
    name = game.split("/")[-1].split("-v")[0]
    return "".join(c for c in name.lower() if c.isalpha())


def human_normalized(game: str, score: float) -> float:
    """The score as a percentage of the way from random play (0) to the human tester (100)."""
    key = game_key(game)
    if key not in REFERENCE_SCORES:
        raise KeyError(f"no random and human reference scores for {game}")
    random, human = REFERENCE_SCORES[key]
    return 100.0 * (score - random) / (human - random)


def subset_estimate(subset: Subset, normalized: Mapping[str, float]) -> float | None:
    """The subset's estimate of the median human-normalised score over the 57 games, from the human-
    normalised scores of its games (keyed by game_key); None if one of them is missing."""
    scores = {game_key(game): value for game, value in normalized.items()}
    if any(game_key(game) not in scores for game in subset.games):
        return None
    total = sum(weight * math.log10(1.0 + max(scores[game_key(game)], 0.0))
                for game, weight in zip(subset.games, subset.weights, strict=True))
    return 10.0 ** total - 1.0


def agent_estimate(agent: PublishedAgent, subset: Subset) -> float | None:
    """A published agent's estimate, by the same code as ours; None if it lacks a game of the subset."""
    return subset_estimate(subset, {game: human_normalized(game, score) for game, score in agent.scores.items()})

"""Human-normalised scores, the Atari-5 and Atari-3 estimates, and the benchmark suite runner."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from a3c.scores import (
    PUBLISHED_AGENTS,
    REFERENCE_SCORES,
    SUBSETS,
    PublishedAgent,
    agent_estimate,
    game_key,
    human_normalized,
    subset_estimate,
)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"


def test_the_57_games_and_their_reference_scores():
    assert len(REFERENCE_SCORES) == 57
    assert all(human > random for random, human in REFERENCE_SCORES.values())
    assert REFERENCE_SCORES["pong"] == (-20.7, 14.6) and REFERENCE_SCORES["battlezone"] == (2360.0, 37187.5)
    for subset in SUBSETS.values():
        assert all(game_key(game) in REFERENCE_SCORES for game in subset.games)


def test_a_score_is_normalised_from_random_play_to_the_human_tester():
    assert game_key("ALE/NameThisGame-v5") == game_key("NameThisGame") == game_key("name_this_game") == "namethisgame"
    assert human_normalized("ALE/Pong-v5", -20.7) == 0.0
    assert human_normalized("Pong", 14.6) == pytest.approx(100.0)
    assert human_normalized("DoubleDunk", -17.5) == pytest.approx(50.0)  # halfway from -18.6 to -16.4
    assert human_normalized("ALE/Breakout-v5", 303.0) == pytest.approx(100 * (303.0 - 1.7) / (30.5 - 1.7))
    with pytest.raises(KeyError, match="CartPole"):
        human_normalized("CartPole-v1", 500.0)


def test_the_estimate_is_the_papers_log_linear_regression_without_intercept():
    atari5 = SUBSETS["atari5"]
    assert atari5.games == ("BattleZone", "DoubleDunk", "NameThisGame", "Phoenix", "Qbert")
    # Every game at random play (or below it: clipped at zero) estimates a median of zero.
    assert subset_estimate(atari5, dict.fromkeys(atari5.games, 0.0)) == 0.0
    assert subset_estimate(atari5, dict.fromkeys(atari5.games, -40.0)) == 0.0
    # Every game at the human tester's level: 101 to the power of the weights' sum, less one.
    at_human = subset_estimate(atari5, {f"ALE/{game}-v5": 100.0 for game in atari5.games})
    assert at_human == pytest.approx(101 ** sum(atari5.weights) - 1)
    # One game alone, the others at zero: 10 ** (w log10(1 + x)) - 1.
    scores = {**dict.fromkeys(atari5.games, 0.0), "Phoenix": 999.0}
    assert subset_estimate(atari5, scores) == pytest.approx(1000 ** 0.12412619402774641 - 1)
    assert subset_estimate(atari5, {"BattleZone": 100.0}) is None  # a game missing: no estimate
    atari3 = SUBSETS["atari3"]
    mixed = {"BattleZone": 50.0, "NameThisGame": 120.0, "Phoenix": 300.0}
    expected = 10 ** (0.3705645071598444 * math.log10(51) + 0.513268255229986 * math.log10(121)
                      + 0.10151691314166367 * math.log10(301)) - 1
    assert subset_estimate(atari3, mixed) == pytest.approx(expected)


def _estimate_by_hand(agent: PublishedAgent) -> float | None:
    return subset_estimate(SUBSETS["atari5"], {game: human_normalized(game, agent.scores[game_key(game)])
                                               for game in SUBSETS["atari5"].games})


def test_published_agents_are_estimated_by_the_same_code():
    by_label = {agent.label.split(",")[0]: agent for agent in PUBLISHED_AGENTS}
    a3c_ff = by_label["A3C FF"]
    expected = _estimate_by_hand(a3c_ff)
    assert agent_estimate(a3c_ff, SUBSETS["atari5"]) == expected
    assert agent_estimate(by_label["A3C LSTM"], SUBSETS["atari5"]) > expected  # the paper's stronger agent
    # The PPO paper's table has DQN's 49 games, without Phoenix: no estimate from it.
    for label in ("A2C", "ACER", "PPO"):
        assert "phoenix" not in by_label[label].scores
        assert agent_estimate(by_label[label], SUBSETS["atari5"]) is None
    # The PPO paper's code rerun on all 57 games has them all: the PPO at 40 M frames to compare with.
    ppo2 = by_label["PPO (baselines ppo2)"]
    assert ppo2.frames == 40e6
    assert agent_estimate(ppo2, SUBSETS["atari5"]) == _estimate_by_hand(ppo2)


@pytest.mark.slow
def test_a_two_game_suite_runs_end_to_end_and_a_half_finished_one_resumes(tmp_path):
    bench = tmp_path / "bench"
    flags = ["--frames", "1000", "--dir", str(bench), "--episodes", "1", "--", "--workers", "1",
             "--envs-per-worker", "1", "--eval-episodes", "1", "--eval-interval", "600"]

    def suite(games: str) -> str:
        result = subprocess.run([sys.executable, str(SCRIPT), "--suite", games, *flags], capture_output=True,
                                text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    suite("pong")  # a suite stopped after its first game
    first = json.loads((bench / "Pong" / "benchmark.json").read_text())
    output = suite("Pong,ALE/Breakout-v5")  # the same directory, one game more
    assert "Pong: has its 1,000 frames already" in output  # skipped, and its scores not played again
    assert json.loads((bench / "Pong" / "benchmark.json").read_text()) == first
    assert "Breakout: training to 1,000 frames" in output
    summary = json.loads((bench / "benchmark.json").read_text())
    games = {game["env_id"]: game for game in summary["games"]}
    assert set(games) == {"ALE/Pong-v5", "ALE/Breakout-v5"}
    for game in games.values():
        assert game["checkpoint_frames"] >= 1000 and game["best_episodes"] == 1
        assert game["last_evaluation"] is not None and game["best_checkpoint"] is not None
    table = (bench / "benchmark.md").read_text()
    pong = games["ALE/Pong-v5"]["last_evaluation"]
    assert "| Pong | " in table and f"{pong:,.1f}; {human_normalized('Pong', pong):.1f}%" in table
    assert summary["estimates"]["atari5"]["best_checkpoint"] is None  # not the Atari-5 games
    assert (bench / "benchmark.png").read_bytes().startswith(b"\x89PNG")
    assert (bench / "Pong.log").exists() and (bench / "Breakout.log").exists()

"""The evaluator: plays the current shared weights on its own environment, logs the score, and
keeps the latest and the best checkpoints. Runs on CUDA when asked and available, else on CPU."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from a3c.checkpoint import (
    BEST,
    CHECKPOINT_DIR,
    LATEST,
    RunWriteError,
    checkpoint_payload,
    save_checkpoint,
    writing,
)
from a3c.config import Config
from a3c.envs import make_env
from a3c.logger import EVAL_FIELDS, EVALUATIONS_CSV, append_csv
from a3c.messages import (
    Evaluated,
    EvaluatorStarted,
    SharedModelNonFinite,
    WriteFailed,
    parent_gone,
)
from a3c.model import ActorCritic, build_model, setup_cpu_compute
from a3c.shared import EVALUATE_AT_END, STOP, WORKERS_DONE, SharedTraining

EVAL_SEED_OFFSET = 1_000_003  # evaluation episodes never share seeds with the workers'


@dataclass
class Score:
    mean_reward: float
    std_reward: float
    min_reward: float
    max_reward: float
    mean_ep_length: float
    n_episodes: int

    def __str__(self) -> str:
        return (f"mean reward {self.mean_reward:.2f} ± {self.std_reward:.2f}  min {self.min_reward:.2f}  "
                f"max {self.max_reward:.2f}  mean episode length {self.mean_ep_length:.1f}  "
                f"({self.n_episodes} episodes)")

    @classmethod
    def of(cls, returns: list[float], lengths: list[int]) -> Score:
        r = np.asarray(returns, dtype=np.float64)
        return cls(float(r.mean()), float(r.std()), float(r.min()), float(r.max()),
                   float(np.mean(lengths)), len(returns))


def resolve_device(name: str) -> torch.device:
    """cuda when asked (or auto) and present, else cpu. Only the evaluator calls this, so CUDA is
    never initialised in the parent before it forks off workers."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        print("evaluator: CUDA asked for but not available; evaluating on CPU", flush=True)
    return torch.device("cpu")


@torch.inference_mode()
def evaluate_policy(model: ActorCritic, env: gym.Env, episodes: int, greedy: bool = False,
                    seed: int = EVAL_SEED_OFFSET, device: torch.device | str = "cpu",
                    on_frame: Callable[[int, gym.Env], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> Score | None:
    """Play `episodes` whole episodes; episode i is reset with seed + i, so the same weights give
    the same score. `on_frame(episode, env)` is called after every reset and step (video).
    Returns None if `should_stop()` turns true part way (checked every 100 steps)."""
    returns, lengths = [], []
    generator = torch.Generator(device=device).manual_seed(seed)
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        state = model.initial_state(1, device)
        total, length = 0.0, 0
        if on_frame is not None:
            on_frame(episode, env)
        while True:
            logits, _, state = model(torch.as_tensor(obs, device=device).unsqueeze(0), state)
            if greedy:
                action = int(logits.argmax(-1))
            else:
                action = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            if on_frame is not None:
                on_frame(episode, env)
            if terminated or truncated:
                break
            if should_stop is not None and length % 100 == 0 and should_stop():
                return None
        returns.append(total)
        lengths.append(length)
    return Score.of(returns, lengths)


class EvaluationLog:
    """evaluations.csv, appended one row per evaluation."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / EVALUATIONS_CSV
        with writing(self.path):
            self.file, self.writer = append_csv(self.path, EVAL_FIELDS)

    def write(self, frames: int, episodes: int, elapsed: float, score: Score) -> None:
        with writing(self.path):
            row = {"frames": frames, "episodes": episodes, "time": round(elapsed, 2), **asdict(score)}
            self.writer.writerow([row[field] for field in EVAL_FIELDS])
            self.file.flush()

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:  # a row that a full disk would not take: reported when it was written
            pass


def run_evaluator(config: Config, shared: SharedTraining, run_dir: str, obs_shape: tuple[int, ...],
                  n_actions: int, best_score: float | None, conn: Any, parent_pid: int) -> None:
    """Process entry: evaluate every eval_interval seconds until the stop signal, then once more
    after the workers have finished, writing latest.pt every time and best.pt on a new best."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    setup_cpu_compute()
    device = resolve_device(config.eval_device)
    run_path = Path(run_dir)
    checkpoints = run_path / CHECKPOINT_DIR
    env = make_env(config)
    model = build_model(config, obs_shape, n_actions).to(device)
    cpu_model = build_model(config, obs_shape, n_actions)  # host copy of the weights for checkpoints
    log: EvaluationLog | None = None

    def evaluate_and_checkpoint(evaluate: bool, should_stop: Callable[[], bool] | None) -> None:
        nonlocal best_score
        frames, episodes = shared.total_frames(), shared.total_episodes()
        # One consistent snapshot of the weights; the optimizer state is copied in the payload.
        weights = shared.params.clone()
        if not bool(torch.isfinite(weights).all()):
            conn.send(SharedModelNonFinite(frames))  # never let a broken model overwrite a good checkpoint
            return
        torch.nn.utils.vector_to_parameters(weights, cpu_model.parameters())
        score = None
        if evaluate:
            model.load_state_dict(cpu_model.state_dict())
            score = evaluate_policy(model, env, config.eval_episodes, config.eval_greedy, device=device,
                                    should_stop=should_stop)
            if score is None:  # cut short by the stop signal
                return
            assert log is not None  # opened before the first evaluation
            log.write(frames, episodes, shared.elapsed(), score)
        improved = False
        if score is not None and (best_score is None or score.mean_reward > best_score):
            improved, best_score = True, score.mean_reward
        payload = checkpoint_payload(config, shared, cpu_model.state_dict(), obs_shape, n_actions,
                                     frames, episodes, None if score is None else asdict(score), best_score)
        save_checkpoint(checkpoints / LATEST, payload)
        if improved:
            save_checkpoint(checkpoints / BEST, payload)
        if score is not None:
            conn.send(Evaluated(frames, asdict(score), improved))

    try:
        log = EvaluationLog(run_path)
        conn.send(EvaluatorStarted(str(device)))
        last_time, last_frames = time.time(), shared.total_frames()
        while not shared.wait_flag(STOP, timeout=min(config.eval_interval, 0.2)):
            if os.getppid() != parent_pid:
                return
            due_by_frames = (config.eval_every_frames is not None
                             and shared.total_frames() - last_frames >= config.eval_every_frames)
            if due_by_frames or time.time() - last_time >= config.eval_interval:
                last_time, last_frames = time.time(), shared.total_frames()
                evaluate_and_checkpoint(True, lambda: shared.stop_requested() or os.getppid() != parent_pid)
        # The final checkpoint waits until every worker has made its last update. After a
        # signal it is written at once, without the (possibly long) final evaluation.
        while not shared.wait_flag(WORKERS_DONE, timeout=1.0):
            if os.getppid() != parent_pid:
                return
        evaluate_and_checkpoint(shared.flag(EVALUATE_AT_END), None)
    except RunWriteError as error:  # the parent stops the run; a full disk is no fault of this process
        with contextlib.suppress(OSError):
            conn.send(WriteFailed(str(error)))
    except OSError as error:
        if not parent_gone(error, parent_pid):
            raise
    finally:
        if log is not None:
            log.close()
        env.close()
        conn.close()

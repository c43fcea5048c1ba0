"""The evaluator: plays the current shared weights on its own environments, logs the score, and
keeps the best checkpoint. Runs on CUDA when asked and available, else on CPU."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from a3c.checkpoint import (
    BEST,
    CHECKPOINT_DIR,
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
from a3c.model import (
    DTYPES,
    ActorCritic,
    build_model,
    observation_buffer,
    setup_cpu_compute,
    write_observation,
)
from a3c.shared import EVALUATE_AT_END, STOP, WORKERS_DONE, SharedTraining

EVAL_SEED_OFFSET = 1_000_003  # evaluation episodes never share seeds with the workers'
MAX_SIDE_BY_SIDE = 16  # environments an evaluation plays at once
STOP_CHECK_STEPS = 10
IDLE_BEAT_S = 0.2  # between evaluations: how often the evaluator looks at the flags and beats


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


def evaluation_envs(config: Config, episodes: int) -> list[gym.Env]:
    """The environments an evaluation of `episodes` episodes plays side by side."""
    return [make_env(config) for _ in range(min(episodes, MAX_SIDE_BY_SIDE))]


@torch.inference_mode()
def evaluate_policy(model: ActorCritic, envs: gym.Env | Sequence[gym.Env], episodes: int, greedy: bool = False,
                    seed: int = EVAL_SEED_OFFSET, device: torch.device | str = "cpu",
                    on_frame: Callable[[int, gym.Env], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, precision: str = "float32") -> Score | None:
    """Play `episodes` whole episodes on `envs` side by side, one batched forward pass a step: each
    environment plays the next episode when it finishes one, and episode i is reset with seed + i,
    so the same weights on as many environments give the same score (on one, the episodes are
    played one after another). The body runs in `precision` (the workers' when the evaluator plays
    on their CPU). `on_frame(episode, env)` is called after every reset and step (video). Returns
    None if `should_stop()`, asked every few steps, turns true part way."""
    envs = [envs] if isinstance(envs, gym.Env) else list(envs)[:episodes]
    returns, lengths = [0.0] * episodes, [0] * episodes
    generator = torch.Generator(device=device).manual_seed(seed)
    started = 0

    def start(env: gym.Env) -> tuple[int, np.ndarray]:
        nonlocal started
        episode, started = started, started + 1
        obs, _ = env.reset(seed=seed + episode)
        if on_frame is not None:
            on_frame(episode, env)
        return episode, obs

    playing = [start(env) for env in envs]  # row by row: (episode, observation), on envs[row]
    batch, storage = observation_buffer(len(envs), model.obs_shape, playing[0][1].dtype)  # as the workers'
    state = model.initial_state(len(envs), device)
    weights = model.body_weights(DTYPES[precision])
    step = 0
    while envs:
        for slot, (_, obs) in zip(storage, playing, strict=False):
            write_observation(slot, obs)
        logits, _, state = model.core(model.encode(batch[:len(envs)].to(device), weights), state)
        if greedy:
            actions = logits.argmax(-1)
        else:
            actions = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
        rows: list[int] = []  # the rows that play on
        fresh: list[int] = []  # those of them that start a new episode
        for row, (env, action) in enumerate(zip(envs, actions.tolist(), strict=True)):
            episode = playing[row][0]
            obs, reward, terminated, truncated, _ = env.step(action)
            returns[episode] += float(reward)
            lengths[episode] += 1
            if on_frame is not None:
                on_frame(episode, env)
            if terminated or truncated:
                if started == episodes:
                    continue  # this environment is done
                fresh.append(len(rows))
                episode, obs = start(env)
            playing[row] = episode, obs
            rows.append(row)
        if len(rows) < len(envs):
            envs, playing = [envs[r] for r in rows], [playing[r] for r in rows]
            state = None if state is None else (state[0][rows], state[1][rows])
        if state is not None and fresh:  # a new episode starts from a zero LSTM state
            state[0][fresh], state[1][fresh] = 0.0, 0.0
        step += 1
        if should_stop is not None and step % STOP_CHECK_STEPS == 0 and should_stop():
            return None
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


class EvaluationSchedule:
    """When the evaluator evaluates next: `interval` seconds after the last evaluation began, and no
    sooner than its CPU time since the schedule began is within `cpu_per_second` for each second of
    wall clock (a steady cost however busy the cores are: busy cores make evaluations slower, not
    more frequent); or once `every_frames` frames have passed, whatever the rest."""

    def __init__(self, interval: float, every_frames: int | None, cpu_per_second: float, now: float,
                 cpu: float, frames: int) -> None:
        self.interval, self.every_frames, self.cpu_per_second = interval, every_frames, cpu_per_second
        self.began, self.cpu_at_start = now, cpu
        self.next_due, self.last_frames, self.last_start = now + interval, frames, now

    def due(self, now: float, frames: int) -> bool:
        by_frames = self.every_frames is not None and frames - self.last_frames >= self.every_frames
        return by_frames or now >= self.next_due

    def started(self, now: float, frames: int) -> None:
        self.last_start, self.last_frames = now, frames

    def finished(self, cpu: float) -> None:
        within_share = self.began + (cpu - self.cpu_at_start) / self.cpu_per_second
        self.next_due = max(self.last_start + self.interval, within_share)


def run_evaluator(config: Config, shared: SharedTraining, run_dir: str, obs_shape: tuple[int, ...],
                  n_actions: int, best_score: float | None, conn: Any, parent_pid: int) -> None:
    """Process entry: evaluate the shared weights on a schedule (eval_interval, eval_every_frames,
    within eval_cpu_share of the machine) until the stop flag, then once more after the workers
    have finished if the parent asks; keep best.pt, the best-scoring weights. latest.pt is the
    parent's (Trainer), so checkpoints never wait for an evaluation."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    setup_cpu_compute()
    device = resolve_device(config.eval_device)
    best_path = Path(run_dir) / CHECKPOINT_DIR / BEST
    envs = evaluation_envs(config, config.eval_episodes)
    model = build_model(config, obs_shape, n_actions).to(device)
    cpu_model = build_model(config, obs_shape, n_actions)  # host copy of the weights for checkpoints
    cpu_per_second = config.eval_cpu_share * len(os.sched_getaffinity(0))
    precision = config.network_precision if device.type == "cpu" else "float32"  # the policy as the workers act
    log: EvaluationLog | None = None

    def orphaned() -> bool:
        return os.getppid() != parent_pid

    def stop_check(on_stop_flag: bool) -> Callable[[], bool]:
        """An evaluation's should_stop, asked every few steps; it shows the parent's watch progress too."""
        def should_stop() -> bool:
            shared.beat(shared.evaluator_slot)
            return (on_stop_flag and shared.stop_requested()) or orphaned()
        return should_stop

    def evaluate(cut_short: Callable[[], bool]) -> None:
        nonlocal best_score
        frames, episodes = shared.total_frames(), shared.total_episodes()
        weights = shared.params.clone()  # one consistent snapshot
        if not bool(torch.isfinite(weights).all()):
            conn.send(SharedModelNonFinite(frames))  # never let a broken model overwrite a good checkpoint
            return
        torch.nn.utils.vector_to_parameters(weights, cpu_model.parameters())
        model.load_state_dict(cpu_model.state_dict())
        score = evaluate_policy(model, envs, config.eval_episodes, config.eval_greedy, device=device,
                                should_stop=cut_short, precision=precision)
        if score is None:  # cut short by the stop flag
            return
        assert log is not None  # opened before the first evaluation
        log.write(frames, episodes, shared.elapsed(), score)
        improved = best_score is None or score.mean_reward > best_score
        if improved:
            best_score = score.mean_reward
            save_checkpoint(best_path, checkpoint_payload(
                config, shared, cpu_model.state_dict(), obs_shape, n_actions, frames, episodes, asdict(score),
                best_score))
        conn.send(Evaluated(frames, asdict(score), improved))

    try:
        log = EvaluationLog(Path(run_dir))
        conn.send(EvaluatorStarted(str(device)))
        schedule = EvaluationSchedule(config.eval_interval, config.eval_every_frames, cpu_per_second,
                                      time.monotonic(), time.process_time(), shared.total_frames())
        while not shared.wait_flag(STOP, timeout=IDLE_BEAT_S):
            shared.beat(shared.evaluator_slot)
            if orphaned():
                return
            if schedule.due(time.monotonic(), shared.total_frames()):
                schedule.started(time.monotonic(), shared.total_frames())
                evaluate(stop_check(on_stop_flag=True))
                schedule.finished(time.process_time())
        # The parent writes the final checkpoint once every worker has made its last update, then
        # asks for a final evaluation (at the end of the budget, not after a signal).
        while not shared.wait_flag(WORKERS_DONE, timeout=IDLE_BEAT_S):
            shared.beat(shared.evaluator_slot)
            if orphaned():
                return
        if shared.flag(EVALUATE_AT_END):
            evaluate(stop_check(on_stop_flag=False))
    except RunWriteError as error:  # the parent stops the run; a full disk is no fault of this process
        with contextlib.suppress(OSError):
            conn.send(WriteFailed(str(error)))
    except OSError as error:
        if not parent_gone(error, parent_pid):
            raise
    finally:
        if log is not None:
            log.close()
        for env in envs:
            env.close()
        conn.close()

"""Process orchestration: build the shared state, start the workers and the evaluator, watch them,
log, and stop cleanly. The parent never computes gradients and never touches CUDA."""

from __future__ import annotations

import json
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Protocol

import psutil
import torch

from a3c.checkpoint import (
    BEST,
    CHECKPOINT_DIR,
    LATEST,
    CheckpointError,
    CheckpointWriter,
    RunWriteError,
    checkpoint_payload,
    load_checkpoint,
    lock_run_dir,
    new_run_dir,
    remove_stale_temporaries,
    restore_model,
    restore_training,
    writing,
)
from a3c.config import CLIP_RATIO_FEW, DEFAULT_ADAM_BETA1, Config, ConfigError, validate
from a3c.envs import env_spaces
from a3c.logger import RunLogger
from a3c.messages import (
    EpisodeFinished,
    Evaluated,
    EvaluatorStarted,
    LearnerStats,
    Message,
    Note,
    SharedModelNonFinite,
    UpdateSkipped,
    WriteFailed,
)
from a3c.model import build_model
from a3c.shared import EVALUATE_AT_END, WORKERS_DONE, SharedTraining
from a3c.supervisor import POLL_S, Child, Supervisor, one_thread_per_child

# At the end of the budget the final evaluation may take this long, while it makes progress; a
# signal ends it at once (the final checkpoint is written before it).
FINAL_EVALUATION_TIMEOUT_S = 600.0
EVALUATOR_EXIT_S = 5.0  # otherwise the evaluator may finish writing best.pt before it is ended
# Checking the weights copies them all: at every tick it was most of what the parent took from the
# workers and the evaluator (docs/experiments.md, "Speed").
WEIGHTS_CHECK_INTERVAL_S = 5.0

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 130, 143


def resident_memory() -> int:
    """Resident bytes of this process and all its children (workers, evaluator)."""
    me = psutil.Process()
    total = 0
    for process in (me, *me.children(recursive=True)):
        try:
            total += process.memory_info().rss
        except psutil.Error:  # a child that just exited
            pass
    return total


def check_model_fits(config: Config, obs_shape: tuple[int, ...], n_actions: int) -> None:
    """Build the model and run one observation through it in the parent, so that settings that
    cannot produce a model (a screen too small for the body's convolutions, say) are refused before
    any process starts or any file is written. The error names the smallest screen_size that works."""
    def works(settings: Config, shape: tuple[int, ...]) -> bool:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # torch's note on the zero-size layers of a misfit
                model = build_model(settings, shape, n_actions)
                model(torch.zeros((1, *shape), dtype=torch.uint8 if model.is_image else torch.float32),
                      model.initial_state(1))
            return True
        except (RuntimeError, ValueError):
            return False

    if works(config, obs_shape):
        return
    if len(obs_shape) == 3:  # frames: find the smallest screen that the body takes
        smallest = next((size for size in range(config.screen_size + 1, 1024)
                         if works(replace(config, screen_size=size), (obs_shape[0], size, size))), None)
        if smallest is not None:
            raise ConfigError(f"screen_size {config.screen_size} is too small for the {config.model_body} "
                              f"body's convolutions: the smallest that works is {smallest}")
    raise ConfigError(f"these settings give no working model for {config.env_id} "
                      f"(observations {obs_shape}, body {config.model_body})")


def choices_line(config: Config) -> str:
    """The start line: what the run chose where a setting was left to this machine or to the number
    of workers, and why."""
    return (f"network precision: {config.network_precision}" + (" (auto)" if config.precision == "auto" else "")
            + f"; {config.optimizer} learning rate {config.learning_rate:.3g}"
            + (" (the default)" if config.lr is None else "") + adam_momentum_choice(config) + "; " + further_pass_choice(config))


def adam_momentum_choice(config: Config) -> str:
    """The start line's words on Adam's beta1: its value and, where it is the default, why."""
    if config.optimizer != "adam":
        return ""
    beta1 = config.adam_betas[0]
    return f", beta1 {beta1:.3g}" + worker_count_default(
        config, config.adam_beta1, beta1, DEFAULT_ADAM_BETA1,
        f"each update lands {config.workers - 1} or more others late, a lag that momentum would add to")


def further_pass_choice(config: Config) -> str:
    """The start line's words on the steps taken on each rollout and, where the further passes' clip
    is the default, why it is what it is."""
    if config.rollout_passes == 1:
        return "one step on each rollout (A3C's)"
    clip = config.further_pass_clip
    return f"{config.rollout_passes} steps on each rollout, the further ones clipped at {clip:.3g}" + worker_count_default(
        config, config.clip_ratio, clip, CLIP_RATIO_FEW,
        "the policy moves further between acting and a further step, as more updates land in between")


def worker_count_default(config: Config, given: float | None, value: float, few_workers_value: float, why: str) -> str:
    """Words after a setting whose default depends on the number of workers: none where the user gave
    it, " (the default)" where it is the value of few workers, else which workers it is for and why."""
    if given is not None:
        return ""
    if value == few_workers_value:
        return " (the default)"
    return f" (the default for {config.workers} workers: {why})"


class RemoteWorkers(Protocol):
    """Workers that run elsewhere than this machine's Supervisor (a Ray cluster: ray_cluster.py).
    They train the run's shared weights through it: `poll` brings their frames, messages and
    weights into the shared state, `stop` ends them with their last updates folded in."""

    failure: str | None  # set when they cannot go on; the run stops with it

    def start(self) -> None: ...

    def poll(self) -> None: ...

    def stop(self, timeout: float) -> None: ...

    def close(self) -> None: ...


RemoteFactory = Callable[[Config, SharedTraining, Callable[[Message], None], Callable[[str], None]], RemoteWorkers]


class Trainer:
    def __init__(self, config: Config, resume_payload: dict[str, Any] | None = None,
                 run_dir: Path | None = None, evaluator: bool = True,
                 on_tick: Callable[[float, int], None] | None = None, run_lock: IO[str] | None = None,
                 remote: RemoteFactory | None = None) -> None:
        """`run_lock`: the lock of `run_dir` (lock_run_dir), where the caller took it before reading
        the checkpoint it resumes from; taken here otherwise. `remote`: builds the workers when they
        run on a cluster rather than on this machine."""
        validate(config)
        self.config = config
        self.with_evaluator = evaluator
        self.on_tick = on_tick  # called with (time, total frames) at every tick: benchmarks
        self.obs_shape, self.n_actions = env_spaces(config)
        check_model_fits(config, self.obs_shape, self.n_actions)
        model = build_model(config, self.obs_shape, self.n_actions)
        if resume_payload is not None:
            restore_model(model, resume_payload, run_dir or "being resumed")
        self.shared = SharedTraining.create(model, config)
        if resume_payload is not None:
            restore_training(self.shared, resume_payload)
        self.run_dir = run_dir if run_dir is not None else new_run_dir(config)
        self.best_score = None if resume_payload is None else _best_score(resume_payload, self.run_dir)
        self.snapshot_model = build_model(config, self.obs_shape, self.n_actions)  # a private copy to save
        self.checkpoints = CheckpointWriter()
        self.run_lock = run_lock if run_lock is not None else lock_run_dir(self.run_dir)
        try:
            with writing(self.run_dir / "config.json"):
                config.save(str(self.run_dir / "config.json"))
        except RunWriteError:
            self.run_lock.close()
            raise
        self.supervisor = Supervisor(config, self.shared, self._handle, self._print)
        self.remote_factory = remote
        self.remote: RemoteWorkers | None = None
        self.skipped_updates = 0
        self.signals: list[int] = []
        self.outcome: tuple[int, str] | None = None
        self.dead_body_workers: set[int] = set()  # workers whose last report found the body dead
        self.next_weights_check = 0.0  # the first tick checks the weights
        self.stop_deadline: float | None = None  # time.monotonic() by which a signalled run has ended

    def _evaluator_args(self) -> tuple[Any, ...]:
        return str(self.run_dir), self.obs_shape, self.n_actions, self.best_score

    # -- messages ----------------------------------------------------------------------------
    def _handle(self, message: Message) -> None:
        match message:
            case EpisodeFinished():
                self.log.episode(message.frames, message.worker, message.episode_return, message.length,
                                 message.end_time)
                self.shared.count_episode()
            case LearnerStats():
                self.log.train(message)
                self._check_body_alive(message)
            case Evaluated():
                if message.improved:
                    self.best_score = message.score["mean_reward"]
                self.log.evaluation(message.frames, message.score, message.improved)
            case EvaluatorStarted():
                self._print(f"evaluator running on {message.device}")
            case SharedModelNonFinite():
                self._print(f"evaluator: the shared model is non-finite at {message.frames:,} frames; "
                            "no checkpoint written")
            case WriteFailed():  # the evaluator could not write a checkpoint or its CSV
                self._fail_on_write(message.reason)
            case UpdateSkipped():
                self.skipped_updates += 1
                self._print(f"worker {message.worker}: skipped an update with a non-finite loss or gradient "
                            f"(norm {message.grad_norm}); {self.skipped_updates} skipped so far")
            case Note():
                self._print(message.text)

    def _check_body_alive(self, stats: LearnerStats) -> None:
        """Stop a run whose ReLU body died: when every worker reports that no unit of the body's last
        layer fired on any observation, no gradient reaches the body again and the run can only
        waste its remaining time (docs/experiments.md, "Activation")."""
        if self.config.model_body == "mlp":
            return  # tanh units always pass gradient
        if stats.active_units > 0:
            self.dead_body_workers.discard(stats.worker)
            return
        self.dead_body_workers.add(stats.worker)
        if len(self.dead_body_workers) >= self.config.workers and self.outcome is None:
            best = "" if self.best_score is None else f" (its mean: {self.best_score:g})"
            reason = ("the network died: no unit of its body's last layer fires on any observation of any "
                      "worker, so no gradient reaches the body and it cannot learn again; stopping. "
                      f"checkpoints/best.pt keeps the best policy{best}; to go on from it (latest.pt may hold "
                      f"the dead network): a3c train --resume {self.run_dir / 'checkpoints' / 'best.pt'}")
            self.outcome = (EXIT_FAILED, reason)

    def _print(self, text: str) -> None:
        self.log.message(text)

    def _fail_on_write(self, reason: str) -> None:
        """A file of the run could not be written: stop now, replace nobody (it is no process's
        fault), and keep the checkpoints already written."""
        if self.outcome is None:
            self.outcome = (EXIT_FAILED, reason)

    # -- supervision -------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)
        if len(self.signals) == 1:
            self.stop_deadline = time.monotonic() + self.config.stop_timeout
            print(f"\n{signal.Signals(signum).name}: stopping within {self.config.stop_timeout:g} s (final "
                  "checkpoint follows; press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def _check_stop(self, start: float) -> None:
        if self.outcome is not None:
            return
        failure = self.supervisor.failure or (self.remote.failure if self.remote is not None else None)
        if failure is not None:
            self.outcome = (EXIT_FAILED, failure)
        elif self.log.write_error is not None or self.checkpoints.error is not None:
            self._fail_on_write(self.log.write_error or self.checkpoints.error or "")
        elif self.signals:
            code = EXIT_INTERRUPTED if self.signals[0] == signal.SIGINT else EXIT_TERMINATED
            self.outcome = (code, f"stopped by {signal.Signals(self.signals[0]).name}")
        elif self.shared.budget_reached(self.config):
            self.outcome = (EXIT_OK, f"reached {self.config.total_frames:,} frames")
        elif self.config.time_limit is not None and time.time() - start >= self.config.time_limit:
            self.outcome = (EXIT_OK, f"reached the time limit of {self.config.time_limit:g} s")
        elif time.time() >= self.next_weights_check and not self._weights_are_finite():
            optimizer = self.shared.optimizer
            tensors = [("weights", self.shared.params), *((name, t[0]) for name, t in optimizer.state.items())]
            counts = ", ".join(f"{name} {int((~torch.isfinite(t.clone())).sum())}" for name, t in tensors)
            self.outcome = (EXIT_FAILED, (f"the shared model became non-finite (non-finite values: {counts} of "
                                          f"{self.shared.params.numel()}; optimizer step {float(optimizer.steps[0]):g}); "
                                          "stopping (the last good checkpoint is kept)"))

    def _weights_are_finite(self) -> bool:
        self.next_weights_check = time.time() + WEIGHTS_CHECK_INTERVAL_S
        return self.shared.weights_are_finite()

    # -- checkpoints -------------------------------------------------------------------------
    def _write_checkpoint(self) -> bool:
        """Start writing latest.pt from a snapshot of the shared weights, optimizer and counters (the
        workers never wait: only the copy is made here, the writing on the checkpoint thread).
        False if the weights are not finite: the last good checkpoint stays."""
        frames, episodes = self.shared.total_frames(), self.shared.total_episodes()
        weights = self.shared.params.clone()
        if not bool(torch.isfinite(weights).all()):
            return False
        # The snapshot model is written again only once this write is done (busy() and wait()).
        torch.nn.utils.vector_to_parameters(weights, self.snapshot_model.parameters())
        payload = checkpoint_payload(self.config, self.shared, self.snapshot_model.state_dict(), self.obs_shape,
                                     self.n_actions, frames, episodes, None, self.best_score)
        self.checkpoints.write(self.run_dir / CHECKPOINT_DIR / LATEST, payload)
        return True

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> int:
        config = self.config
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.shared.start_clock()
        self.log = RunLogger(config, self.run_dir, self.shared.total_frames(), self.shared.elapsed)
        one_thread_per_child()
        self._print(f"run directory: {self.run_dir}")
        self._print("configuration: " + json.dumps(config.to_dict()))
        self._print(choices_line(config))
        supervisor = self.supervisor
        try:
            start = time.time()
            if self.with_evaluator:
                supervisor.start_evaluator(self._evaluator_args)
            if self.remote_factory is None:
                supervisor.start_workers()
            else:
                self.remote = self.remote_factory(config, self.shared, self._handle, self._print)
                self.remote.start()
            if supervisor.children:
                self._print("started " + ", ".join(supervisor.describe(c) for c in supervisor.children))
            start_frames = self.shared.total_frames()
            last_status, last_frames = time.time(), start_frames
            next_checkpoint = time.monotonic() + config.checkpoint_interval
            while self.outcome is None:
                supervisor.drain(POLL_S)
                if self.remote is not None:
                    self.remote.poll()
                supervisor.supervise()
                self._check_stop(start)
                if self.outcome is None and time.monotonic() >= next_checkpoint and not self.checkpoints.busy():
                    self._write_checkpoint()
                    next_checkpoint = time.monotonic() + config.checkpoint_interval
                now, frames = time.time(), self.shared.total_frames()
                if self.on_tick is not None:
                    self.on_tick(now, frames)
                if now - last_status >= config.status_interval:
                    fps = (frames - last_frames) / (now - last_status)
                    self.log.status(frames, self.shared.total_episodes(), fps, resident_memory())
                    last_status, last_frames = now, frames
            code, reason = self.outcome
            if code == EXIT_FAILED:  # the one line that says what went wrong, as it happens
                print(f"error: {reason}", file=sys.stderr, flush=True)
            else:
                self._print(f"stopping: {reason}")
            self._shutdown(code)
            frames, elapsed = self.shared.total_frames(), time.time() - start
            self.log.status(frames, self.shared.total_episodes(), (frames - start_frames) / elapsed,
                            resident_memory())
            self._print(f"done: {frames:,} frames in {elapsed:.1f} s; run directory {self.run_dir}")
            return self.outcome[0]
        finally:
            supervisor.close()
            if self.remote is not None:
                self.remote.close()
            self.log.close()
            self.run_lock.close()  # the run directory is free for a --resume
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _shutdown(self, code: int) -> None:
        """Stop the workers, write the final checkpoint from the shared weights (not after a failure:
        the last good one stays), and at the end of the budget let the evaluator score them. After a
        signal all of it ends by stop_deadline, hung children or not; a second signal ends it at once."""
        supervisor, config = self.supervisor, self.config
        deadline = self.stop_deadline or time.monotonic() + config.stop_timeout

        def second_signal() -> bool:
            return len(self.signals) > 1

        # Half the time for the workers' last updates, the rest for the checkpoint and the evaluator.
        supervisor.stop_workers(deadline - config.stop_timeout / 2, second_signal)
        if self.remote is not None:  # their last updates reach the shared weights before the checkpoint
            self.remote.stop(max(0.0, deadline - config.stop_timeout / 4 - time.monotonic()))
        supervisor.drain(0)
        if code != EXIT_FAILED and not second_signal():
            self._final_checkpoint(deadline)
        evaluator = supervisor.evaluator()
        if evaluator is not None:
            self._stop_evaluator(evaluator, final_evaluation=code == EXIT_OK and not self.signals,
                                 deadline=min(deadline, time.monotonic() + EVALUATOR_EXIT_S))
        remove_stale_temporaries(self.run_dir / CHECKPOINT_DIR)  # of a child killed mid-write

    def _final_checkpoint(self, deadline: float) -> None:
        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if not self.checkpoints.wait(left()):
            self._print("no final checkpoint: the one before is still being written")
        elif not self._write_checkpoint():
            self._print("no final checkpoint: the shared weights are not finite")
        elif not self.checkpoints.wait(left()):
            self._print(f"no final checkpoint: it was not written within {self.config.stop_timeout:g} s")
        elif self.checkpoints.error is not None:
            print(f"error: {self.checkpoints.error}", file=sys.stderr, flush=True)
            self.outcome = (EXIT_FAILED, self.checkpoints.error)

    def _stop_evaluator(self, evaluator: Child, final_evaluation: bool, deadline: float) -> None:
        """Let the evaluator score the final weights (at most FINAL_EVALUATION_TIMEOUT_S, while it
        makes progress, until a signal), or else finish what it writes by `deadline`; then end it."""
        supervisor = self.supervisor
        if final_evaluation:
            self.shared.set_flag(EVALUATE_AT_END)
            deadline = time.monotonic() + FINAL_EVALUATION_TIMEOUT_S
        self.shared.set_flag(WORKERS_DONE)

        def abandon() -> bool:
            supervisor.kill_hung()
            return bool(self.signals) if final_evaluation else len(self.signals) > 1

        finished = supervisor.wait_for([evaluator], deadline, abandon)
        if final_evaluation and (not finished or evaluator.process.exitcode != 0):
            why = (f"stopped by {signal.Signals(self.signals[0]).name}" if self.signals
                   else f"the evaluator made no progress for {evaluator.progress.hung_for:.0f} s"
                   if evaluator.progress.hung_for
                   else f"the evaluator died with exit code {evaluator.process.exitcode}" if finished
                   else f"it did not finish within {FINAL_EVALUATION_TIMEOUT_S:g} s")
            self._print(f"final evaluation skipped: {why}")
        supervisor.kill([evaluator])
        supervisor.drain(0)


def _best_score(payload: dict[str, Any], run_dir: Path) -> float | None:
    """The best evaluation so far of a resumed run: the checkpoint's, or best.pt's where that is
    newer (latest.pt may have been written before the evaluator's last improvement reached the parent)."""
    best = payload.get("best_score")
    try:
        saved = load_checkpoint(run_dir / CHECKPOINT_DIR / BEST).get("best_score")
    except CheckpointError:
        return best
    if saved is not None and (best is None or saved > best):
        return float(saved)
    return best

"""Placement across machines on Ray Core (the optional extra a3c[ray]; the local trainer never
imports this module).

The algorithm is unchanged: on every node one Ray actor, a NodeGroup, runs today's shared-memory
Hogwild group (a Supervisor with its worker processes and its own shared optimizer). A ParameterServer
actor on the driver's node holds the cluster's weights. Every exchange interval each
group, on its own schedule and never waiting for another, pushes what its workers changed since
its last exchange (a weight delta), with its frames and the episodes it finished, and pulls the
global weights back. A message per update would cost as much as the update (docs/experiments.md, "Ray").

The driver is the ordinary Trainer: its evaluator and checkpoints live with a copy of the global
weights that RayWorkers.poll keeps current, so run directories, CSVs and checkpoints are those of
a local run, and either kind resumes the other.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from a3c.config import Config, ConfigError, RayOptions
from a3c.envs import env_spaces
from a3c.messages import EpisodeFinished, LearnerStats, Message, Note, UpdateSkipped
from a3c.model import build_model, setup_cpu_compute
from a3c.shared import SharedTraining
from a3c.supervisor import (
    POLL_S,
    DeathLog,
    HangWatch,
    Progress,
    Supervisor,
    one_thread_per_child,
)

CONNECT_TIMEOUT_S = 30.0
OPTIMIZER_SYNC_S = 10.0   # how often a node sends its optimizer state, for the driver's checkpoints
NODE_STOP_TIMEOUT_S = 60.0
# Ray starts its worker processes at niceness 15 unless its raylet is told otherwise.
WORKER_NICENESS_ENV = "RAY_worker_niceness"
# A node group's workers run this much nicer than its actor, so that an exchange (the actor, the
# parameter server, Ray's own processes) does not queue behind them for the CPU; more did not
# learn faster per frame (docs/experiments.md, "Ray").
EXCHANGE_PRECEDENCE = 5
# The default exchange interval sends a node's weights at about this rate, and not more often than
# every MIN_EXCHANGE_INTERVAL_S: the fewer updates a node makes between exchanges, the more the
# cluster learns per frame like one machine, but every exchange costs CPU; the rate is where the
# two balanced (docs/experiments.md, "Ray").
EXCHANGE_BYTES_PER_S = 10e6
MIN_EXCHANGE_INTERVAL_S = 0.005


def worker_shares(workers: int, nodes: int) -> list[list[int]]:
    """The run's worker ids, split into `nodes` contiguous groups as even as they go."""
    if nodes < 1 or workers < nodes:
        raise ConfigError(f"{workers} workers cannot be spread over {nodes} nodes: each node needs one")
    per_node, extra = divmod(workers, nodes)
    shares, start = [], 0
    for node in range(nodes):
        size = per_node + (node < extra)
        shares.append(list(range(start, start + size)))
        start += size
    return shares


def node_config(config: Config, workers: int) -> Config:
    """A node's settings: its share of the workers, at the learning rate, Adam momentum and further
    passes' clip of all of them (the cluster's weights move with every node's updates)."""
    return replace(config, workers=workers, lr=config.learning_rate, adam_beta1=config.adam_betas[0],
                   clip_ratio=config.further_pass_clip)


def node_decay_power(workers: int, node_workers: int) -> float:
    """How much faster a node's optimizer must forget (SharedOptimizer.forget_faster): it steps on
    its own workers' updates only, a share node_workers/workers of the cluster's. With its decay
    rates raised to the power workers/node_workers (Adam's betas, RMSProp's alpha), its running
    averages forget as fast per update of the whole cluster as one machine's shared optimizer does,
    and Adam's bias correction follows; with the plain betas a cluster learned slower per frame than
    one machine (docs/experiments.md, "Ray")."""
    return workers / node_workers


def auto_exchange_interval(parameters: int) -> float:
    """Seconds between a node's exchanges for a float32 model of this many parameters."""
    return max(MIN_EXCHANGE_INTERVAL_S, 4 * parameters / EXCHANGE_BYTES_PER_S)


def check_answers(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse at once an address where nothing listens; else connect once from a child process,
    which we can end: ray.init on an address where no cluster answers retries for minutes."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout, 5.0)).close()
    except ValueError:
        raise ConfigError(f"--ray {address}: give the cluster's address as HOST:PORT") from None
    except OSError as error:
        raise ConfigError(f"no Ray cluster answered at {address} ({error.strerror or error}; start one there with "
                          "`ray start --head --port PORT`, or leave out the address to run on this machine)") from None
    probe = "import sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)"
    try:
        subprocess.run([sys.executable, "-c", probe, address], timeout=timeout, capture_output=True,
                       text=True, check=True)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"no Ray cluster answered at {address} within {timeout:g} s (start one there with "
                          "`ray start --head --port PORT`, or leave out the address to run on this machine)") from None
    except subprocess.CalledProcessError as error:
        lines = [line for line in error.stderr.splitlines() if line.strip()]
        raise ConfigError(f"cannot join the Ray cluster at {address}: {lines[-1] if lines else error}") from None


class RayCluster:
    """The driver's connection: joins a cluster or starts a local instance, picks the nodes."""

    def __init__(self, options: RayOptions, workers: int) -> None:
        self.options, self.started_here = options, options.address is None
        if options.address is None:  # the workers run at the local trainer's priority
            os.environ[WORKER_NICENESS_ENV] = "0"
        if options.address is not None:
            check_answers(options.address)
            ray.init(address=options.address, logging_level=logging.WARNING, log_to_driver=False)
        else:  # "local": a new instance even where RAY_ADDRESS names another; CPUs for every worker
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, workers), include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)
        try:
            self.driver_node = ray.get_runtime_context().get_node_id()
            self.nodes = self._pick_nodes(options.nodes, workers)
        except BaseException:
            self.close()
            raise

    def _pick_nodes(self, wanted: int | None, workers: int) -> list[dict[str, Any]]:
        alive = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
        # The driver's node first: it also runs the evaluator and holds the global weights.
        alive.sort(key=lambda n: (n["NodeID"] != self.driver_node, n["NodeManagerAddress"], n["NodeID"]))
        count = wanted if wanted is not None else (1 if self.started_here else len(alive))
        if count > len(alive):
            raise ConfigError(f"--nodes {count}: the Ray cluster has {len(alive)} live node"
                              f"{'s' if len(alive) != 1 else ''} with CPUs")
        chosen = alive[:count]
        for node, share in zip(chosen, worker_shares(workers, count), strict=True):
            cpus = int(node["Resources"].get("CPU", 0))
            if len(share) > cpus:
                raise ConfigError(f"node {node['NodeManagerAddress']} has {cpus} CPUs for {len(share)} workers: "
                                  "ask for fewer workers or more nodes")
        return chosen

    def live_cpus(self) -> dict[str, tuple[str, int]]:
        """Each live node's address and CPUs, by node id."""
        return {n["NodeID"]: (n["NodeManagerAddress"], int(n["Resources"].get("CPU", 0)))
                for n in ray.nodes() if n["Alive"]}

    def node_alive(self, node_id: str) -> bool:
        return node_id in self.live_cpus()

    def close(self) -> None:
        """Disconnect; a Ray instance started here stops with it, a user's cluster stays up."""
        ray.shutdown()


def take_back_priority(role: str) -> Note | None:
    """Ray starts its workers at niceness 15 unless its raylet is told otherwise: an actor of ours
    lowers its own back to 0 where the system allows it (root, CAP_SYS_NICE), so that neither its
    start nor its exchanges wait behind the node's busy processes. Where refused, a note for the log."""
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness <= 0:
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        return Note(f"{role} runs at niceness {niceness}, Ray's default, behind the node's busy processes; "
                    f"start Ray on that node with {WORKER_NICENESS_ENV}=0 for full speed")
    return None


class ParameterServer:
    """The cluster's weights and counters (a Ray actor on the driver's node, one call at a time).
    Only a node group's current incarnation may exchange: a replaced one is refused."""

    def __init__(self, params: np.ndarray, frames: int) -> None:
        note = take_back_priority("the parameter server")  # every exchange of every node passes here
        self.params, self.frames = params.copy(), frames
        self.messages: list[Message] = [note] if note else []
        self.optimizer_state: dict[str, Any] | None = None
        self.incarnations: dict[int, int] = {}
        self.exchanging: set[int] = set()  # groups whose current incarnation has exchanged
        self.exchanges: dict[int, int] = {}  # exchanges accepted per group: its heartbeat
        self.stop = False

    def register(self, node: int, incarnation: int) -> None:
        """A new incarnation of a group: its heartbeat counts from zero, so that the driver allows
        it a start-up before its first exchange."""
        self.incarnations[node] = incarnation
        self.exchanging.discard(node)
        self.exchanges[node] = 0

    def has_exchanged(self, node: int) -> bool:
        """Whether the group's current incarnation ran far enough to exchange once."""
        return node in self.exchanging

    def exchange(self, node: int, incarnation: int, delta: np.ndarray, frames: int, messages: list[Message],
                 optimizer_state: dict[str, Any] | None) -> tuple[np.ndarray, int, bool] | None:
        """Fold in one group's changes; the global weights, frames and the stop request back."""
        if self.incarnations.get(node) != incarnation:
            return None
        self.exchanging.add(node)
        self.exchanges[node] = self.exchanges.get(node, 0) + 1
        self.params += delta
        self.frames += frames
        self.messages.extend(messages)
        if optimizer_state is not None:
            self.optimizer_state = optimizer_state
        return self.params.copy(), self.frames, self.stop

    def pull(self) -> tuple[np.ndarray, int, list[Message], dict[str, Any] | None, dict[int, int]]:
        """For the driver: the weights, frames, new messages, the newest optimizer state, and each
        group's count of exchanges."""
        messages, self.messages = self.messages, []
        optimizer_state, self.optimizer_state = self.optimizer_state, None
        return self.params.copy(), self.frames, messages, optimizer_state, dict(self.exchanges)

    def request_stop(self) -> list[int]:
        """The groups to wait for: those running. A replacement still waiting for a place (its node's
        loss not yet known to Ray, say) has nothing to hand in."""
        self.stop = True
        return sorted(self.exchanging)


def _global_ids(message: Message, worker_ids: list[int]) -> Message:
    """A worker's message with its id among all the cluster's workers, not its node's slot."""
    if isinstance(message, EpisodeFinished | LearnerStats | UpdateSkipped):
        return replace(message, worker=worker_ids[message.worker])
    return message


class NodeGroup:
    """One node's share of the workers (a Ray actor): the local trainer's worker processes around
    their own shared weights and optimizer, exchanging with the ParameterServer."""

    def __init__(self, index: int, incarnation: int, config: Config, worker_ids: list[int], params: np.ndarray,
                 optimizer_state: dict[str, Any] | None, server: Any, exchange_interval: float) -> None:
        note = take_back_priority(f"node group {index}")  # first: the rest of the start-up goes faster
        setup_cpu_compute()
        one_thread_per_child()  # Ray sets OMP_NUM_THREADS to the actor's CPUs; our workers take one
        self.index, self.incarnation, self.worker_ids = index, incarnation, worker_ids
        self.server, self.interval = server, exchange_interval
        self.config = node_config(config, len(worker_ids))
        model = build_model(self.config, *env_spaces(self.config))
        self.shared = SharedTraining.create(model, self.config)
        self.shared.optimizer.forget_faster(node_decay_power(config.workers, len(worker_ids)))
        self.shared.params.copy_(torch.tensor(params))  # torch.tensor copies: Ray's arrays are read-only
        if optimizer_state is not None:
            self.shared.optimizer.load_state_dict(optimizer_state)
        self.base = self.shared.params.clone()  # the global weights as of the last exchange
        self.pushed_frames = 0                  # of this group's frames, those already sent
        self.pending: list[Message] = [note] if note else []
        self.last_optimizer_sync = time.monotonic()

    def run(self) -> int:
        """Train until the driver asks to stop or the budget is spent; the frames it sent."""
        def handle(message: Message) -> None:
            self.pending.append(_global_ids(message, self.worker_ids))

        def say(text: str) -> None:
            self.pending.append(Note(f"node group {self.index}: {text}"))

        supervisor = Supervisor(self.config, self.shared, handle, say, self.worker_ids,
                                incarnation_base=1000 * self.incarnation, worker_niceness=EXCHANGE_PRECEDENCE)
        if self.incarnation:
            say(f"incarnation {self.incarnation} running on node {ray.get_runtime_context().get_node_id()[:8]}")
        try:
            supervisor.start_workers()
            next_exchange = time.monotonic() + self.interval
            while True:
                supervisor.drain(min(POLL_S, max(0.0, next_exchange - time.monotonic())))
                supervisor.supervise()
                if supervisor.failure is not None:
                    raise RuntimeError(supervisor.failure)
                finished = all(c.process.exitcode is not None for c in supervisor.workers())
                if time.monotonic() >= next_exchange or finished:
                    stop = self._exchange(final=False)
                    next_exchange = time.monotonic() + self.interval
                    if stop or finished:
                        break
            supervisor.stop_workers(time.monotonic() + NODE_STOP_TIMEOUT_S)
            self._exchange(final=True)
        finally:
            supervisor.close()
        return self.pushed_frames

    def _exchange(self, final: bool) -> bool:
        """Push the changes since the last exchange, take the global weights; whether to stop."""
        snapshot = self.shared.params.clone()
        local_frames = int(self.shared.frames.sum())
        messages, self.pending = self.pending, []
        optimizer_state = None
        if final or time.monotonic() - self.last_optimizer_sync >= OPTIMIZER_SYNC_S:
            optimizer_state, self.last_optimizer_sync = self.shared.optimizer.state_dict(), time.monotonic()
        reply = ray.get(self.server.exchange.remote(
            self.index, self.incarnation, (snapshot - self.base).numpy(), local_frames - self.pushed_frames,
            messages, optimizer_state))
        if reply is None:  # replaced by a newer incarnation: nothing of ours counts any more
            return True
        params, total_frames, stop = reply
        global_params = torch.tensor(params)  # a copy: Ray's arrays are read-only
        # Workers went on while the message travelled: keep their newer steps on top.
        self.shared.params.add_(global_params - snapshot)
        self.base = global_params
        self.pushed_frames = local_frames
        self.shared.set_frames_elsewhere(total_frames - local_frames)
        return bool(stop)


@dataclass
class Group:
    actor: Any
    done: Any          # ObjectRef of NodeGroup.run
    index: int
    incarnation: int
    node_id: str
    address: str
    cpus: int          # CPUs asked of Ray: 0 where it shares a node's CPUs with another group
    progress: Progress = field(default_factory=Progress)  # its exchanges, watched by the driver


class RayWorkers:
    """The driver's side (trainer.RemoteWorkers): starts the parameter server and one NodeGroup per
    node, folds their frames, episodes and weights into the run's shared state, and replaces a
    group whose actor dies."""

    def __init__(self, cluster: RayCluster, options: RayOptions, config: Config, shared: SharedTraining,
                 handle: Callable[[Message], None], say: Callable[[str], None]) -> None:
        self.cluster, self.options, self.config, self.shared = cluster, options, config, shared
        self.handle, self.say = handle, say
        self.shares = worker_shares(config.workers, len(cluster.nodes))
        self.exchange_interval = options.exchange_interval or auto_exchange_interval(shared.params.numel())
        self.groups: dict[int, Group] = {}
        self.deaths = DeathLog(config)
        self.hang_watch = HangWatch(config.hang_timeout)
        self.exchanges: dict[int, int] = {}  # each group's exchanges, as of the last pull
        self.failure: str | None = None
        self.stopping = False
        self.server: Any = None

    def start(self) -> None:
        pin = NodeAffinitySchedulingStrategy(self.cluster.driver_node, soft=False)
        self.server = ray.remote(ParameterServer).options(num_cpus=0, scheduling_strategy=pin).remote(
            self.shared.params.numpy(), self.shared.total_frames())
        for index, node in enumerate(self.cluster.nodes):
            self._start_group(index, 0, node["NodeID"], node["NodeManagerAddress"], soft=False)
        self.say("Ray: " + ", ".join(f"node group {g.index} ({_count(len(self.shares[g.index]), 'worker')}) on "
                                     f"{g.address} (node {g.node_id[:8]})" for g in self.groups.values())
                 + f"; exchanging every {self.exchange_interval:.3g} s")

    def _start_group(self, index: int, incarnation: int, node_id: str, address: str, soft: bool,
                     cpus: int | None = None) -> None:
        """soft: a replacement on its own node may go elsewhere if that node has no room.
        cpus: what to ask of Ray, one per worker unless told (0 where it shares a node's CPUs)."""
        ray.get(self.server.register.remote(index, incarnation))
        self.exchanges[index] = 0  # the server counts the new incarnation's exchanges from zero
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=soft)
        cpus = len(self.shares[index]) if cpus is None else cpus
        optimizer_state = self.shared.optimizer.state_dict() if incarnation or self.shared.optimizer.steps[0] else None
        actor: Any = ray.remote(NodeGroup).options(
            num_cpus=cpus, max_restarts=0, scheduling_strategy=strategy).remote(
            index, incarnation, self.config, self.shares[index], self.shared.params.numpy(), optimizer_state,
            self.server, self.exchange_interval)
        self.groups[index] = Group(actor, actor.run.remote(), index, incarnation, node_id, address, cpus)

    def poll(self) -> None:
        if self.failure is not None:
            return
        try:
            self._pull()
        except ray.exceptions.RayActorError as error:
            self.failure = f"the Ray parameter server was lost ({_first_line(error)}); the last checkpoint is kept"
            return
        self._check_groups()

    def _pull(self) -> None:
        """The global weights with the frames they were trained for (both at once: the evaluator labels
        its scores with those frames), new messages, the newest optimizer state."""
        params, frames, messages, optimizer_state, self.exchanges = ray.get(self.server.pull.remote())
        self.shared.params.copy_(torch.tensor(params))
        if optimizer_state is not None:
            self.shared.optimizer.load_state_dict(optimizer_state)
        self.shared.set_frames_elsewhere(frames - self.shared.base_frames)
        for message in messages:
            self.handle(message)

    def _check_groups(self) -> None:
        if not self.stopping:  # a group that stopped exchanging (its actor hung) is ended, then replaced
            for group in self.hang_watch.hung(list(self.groups.values()), lambda g: self.exchanges.get(g.index, 0)):
                ray.kill(group.actor)
        refs = [g.done for g in self.groups.values()]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            group = next(g for g in self.groups.values() if g.done == ref)
            unreachable = False  # its node stopped answering: gone, or cut off
            try:
                ray.get(ref)
                if self.shared.budget_reached(self.config) or self.stopping:
                    continue  # finished its part
                reason = "ended early"
            except ray.exceptions.RayActorError as error:
                unreachable = isinstance(error, ray.exceptions.ActorUnavailableError)
                reason = "was lost: its node stopped answering" if unreachable else f"was lost ({_first_line(error)})"
                if group.progress.hung_for is not None:
                    unreachable, reason = False, f"made no progress for {group.progress.hung_for:.0f} s: killed"
            except ray.exceptions.RayTaskError as error:
                reason = f"failed: {_first_line(error)}"
            if self.stopping:
                continue
            ray.kill(group.actor)
            node_alive = not unreachable and self.cluster.node_alive(group.node_id)
            # Ray declares a node dead only after missed heartbeats (about 15 s by default): a
            # replacement that waited on such a node is cancelled then, never having run. That is
            # no new death, only a move.
            never_ran = (not node_alive and group.incarnation > 0
                         and not ray.get(self.server.has_exchanged.remote(group.index)))
            if never_ran:
                self.say(f"node group {group.index}'s replacement never started: node {group.node_id[:8]} "
                         f"({group.address}) is gone")
            else:
                self.say(f"node group {group.index} on {group.address} {reason}")
                self.failure = self.deaths.record()
                if self.failure is not None:
                    return
            if node_alive:
                self._start_group(group.index, group.incarnation + 1, group.node_id, group.address, soft=True)
            elif not self._move_group(group):
                return
            self.say(f"node group {group.index} replaced (incarnation {group.incarnation + 1})")

    def _move_group(self, group: Group) -> bool:
        """Restart a group whose node is gone on the live node with the most CPUs that no group of
        ours holds: asking for one per worker where there are enough, else sharing the node's
        (num_cpus=0) so that the run keeps all its workers. False, with the run's failure set,
        where no node is left."""
        live = {node: place for node, place in self.cluster.live_cpus().items()
                if place[1] >= 1 and node != group.node_id}
        if not live:
            self.failure = "no live Ray node with CPUs is left"
            return False
        held = dict.fromkeys(live, 0)
        for other in self.groups.values():
            if other is not group and other.node_id in held:
                held[other.node_id] += other.cpus
        free = {node: live[node][1] - held[node] for node in live}
        workers = len(self.shares[group.index])
        node = max(free, key=lambda n: free[n])
        cpus = workers if free[node] >= workers else 0
        if not cpus:
            self.say(f"node group {group.index}: no live node has {_count(workers, 'CPU')} free; its workers "
                     f"share those of node {node[:8]} ({live[node][0]})")
        self._start_group(group.index, group.incarnation + 1, node, live[node][0], soft=False, cpus=cpus)
        return True

    def stop(self, timeout: float) -> None:
        """Ask every group to stop, wait for their last exchange, take the final weights."""
        self.stopping = True
        if self.server is None or self.failure is not None:
            return
        try:
            running = [self.groups[index].done for index in ray.get(self.server.request_stop.remote())]
            ray.wait(running, num_returns=len(running), timeout=timeout)
            self._pull()
        except ray.exceptions.RayActorError as error:
            self.failure = f"the Ray parameter server was lost ({_first_line(error)})"

    def close(self) -> None:
        for group in self.groups.values():
            ray.kill(group.actor)
        if self.server is not None:
            ray.kill(self.server)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__

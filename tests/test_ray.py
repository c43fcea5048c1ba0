"""Training on a Ray cluster: a two-node cluster on 127.0.0.1 (ray.cluster_utils.Cluster, one CPU
per node), shared by this module's tests and shut down at its end. Each run is `a3c train --ray`
in a subprocess, as a user would start it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from a3c.api import KEEP_LOOPBACK_ENV
from a3c.logger import read_rows
from tests.conftest import SHARED_PROCESS_ROOTS
from tests.helpers import TrainProcess, wait_until

pytestmark = pytest.mark.slow  # trains, or starts processes: left out by make test-fast

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
CARTPOLE = ["--env-id", "CartPole-v1", "--lr", "1e-3", "--eval-interval", "600", "--eval-episodes", "5",
            "--status-interval", "1", "--checkpoint-interval", "1", "--exchange-interval", "0.05"]


@pytest.fixture(scope="module")
def cluster():
    saved = {k: os.environ.get(k) for k in (KEEP_LOOPBACK_ENV, "RAY_worker_niceness")}
    os.environ[KEEP_LOOPBACK_ENV] = "0"  # keeps Ray on loopback (read at import)
    # Ray starts its workers at niceness 15 unless told: beside another test's busy processes a run's
    # actors then took over a minute each to start, past the hang watch's start-up allowance. At 0,
    # as the README advises for a cluster of one's own; CARTPOLE's exchange interval keeps the actors
    # idle enough not to starve a concurrent test in turn.
    os.environ["RAY_worker_niceness"] = "0"
    ray_utils = pytest.importorskip("ray.cluster_utils", reason="Ray is not installed (pip install 'a3c[ray]')")
    before = {p.pid for p in psutil.Process().children()}
    # Ray declares a node dead after missed health checks (about 15 s by its defaults): sooner here,
    # so that the lost-node test waits less, still with room for a loaded machine.
    health_checks = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000,
                     "health_check_failure_threshold": 5}
    cluster = ray_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False, "_system_config": health_checks})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        roots = {p.pid for p in psutil.Process().children()} - before
        SHARED_PROCESS_ROOTS.update(roots)
        yield cluster
    finally:
        cluster.shutdown()
        _, alive = psutil.wait_procs(_processes(roots), timeout=30)
        SHARED_PROCESS_ROOTS.difference_update(roots)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        assert not alive, f"Ray processes left after the cluster's shutdown: {alive}"


def _processes(pids: set[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return found


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


@contextlib.contextmanager
def _training(args: list[str], cwd: Path) -> Iterator[TrainProcess]:
    """`a3c train ARGS` in a subprocess, ended with all it started if the test fails while it runs."""
    process = TrainProcess(args, cwd)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.kill_all()


def _run(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    with _training(args, cwd) as process:
        code = process.finish(timeout=timeout)
    return code, "\n".join(process.lines)


def _listening_addresses(roots: list[int]) -> set[str]:
    addresses = set()
    for root in roots:
        try:
            tree = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in tree:
            try:
                addresses.update(c.laddr.ip for c in process.net_connections(kind="inet")
                                 if c.status == psutil.CONN_LISTEN)
            except psutil.Error:
                pass
    return addresses


@pytest.fixture(scope="module")
def ray_run(cluster, tmp_path_factory):
    """A CartPole run over both nodes, one worker on each: the run the resume tests continue."""
    runs = tmp_path_factory.mktemp("ray-runs")
    code, output = _run(["--ray", cluster.address, "--nodes", "2", "--workers", "2", "--total-frames", "100000",
                         "--eval-every-frames", "25000", "--runs-dir", str(runs), "--run-name", "two-nodes",
                         *CARTPOLE], runs)
    return runs / "two-nodes", code, output


def test_trains_on_both_nodes_past_a_random_policy(ray_run):
    run_dir, code, output = ray_run
    assert code == 0, output
    placed = re.search(r"Ray: node group 0 \(1 worker\) on 127\.0\.0\.1 \(node (\w+)\), "
                       r"node group 1 \(1 worker\) on 127\.0\.0\.1 \(node (\w+)\)", output)
    assert placed and placed.group(1) != placed.group(2), output  # two groups, two distinct nodes
    episodes = read_rows(run_dir / "train_episodes.csv")
    assert {row["worker"] for row in episodes} == {"0", "1"}  # each node's worker played
    # A random policy scores about 22; this run evaluates at 150 or more by about 55,000 frames here.
    best = max(float(row["mean_reward"]) for row in read_rows(run_dir / "evaluations.csv"))
    assert best >= 150, output
    checkpoint = _checkpoint(run_dir)
    assert checkpoint["frames"] >= 100_000
    assert checkpoint["episodes"] == len(episodes)  # every episode counted once
    assert torch.as_tensor(checkpoint["optimizer"]["state"][0]["step"]) > 0  # a node's Adam came back


def test_resumes_a_ray_checkpoint_locally_and_on_ray(cluster, ray_run):
    run_dir, code, _ = ray_run
    assert code == 0
    frames_before = _checkpoint(run_dir)["frames"]
    code, output = _run(["--resume", str(run_dir), "--total-frames", str(frames_before + 5_000)], run_dir.parent)
    assert code == 0, output
    assert f"at {frames_before:,} frames" in output
    local = _checkpoint(run_dir)
    assert local["frames"] >= frames_before + 5_000
    code, output = _run(["--resume", str(run_dir), "--ray", cluster.address, "--total-frames",
                         str(local["frames"] + 5_000)], run_dir.parent)
    assert code == 0, output
    assert "Ray: node group 0" in output and "node group 1" in output  # every live node by default
    resumed = _checkpoint(run_dir)
    assert resumed["frames"] >= local["frames"] + 5_000
    assert resumed["episodes"] == len(read_rows(run_dir / "train_episodes.csv"))


def test_killed_and_stopped_node_groups_are_replaced_and_sigint_leaves_the_cluster_up(cluster, tmp_path):
    with _training(["--ray", cluster.address, "--workers", "2", "--total-frames", "100000000", "--hang-timeout", "10",
                    "--runs-dir", str(tmp_path), "--run-name", "killed", *CARTPOLE], tmp_path) as process:
        process.wait_for(r"frames [1-9][\d,]*/")  # training has started
        killed, stopped = _both_node_groups()
        their_workers = killed.children(recursive=True) + stopped.children(recursive=True)
        # Nothing listens outside loopback: the cluster, the driver, the node groups.
        assert _listening_addresses([*SHARED_PROCESS_ROOTS, process.process.pid]) <= set(LOOPBACK)
        killed.kill()
        process.wait_for(r"node group \d on 127\.0\.0\.1 was lost")
        process.wait_for(r"node group \d replaced")
        process.wait_for(r"node group \d: incarnation 1 running on node \w+")
        stopped.suspend()  # SIGSTOP: alive, and no exchange any more
        process.wait_for(r"node group \d on 127\.0\.0\.1 made no progress for \d+ s: killed")
        process.wait_for(r"node group \d replaced")
        replaced_at = _frames(process.wait_for(r"frames ([\d,]+)/"))
        while _frames(process.wait_for(r"frames ([\d,]+)/")) < replaced_at + 5_000:
            pass  # both replacements train
        os.kill(process.process.pid, signal.SIGINT)
        code = process.finish(timeout=120)
    output = "\n".join(process.lines)
    assert code == 130, output
    assert "Traceback" not in output
    _, alive = psutil.wait_procs([killed, stopped, *their_workers], timeout=30)  # the lost groups' workers saw them go
    assert not alive
    run_dir = tmp_path / "killed"
    checkpoint = _checkpoint(run_dir)
    assert checkpoint["frames"] >= replaced_at + 5_000
    assert checkpoint["episodes"] == len(read_rows(run_dir / "train_episodes.csv"))
    assert all(node.remaining_processes_alive() for node in cluster.list_all_nodes())  # the user's cluster


def test_a_lost_node_s_group_moves_to_a_live_node(cluster, tmp_path):
    """A whole node goes (its raylet and every process on it killed): its group is restarted on a
    node that lives, sharing that node's CPU since none is free, and trains there."""
    extra = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    lost_node = extra.node_id
    try:
        with _training(["--ray", cluster.address, "--nodes", "3", "--workers", "3", "--total-frames", "10000000",
                        "--runs-dir", str(tmp_path), "--run-name", "node-lost", *CARTPOLE], tmp_path) as process:
            placed = process.wait_for(r"^Ray: .*node group (\d) \(1 worker\) on [\d.]+ \(node " + lost_node[:8])
            lost_group = int(placed.group(1))  # one worker per group: its worker has the group's number
            process.wait_for(r"frames [1-9][\d,]*/")  # training has started
            raylet = psutil.Process(extra.all_processes["raylet"][0].process.pid)
            on_node = raylet.children(recursive=True)
            cluster.remove_node(extra, allow_graceful=False)
            extra = None
            process.wait_for(rf"node group {lost_group} on 127\.0\.0\.1 was lost")  # its node stopped answering
            process.wait_for(rf"node group {lost_group}: no live node has 1 CPU free; its workers share")
            process.wait_for(rf"node group {lost_group} replaced")
            moved = process.wait_for(rf"node group {lost_group}: incarnation \d running on node (\w+)")
            moved_at = _frames(process.wait_for(r"frames ([\d,]+)/"))
            while _frames(process.wait_for(r"frames ([\d,]+)/")) < moved_at + 20_000:
                pass
            # Its worker's episodes reach the run's CSV a node exchange later than the others', the
            # first of them after the replacement's start-up on a shared CPU: wait for one (a row
            # still being written, without its last field, is not one yet).
            episodes_path = tmp_path / "node-lost" / "train_episodes.csv"
            wait_until(lambda: any(e.get("time") and int(e["worker"]) == lost_group and int(e["frames"]) > moved_at
                                   for e in read_rows(episodes_path)),
                       120, f"an episode of node group {lost_group}'s worker after the move")
            os.kill(process.process.pid, signal.SIGINT)
            code = process.finish(timeout=120)
    finally:
        if extra is not None:
            cluster.remove_node(extra)
    output = "\n".join(process.lines)
    assert code == 130, output
    assert not lost_node.startswith(moved.group(1))
    _, alive = psutil.wait_procs(on_node, timeout=30)  # the lost node's group and workers went with it
    assert not alive
    run_dir = tmp_path / "node-lost"
    episodes = read_rows(run_dir / "train_episodes.csv")
    assert any(int(e["worker"]) == lost_group and int(e["frames"]) > moved_at for e in episodes)  # trains again
    checkpoint = _checkpoint(run_dir)
    assert checkpoint["frames"] >= moved_at + 20_000
    assert checkpoint["episodes"] == len(episodes)


def _frames(status: re.Match) -> int:
    return int(status.group(1).replace(",", ""))


def _ray_processes(prefix: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith(prefix)]


def _both_node_groups() -> list[psutil.Process]:
    """The two node groups' actor processes, once both exist: one group can train before the
    other's actor has started."""
    wait_until(lambda: len(_ray_processes("ray::NodeGroup")) == 2, 60, "both node groups' actors")
    return _ray_processes("ray::NodeGroup")


def test_losing_the_parameter_server_ends_the_run_with_one_error_and_a_resumable_checkpoint(cluster, tmp_path):
    with _training(["--ray", cluster.address, "--workers", "2", "--total-frames", "10000000",
                    "--eval-every-frames", "20000", "--runs-dir", str(tmp_path), "--run-name", "lost",
                    *CARTPOLE], tmp_path) as process:
        latest = tmp_path / "lost" / "checkpoints" / "latest.pt"
        wait_until(lambda: latest.exists() and _checkpoint(tmp_path / "lost")["frames"] > 0, 120,
                   "a checkpoint of trained weights")  # written atomically: never read half-written
        servers = _ray_processes("ray::ParameterServer")
        assert len(servers) == 1, servers
        servers[0].kill()
        code = process.finish(timeout=120)
    output = "\n".join(process.lines)
    assert code == 1, output
    assert "error: the Ray parameter server was lost" in output
    assert "Traceback" not in output
    assert _checkpoint(tmp_path / "lost")["frames"] > 0
    code, output = _run(["--resume", str(tmp_path / "lost"), "--total-frames", "1"], tmp_path)  # resumable
    assert code == 0, output


def test_a_killed_driver_takes_its_node_groups_and_workers_with_it(cluster, tmp_path):
    with _training(["--ray", cluster.address, "--workers", "2", "--total-frames", "10000000",
                    "--runs-dir", str(tmp_path), "--run-name", "driver", *CARTPOLE], tmp_path) as process:
        process.wait_for(r"frames [1-9][\d,]*/")
        groups = _both_node_groups()
        workers = [child for group in groups for child in group.children(recursive=True)]
        assert workers
        evaluator = psutil.Process(process.process.pid).children()
        process.process.kill()
        process.finish(timeout=60)
        # Ray ends the actors of a driver that is gone; their workers and the evaluator see their parent go.
        _, alive = psutil.wait_procs([*groups, *workers, *evaluator], timeout=60)
        assert not alive, [p.pid for p in alive]
    assert all(node.remaining_processes_alive() for node in cluster.list_all_nodes())


def test_a_local_ray_instance_is_shut_down_at_the_end(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'a3c[ray]')")
    monkeypatch.delenv(KEEP_LOOPBACK_ENV, raising=False)  # the trainer keeps loopback itself
    with _training(["--ray", "--workers", "1", "--total-frames", "2000000", "--runs-dir", str(tmp_path),
                    "--run-name", "local", *CARTPOLE], tmp_path) as process:
        process.wait_for(r"frames [1-9][\d,]*/")
        started = psutil.Process(process.process.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in started)
        assert re.search(r"Ray: node group 0 \(1 worker\) on 127\.0\.0\.1", "\n".join(process.lines))
        assert _listening_addresses([process.process.pid]) <= set(LOOPBACK)
        os.kill(process.process.pid, signal.SIGTERM)
        code = process.finish(timeout=120)
    assert code == 143, "\n".join(process.lines)
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [p.cmdline() for p in alive]


def _a3c(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "a3c", "train", *args], cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=timeout)


def test_more_nodes_than_the_cluster_has_is_one_line(cluster, tmp_path):
    result = _a3c(["--ray", cluster.address, "--nodes", "3", "--workers", "3", "--env-id", "CartPole-v1",
                   "--runs-dir", str(tmp_path)], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("a3c: error: --nodes 3: the Ray cluster has 2 live nodes "
                                                      "with CPUs")
    assert not any(tmp_path.iterdir())  # no run directory


def test_an_address_where_nothing_listens_is_one_line_at_once(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'a3c[ray]')")
    with socket.socket() as probe:  # a loopback port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    result = _a3c(["--ray", f"127.0.0.1:{port}", "--env-id", "CartPole-v1", "--runs-dir", str(tmp_path)], tmp_path)
    assert time.monotonic() - start < 20  # the interpreter's start and imports: nothing waits for an answer
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (f"a3c: error: no Ray cluster answered at 127.0.0.1:{port} (Connection refused; start one there with "
        "`ray start --head --port PORT`, or leave out the address to run on this machine)")], result.stderr


def test_without_ray_installed_it_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from a3c.cli import main; "
            "sys.exit(main(['train', '--ray', '--env-id', 'CartPole-v1', '--runs-dir', sys.argv[1]]))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "a3c: error: training on Ray needs the ray package: pip install 'a3c[ray]'"


def test_a_node_runs_its_share_of_the_workers_at_the_learning_rate_momentum_and_clip_of_all(monkeypatch):
    monkeypatch.setenv(KEEP_LOOPBACK_ENV, "0")  # read when ray is first imported
    ray_cluster = pytest.importorskip("a3c.ray_cluster", reason="Ray is not installed (pip install 'a3c[ray]')")
    from a3c.config import Config

    for cluster_config in (Config(workers=16), Config(workers=16, lr=5e-4, adam_beta1=0.9)):
        node = ray_cluster.node_config(cluster_config, 8)
        assert node.workers == 8
        assert node.lr == node.learning_rate == cluster_config.learning_rate
        assert node.adam_betas == cluster_config.adam_betas  # the momentum of 16 workers, not of 8
        assert node.further_pass_clip == cluster_config.further_pass_clip  # and their clip


def test_a_node_s_optimizer_forgets_as_fast_per_cluster_update_as_one_machine_s(monkeypatch):
    monkeypatch.setenv(KEEP_LOOPBACK_ENV, "0")  # read when ray is first imported
    ray_cluster = pytest.importorskip("a3c.ray_cluster", reason="Ray is not installed (pip install 'a3c[ray]')")

    assert ray_cluster.node_decay_power(4, 4) == 1  # one node: as locally
    assert ray_cluster.node_decay_power(2, 1) == 2  # one of two nodes steps every other update
    assert ray_cluster.node_decay_power(16, 4) == 4


def test_a_replacement_group_s_heartbeat_counts_from_zero(monkeypatch):
    """A replaced group's exchanges are not its replacement's: the driver's hang watch gives the new
    incarnation its start-up allowance until it exchanges itself."""
    monkeypatch.setenv(KEEP_LOOPBACK_ENV, "0")  # read when ray is first imported
    ray_cluster = pytest.importorskip("a3c.ray_cluster", reason="Ray is not installed (pip install 'a3c[ray]')")
    import numpy as np

    server = ray_cluster.ParameterServer(np.zeros(3, dtype=np.float32), 0)
    server.register(0, 0)
    for _ in range(3):
        assert server.exchange(0, 0, np.ones(3, dtype=np.float32), 10, [], None) is not None
    assert server.pull()[-1] == {0: 3}
    server.register(0, 1)
    assert server.pull()[-1] == {0: 0}
    assert not server.has_exchanged(0)
    assert server.exchange(0, 0, np.ones(3, dtype=np.float32), 10, [], None) is None  # the old one is refused
    assert server.pull()[-1] == {0: 0}
    assert server.exchange(0, 1, np.ones(3, dtype=np.float32), 10, [], None) is not None
    assert server.pull()[-1] == {0: 1}


def test_the_actors_take_back_the_priority_ray_starts_them_at(tmp_path):
    """Ray starts its workers at niceness 15: the parameter server (and a node group) lowers its own to
    0 where the system allows it, and where it does not, says how to start Ray instead."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'a3c[ray]')")
    code = ("import os, numpy as np; from a3c.ray_cluster import ParameterServer; "
            "server = ParameterServer(np.zeros(3, dtype=np.float32), 0); "
            "print(os.getpriority(os.PRIO_PROCESS, 0)); print([m.text for m in server.messages])")

    def start_at_15(*privileges: str) -> tuple[str, str]:
        result = subprocess.run([*privileges, "nice", "-n", "15", sys.executable, "-c", code], cwd=tmp_path,
                                env={**os.environ, KEEP_LOOPBACK_ENV: "0"}, capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        niceness, notes = result.stdout.splitlines()
        return niceness, notes

    def refused(niceness: str, notes: str) -> bool:
        return (niceness == "15" and "the parameter server runs at niceness 15" in notes
                and "RAY_worker_niceness=0" in notes)

    if os.geteuid() != 0:  # a user may raise its niceness, not lower it
        assert refused(*start_at_15())
        return
    assert start_at_15() == ("0", "[]")
    if shutil.which("setpriv"):  # root without the capability to lower it
        assert refused(*start_at_15("setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice"))

"""Recording evaluation episodes as MP4 files that play at the game's own speed.

Atari games are recorded frame by frame from the emulator (60 frames per second, every skipped
frame included); other environments record env.render() once per step at their render_fps.
OpenCV, already a dependency, writes the files (MPEG-4 Part 2, 'mp4v').
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import cv2
import gymnasium as gym
import numpy as np

from a3c.checkpoint import RunWriteError, write_failure, writing
from a3c.envs import AtariEnv

ATARI_FPS = 60
MIN_FREE_BYTES = 1 << 20  # less room than this after a video was written: it was cut short


def _rgb(env: gym.Env) -> np.ndarray | None:
    frame = env.render()  # an rgb_array environment renders one RGB array
    return frame if isinstance(frame, np.ndarray) else None


def _video_failure(path: Path) -> str:
    if shutil.disk_usage(path.parent).free < MIN_FREE_BYTES:
        return write_failure(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    return f"cannot write {path}: OpenCV could not write the video"


class VideoRecorder:
    """Pass `on_step` to evaluate_policy as its on_frame: one file per episode under `directory`."""

    def __init__(self, env: gym.Env, directory: str | Path, prefix: str = "episode", scale: int = 2) -> None:
        self.env = env
        self.directory = Path(directory)
        with writing(self.directory):
            self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix, self.scale = prefix, scale
        self.atari_env = env.unwrapped if isinstance(env.unwrapped, AtariEnv) else None
        self.atari = self.atari_env is not None
        self.fps = ATARI_FPS if self.atari else int(env.metadata.get("render_fps", 30))
        self.episode: int | None = None
        self.writer: cv2.VideoWriter | None = None
        self.paths: list[Path] = []
        self.frames: list[int] = []
        if self.atari_env is not None:  # every emulator frame, not just the one the agent sees
            self.atari_env.on_emulator_frame = self._add

    def on_step(self, episode: int, env: gym.Env) -> None:
        if episode != self.episode:
            self._open(episode)
            self._add(_rgb(env))  # the first frame after reset
        elif not self.atari:
            self._add(_rgb(env))

    def _open(self, episode: int) -> None:
        self._finish()
        self.episode = episode
        self.paths.append(self.directory / f"{self.prefix}-{episode:03d}.mp4")
        self.frames.append(0)

    def _add(self, rgb: np.ndarray | None) -> None:
        if rgb is None or self.episode is None:
            return
        if self.scale != 1:
            rgb = cv2.resize(rgb, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_NEAREST)
        if self.writer is None:
            height, width = rgb.shape[:2]
            self.writer = cv2.VideoWriter(str(self.paths[-1]), cv2.VideoWriter.fourcc(*"mp4v"), self.fps,
                                          (width, height))
            if not self.writer.isOpened():
                self.writer = None
                raise RunWriteError(_video_failure(self.paths[-1]))
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames[-1] += 1

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            path = self.paths[-1]
            # OpenCV reports no failed write: a missing or empty file, or a full disk, tells.
            if not path.exists() or path.stat().st_size == 0 or shutil.disk_usage(path.parent).free < MIN_FREE_BYTES:
                raise RunWriteError(_video_failure(path))

    def close(self) -> None:
        self._finish()
        if self.atari_env is not None:
            self.atari_env.on_emulator_frame = None

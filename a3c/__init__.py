"""a3c: a truly asynchronous Hogwild A3C trainer.

The Python API: `Config` (every setting), `train` and `resume` (a run), `Policy` (a checkpoint
loaded for acting and evaluation). They load torch, so they are imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Config", "Policy", "RunResult", "resume", "train"]


def __getattr__(name: str) -> Any:
    # Lazily: `a3c plot` and `a3c --help` start without torch.
    if name == "Config":
        from a3c.config import Config

        return Config
    if name in ("Policy", "RunResult", "resume", "train"):
        from a3c import api

        return getattr(api, name)
    raise AttributeError(f"module 'a3c' has no attribute {name!r}")

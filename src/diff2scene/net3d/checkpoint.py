"""Training checkpoints as safetensors: weights, optimizer state, step, loss history, config.

Nothing is pickled: tensors go in as tensors (``model.*``, ``optim.<param>.<name>``,
``history.loss``), everything else as JSON strings in the file's metadata. A checkpoint holds
all that :func:`diff2scene.net3d.train.train` needs to continue the same run bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from diff2scene.errors import DataFormatError

CHECKPOINT_FORMAT = "diff2scene.net3d.checkpoint"
CHECKPOINT_VERSION = "1"


@dataclass
class Checkpoint:
    """The contents of one checkpoint file."""

    model_state: dict[str, torch.Tensor]
    #: ``torch.optim.Optimizer.state_dict()`` form, or None for a weights-only file.
    optimizer_state: dict[str, Any] | None
    #: The training config as a plain mapping (``diff2scene.config.to_dict``).
    config: dict[str, Any]
    step: int = 0
    epoch: int = 0
    #: Loss of every optimisation step so far (all ranks averaged).
    losses: list[float] = field(default_factory=list)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in ckpt.model_state.items()
    }
    meta: dict[str, str] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": json.dumps(ckpt.config),
        "step": str(ckpt.step),
        "epoch": str(ckpt.epoch),
    }
    tensors["history.loss"] = torch.tensor(ckpt.losses, dtype=torch.float64)
    if ckpt.optimizer_state is not None:
        for pid, state in ckpt.optimizer_state["state"].items():
            for name, value in state.items():
                t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
                tensors[f"optim.{pid}.{name}"] = t.detach().cpu().contiguous()
        meta["param_groups"] = json.dumps(ckpt.optimizer_state["param_groups"])
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint; anything unreadable or foreign raises DataFormatError."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DataFormatError(f"{path}: not a readable checkpoint: {exc}") from exc
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
        raise DataFormatError(f"{path}: not a {CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION} file")
    try:
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        optimizer_state: dict[str, Any] | None = None
        if "param_groups" in meta:
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith("optim."):
                    _, pid, name = key.split(".", 2)
                    state.setdefault(int(pid), {})[name] = value
            optimizer_state = {"state": state, "param_groups": json.loads(meta["param_groups"])}
        return Checkpoint(
            model_state=model_state,
            optimizer_state=optimizer_state,
            config=json.loads(meta["config"]),
            step=int(meta["step"]),
            epoch=int(meta["epoch"]),
            losses=tensors["history.loss"].tolist(),
        )
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: incomplete checkpoint: {exc}") from exc

"""Atomic safetensors checkpoints with JSON metadata, and clear errors for corrupt files."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

FORMAT = "foundry-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the model it is loaded into."""


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write tensors + JSON metadata to `path` atomically (write a temp file, fsync, rename).

    The metadata is stored inside the safetensors header (so model and metadata can never disagree)
    and copied next to it as `<name>.json` for people to read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "meta": json.dumps(meta, default=str)}
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(clean, tmp, metadata=header)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    sidecar = path.with_suffix(".json")
    tmp_json = sidecar.with_name(sidecar.name + ".tmp")
    tmp_json.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp_json, sidecar)
    return path


def read_meta(path: str | Path) -> dict:
    """Metadata of a checkpoint without loading its tensors."""
    path = _check_exists(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors checkpoint: {e}") from None
    return _parse_header(path, header)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a checkpoint written by :func:`save_checkpoint`."""
    meta = read_meta(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt (tensor data unreadable): {e}") from None
    return tensors, meta


def _check_exists(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def _parse_header(path: Path, header: dict) -> dict:
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a Foundry checkpoint (format {header.get('format')!r}, "
                              f"expected {FORMAT!r})")
    try:
        return json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} has corrupt metadata: {e}") from None


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Sub-dictionary of the tensors under `prefix.` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def add_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with a readable CheckpointError on missing/unexpected keys or shape mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}")
        if wrong:
            detail.append("shape mismatch " + ", ".join(
                f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:3]))
        raise CheckpointError(f"{what} does not fit the model: " + "; ".join(detail))
    module.load_state_dict(state)

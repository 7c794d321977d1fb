"""Atomic safetensors checkpoints with JSON metadata, and clear errors for corrupt files.

Integrity: the header carries a sha256 of the tensor data (names, dtypes, shapes and bytes, in name
order), checked on every load, so one flipped bit anywhere in the data is an error, not a silently
different model; and no checkpoint with a NaN / Inf floating-point tensor is ever written or loaded.
Files written before the digest existed load with the finiteness check only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

FORMAT = "foundry-checkpoint/1"
DIGEST_KEY = "tensors_sha256"

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the model it is loaded into."""


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (CPU tensors)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an Inf, each with its count."""
    bad = []
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad.append(f"{name} ({int((~torch.isfinite(t)).sum())} of {t.numel()})")
    return bad


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    bad = non_finite_tensors(tensors)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"{what} has non-finite (NaN / Inf) weights in {', '.join(bad[:3])}{more}")


def remove_stale_temp_files(path: str | Path, older_than_s: float = 0.0) -> list[Path]:
    """Delete the temporary files that an interrupted save_checkpoint(path) left next to it
    (`<name>.*.tmp`, e.g. after kill -9 mid-write); returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    now = time.time()
    for tmp in path.parent.glob(path.name + ".*.tmp"):
        try:
            if now - tmp.stat().st_mtime >= older_than_s:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue
    if removed:
        log.warning("removed %d temporary file(s) of an interrupted checkpoint write: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write tensors + JSON metadata to `path` atomically (write a temp file, fsync, rename).

    The metadata is stored inside the safetensors header (so model and metadata can never disagree)
    and copied next to it as `<name>.json` for people to read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _check_finite(clean, f"refusing to write {path}: the model")
    header = {"format": FORMAT, "meta": json.dumps(meta, default=str), DIGEST_KEY: tensors_digest(clean)}
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


def _read_header(path: str | Path) -> tuple[Path, dict]:
    path = _check_exists(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors checkpoint: {e}") from None
    return path, header


def read_meta(path: str | Path) -> dict:
    """Metadata of a checkpoint without loading its tensors."""
    path, header = _read_header(path)
    return _parse_header(path, header)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a checkpoint written by :func:`save_checkpoint`; its data checksum (when
    it has one) and the finiteness of its weights are checked (CheckpointError otherwise)."""
    path, header = _read_header(path)
    meta = _parse_header(path, header)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt (tensor data unreadable): {e}") from None
    expected = header.get(DIGEST_KEY)
    if expected is not None and tensors_digest(tensors) != expected:
        raise CheckpointError(f"{path} is corrupt: its tensor data does not match the checksum written with it "
                              "(damaged on disk or in transfer); use an intact copy")
    _check_finite(tensors, str(path))
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
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

"""Training features shared by every process of a run on one machine: a folder of files.

Under `flwr run` a client is not pinned to a process (a Ray actor, or a deployment
SuperNode's ClientApp process): its next round may land on a process that never saw it, whose
in-memory `FeatureCache` misses. Below that first level, every process of the run on this
machine reads and writes one folder, so each sample passes the frozen encoder once per task
per machine, whichever process serves its client.

Where: `<system temp dir>/multifcl-features-<uid>/run-<Flower run id>-<scope>/`, on the
clients' machine (a run folder lives on the server's machine, which in a deployment is
another one; `TMPDIR` moves it). `scope` digests what a run shares on a machine and
`FeatureKey` does not name: the run config, the torch version, the device, the thread count
and the backbone's weights; an entry's name is its `FeatureKey` (the exact images and
labels, the encoder with its adapter weights, the task). A wrong hit needs a digest collision.

Size: a lookup removes the entries its predicate rejects (other tasks, stale encoders), so a
run keeps at most the current task's features of this machine's clients. The ServerApp
removes its run's folders when the run ends (in simulation the clients share its machine);
a process that opens a store removes every other run's folder that no live process holds
(each process keeps a shared `flock` on its folder's `.lock` for its lifetime, which the
kernel drops when the process dies, kill -9 included).

Safety: an entry is written to a temporary file and renamed over its name, so a reader sees
a whole file or none; each file carries its key, its size and a digest of its payload, and
one that does not check out (truncated, corrupt, another format) is a miss, removed and
recomputed. Several writers of one key write the same bytes; the last rename wins.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from multifcl.atomic_files import replace_atomically
from multifcl.features.cache import FeatureKey, Features

if TYPE_CHECKING:
    from multifcl.methods.base import Method

logger = logging.getLogger(__name__)
MAGIC = b"MFCLFT01"  # format and version of an entry file
ALIGN = 64  # header and every tensor start at a multiple of this many bytes
SUFFIX = ".features"
LOCK = ".lock"
UNLOCKED_GRACE_SECONDS = 60  # a folder without a lock this old is an abandoned one
_NAME_PART = re.compile(r"[0-9A-Za-z_]+")


def machine_root() -> Path:
    """The folder under which this user's runs share features on this machine."""
    return Path(tempfile.gettempdir()) / f"multifcl-features-{os.getuid()}"


class SharedFeatureStore:
    """One run's feature files on this machine; held (shared lock) while this object lives.

    Parameters
    ----------
    folder : Path
        The run's folder (created if missing); its `.lock` is held until `close`.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        lock = _hold_shared_lock(folder)
        # released when the store is collected, or at exit (a finalizer, unlike __del__,
        # still has `os` while the interpreter shuts down)
        self._release = weakref.finalize(self, os.close, lock) if lock is not None else None
        self._write_failed = False

    def close(self) -> None:
        if self._release is not None:
            self._release()

    def get(self, key: FeatureKey) -> Features | None:
        """The entry's features, or None when it is absent or does not check out."""
        path = self._path(key)
        if path is None:
            return None
        try:
            raw = np.fromfile(path, dtype=np.uint8)
        except OSError:  # absent (never written, or removed as stale)
            return None
        try:
            return _decode(raw, key)
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as error:
            logger.warning("feature store: %s does not check out (%s); recomputed", path, error)
            path.unlink(missing_ok=True)
            return None

    def holds(self, key: FeatureKey) -> bool:
        path = self._path(key)
        return path is not None and path.exists()

    def put(self, key: FeatureKey, features: Features) -> None:
        """Write the entry (atomically); a store that cannot be written is skipped, once
        said, and the run goes on from memory."""
        path = self._path(key)
        if path is None or self._write_failed:
            return
        try:
            replace_atomically(path, lambda stream: _encode(stream, key, features))
        except OSError as error:
            self._write_failed = True
            logger.warning("feature store %s not writable (%s): not shared", self.folder, error)

    def keep_only(self, keep: Callable[[FeatureKey], bool]) -> None:
        """Remove every entry whose key `keep` rejects."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            key = _key_of(name)
            if key is not None and not keep(key):
                (self.folder / name).unlink(missing_ok=True)

    def _path(self, key: FeatureKey) -> Path | None:
        """The entry's file; None for a key whose parts cannot name a file."""
        if not (_NAME_PART.fullmatch(key.data) and _NAME_PART.fullmatch(key.encoder)):
            return None
        return self.folder / f"{key.task}-{key.encoder}-{key.data}{SUFFIX}"


def _key_of(name: str) -> FeatureKey | None:
    if not name.endswith(SUFFIX):
        return None
    parts = name[: -len(SUFFIX)].split("-")
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    return FeatureKey(parts[2], parts[1], int(parts[0]))


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def _tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _encode(stream: BinaryIO, key: FeatureKey, features: Features) -> None:
    """MAGIC | header length (8 bytes) | JSON header | payload; header and tensors aligned."""
    payloads = [_tensor_bytes(tensor) for tensor in features]
    tensors, offset = [], 0
    digest = hashlib.blake2b(digest_size=16)
    for tensor, payload in zip(features, payloads):
        tensors.append([str(tensor.dtype), list(tensor.shape), offset, payload.nbytes])
        offset = _aligned(offset + payload.nbytes)
        digest.update(payload)
        digest.update(_padding(payload.nbytes))  # the digest covers every payload byte
    header = {"key": [key.data, key.encoder, key.task], "tensors": tensors, "payload": offset}
    header["blake2b"] = digest.hexdigest()
    text = json.dumps(header).encode()
    stream.write(MAGIC + len(text).to_bytes(8, "little") + text)
    stream.write(_padding(len(MAGIC) + 8 + len(text)))
    for payload in payloads:
        stream.write(memoryview(payload))
        stream.write(_padding(payload.nbytes))


def _padding(end: int) -> bytes:
    """The zero bytes from `end` to the next aligned offset."""
    return bytes(_aligned(end) - end)


def _decode(raw: np.ndarray, key: FeatureKey) -> Features:
    """The features in `raw`; raises ValueError unless magic, key, size and digest all hold."""
    start = len(MAGIC) + 8
    if raw.nbytes < start or raw[: len(MAGIC)].tobytes() != MAGIC:
        raise ValueError("not an entry of this format")
    length = int.from_bytes(raw[len(MAGIC) : start].tobytes(), "little")
    header = json.loads(raw[start : start + length].tobytes())
    if header["key"] != [key.data, key.encoder, key.task]:
        raise ValueError(f"holds key {header['key']}")
    begin = _aligned(start + length)
    payload = raw[begin:]
    if payload.nbytes != header["payload"]:
        raise ValueError(f"{payload.nbytes} payload bytes, the header says {header['payload']}")
    if hashlib.blake2b(payload, digest_size=16).hexdigest() != header["blake2b"]:
        raise ValueError("payload digest differs")
    features = []
    for dtype_name, shape, offset, nbytes in header["tensors"]:
        dtype = getattr(torch, dtype_name.removeprefix("torch."))
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"unknown dtype {dtype_name!r}")
        chunk = torch.from_numpy(payload[offset : offset + nbytes])
        features.append(chunk.view(dtype).reshape(shape))
    return features


# --- a run's folder: scope, liveness, clean-up ---------------------------------------------


def run_scope(method: Method) -> str:
    """A digest of what a run's processes on one machine share beyond `FeatureKey`."""
    backbone = method.backbone
    digest = hashlib.blake2b(digest_size=8)
    config = sorted(method.config.to_run_config().items())
    device = backbone.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    for part in (repr(config), torch.__version__, name, str(torch.get_num_threads())):
        digest.update(part.encode() + b"\0")
    for key, value in backbone.state_dict().items():  # the method's adapters live elsewhere
        digest.update(key.encode() + b"\0")
        digest.update(_tensor_bytes(value))
    return digest.hexdigest()


def share_features_on_this_machine(method: Method, run_id: int) -> None:
    """Give the method's training-feature cache (if any) run `run_id`'s store on this
    machine, once per process and run; other runs' abandoned folders are removed first."""
    cache = method.feature_cache
    if cache is None or not method.config.cache_features:
        return
    held = cache.shared_store
    if held is not None and held.folder.name.startswith(f"run-{run_id}-"):
        return
    if held is not None:
        held.close()
        cache.shared_store = None
    root = machine_root()
    remove_abandoned_runs(root)
    try:
        cache.shared_store = SharedFeatureStore(root / f"run-{run_id}-{run_scope(method)}")
    except OSError as error:
        logger.warning("no feature store under %s (%s): features not shared", root, error)


def remove_run_stores(run_id: int, root: Path | None = None) -> None:
    """Remove run `run_id`'s folders on this machine (the run ended)."""
    root = machine_root() if root is None else root
    for folder in root.glob(f"run-{run_id}-*"):
        shutil.rmtree(folder, ignore_errors=True)


def remove_abandoned_runs(root: Path) -> None:
    """Remove the run folders under `root` that no live process holds."""
    try:
        folders = [entry for entry in root.iterdir() if entry.name.startswith("run-")]
    except OSError:
        return
    for folder in folders:
        try:
            handle = os.open(folder / LOCK, os.O_RDWR)
        except FileNotFoundError:  # being created, or abandoned before its lock existed
            if _age_seconds(folder) > UNLOCKED_GRACE_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(folder, ignore_errors=True)  # removed while held: no one joins it
        except BlockingIOError:
            pass  # a live process holds it
        finally:
            os.close(handle)


def _age_seconds(folder: Path) -> float:
    try:
        return time.time() - folder.stat().st_mtime
    except OSError:
        return 0.0


def _hold_shared_lock(folder: Path, attempts: int = 3) -> int:
    """A descriptor holding a shared lock on `folder`'s lock file; retried when a sweeper
    removed the folder between its creation and the lock."""
    for _ in range(attempts):
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(handle, fcntl.LOCK_SH)
        try:
            if os.stat(folder / LOCK).st_ino == os.fstat(handle).st_ino:
                return handle
        except FileNotFoundError:
            pass
        os.close(handle)
    raise OSError(f"could not hold {folder / LOCK}")

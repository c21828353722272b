"""The teacher-target store: content images, their Gatys targets, and how they were made.

Students learn from (content, teacher target) pairs. Producing a target costs minutes of
L-BFGS per image, so targets are generated once, by many processes if need be, and kept
in a store that survives ``kill -9``, reruns and config changes. This module is the store
and its read API; :mod:`distill.targets.generation` fills it, :mod:`distill.targets.manifest`
reads and writes the manifests and :mod:`distill.targets.pairs` serves the training pairs.

On-disk layout (all paths below are relative to the store root, so a store can be moved)::

    store.json                                  format marker and version
    configs/<config_hash>.json                  one per teacher config: the TeacherConfig dict
                                                (distill.core.config.to_dict), the style hashes, the
                                                style copies' file names, original names and PNG hashes,
                                                and the SHA-256 of a loss-network weights file
    styles/<style_hash>.png                     8-bit PNG copy of each style image (the teacher and
                                                TargetStore.build_criterion both read this copy)
    contents/<content_hash>_<size>.png          8-bit PNG of the exact content tensor the teacher
                                                started from, at the teacher's size (long side)
    targets/<config_hash>/<content_hash>.png    8-bit PNG of the teacher's result
    traces/<config_hash>/<content_hash>.json    the teacher's loss trace (kept out of the manifest so
                                                that listing 100k entries stays fast)
    manifest/<config_hash>/<writer>.jsonl       one JSON line per finished target; one file per
                                                writer process (<writer> = <shard>-<pid>-<uuid>)
    locks/<config_hash>/<content_hash>.lock     empty files for advisory locks (fcntl.flock) that keep
                                                two overlapping writers off the same target; each
                                                exists only while its target is being computed

Hashes: ``content_hash`` and ``style_hash`` are the SHA-256 of the original file bytes;
``config_hash = sha256_json({"teacher": to_dict(config), "styles": style_hashes})``, where a
loss-network weights *file* is replaced by ``"sha256:<its SHA-256>"``: the key follows the
weights' content, not where the file lies (stores of "pretrained" and "random" weights, and
stores written before weights files were hashed, keep the plain formula). A target is keyed
by (config hash, content hash): rerunning a config skips finished targets, a changed config
(another style, size, weights, ...) makes new targets beside the old ones.

Crash safety: every PNG is written to a temporary name and renamed into place
(:func:`distill.core.files.atomic_path`); a manifest line is appended (write, flush, fsync) only
after its target and content PNGs and its trace are in place, so "has a manifest line"
means "finished".
Each writer process appends to its own manifest file and never reopens another's, so
concurrent writers cannot clobber each other and a line torn by ``kill -9`` can only be a
file's last one; readers ignore it (that target counts as unfinished and is recomputed).
Temporary files (``.<name>.tmp.*``) are never read as targets.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill.core.config import from_dict, to_dict
from distill.core.errors import BadImageError, StoreError
from distill.core.files import sha256_file, sha256_json, write_json_atomic
from distill.core.imageio import load_image, save_image
from distill.core.masks import MaskError, load_mask, mask_image
from distill.objective.criterion import StyleCriterion, build_criterion
from distill.objective.lossnet import LossNetwork, weights_file
from distill.targets.manifest import ManifestReader
from teachers.gatys import TeacherConfig

FORMAT_NAME = "distill-target-store"
FORMAT_VERSION = 1

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

#: ``progress(label, done, total)``: entries of one config checked by :meth:`TargetStore.verify`.
VerifyProgress = Callable[[str, int, int], None]

@dataclass(frozen=True)
class TargetEntry:
    """One finished teacher target, as recorded in the manifest."""

    key: str  # f"{config_hash[:16]}/{content_hash[:16]}", unique within a store
    content_path: str  # the original content file as given to the generator (for humans)
    content_hash: str  # sha256 of the original content file bytes
    config_hash: str  # see compute_config_hash
    style_hashes: tuple[str, ...]
    content_image_path: Path  # absolute: 8-bit PNG of the exact content tensor the teacher started from
    target_path: Path  # absolute: 8-bit PNG of the teacher's result, same (H, W) as the content image
    final: dict[str, float]  # total/content/style/tv/photoreal of the target
    trace: dict[str, list[float]]  # the teacher's loss trace (TeacherResult.traces[i])
    iterations_run: int
    seconds: float  # teacher seconds per image (batch seconds / batch size)
    batch_size: int
    device: str
    weights: str  # loss-network weights description (says "random" when random)
    stop_reason: str = ""  # TeacherResult.stop_reasons[i]
    content_image_sha256: str = ""  # sha256 of the content PNG when it was recorded
    target_sha256: str = ""  # sha256 of the target PNG when it was recorded
    created: float = 0.0  # unix time the entry was recorded


@dataclass(frozen=True)
class VerifyProblem:
    """One missing or corrupt file found by :meth:`TargetStore.verify`."""

    kind: str  # "missing" or "corrupt"
    what: str  # "target", "content image", "style image" or "config"
    path: Path
    key: str = ""  # the entry's key, or the config/style hash

    def line(self) -> str:
        label = f" ({self.key})" if self.key else ""
        return f"{self.kind} {self.what}: {self.path}{label}"


@dataclass
class VerifyReport:
    """Result of :meth:`TargetStore.verify`."""

    root: Path
    configs: int = 0
    entries: int = 0  # finished entries checked (after deduplication)
    problems: list[VerifyProblem] = field(default_factory=list)
    torn_lines: int = 0  # unreadable manifest lines (a writer killed mid-line); those targets count as unfinished
    temp_files: list[Path] = field(default_factory=list)  # leftovers of killed writers; harmless, never read

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def missing(self) -> list[VerifyProblem]:
        return [p for p in self.problems if p.kind == "missing"]

    @property
    def corrupt(self) -> list[VerifyProblem]:
        return [p for p in self.problems if p.kind == "corrupt"]

    def lines(self) -> list[str]:
        """Human-readable report, one problem per line, ending with a one-line verdict."""
        out = [problem.line() for problem in self.problems]
        if self.torn_lines:
            out.append(f"note: {self.torn_lines} torn manifest line(s) ignored (a writer was killed; rerun to redo them)")
        if self.temp_files:
            out.append(f"note: {len(self.temp_files)} temporary file(s) left by killed writers (harmless, never read)")
        verdict = "OK" if self.ok else f"{len(self.missing)} missing, {len(self.corrupt)} corrupt"
        out.append(f"verify {self.root}: {self.configs} config(s), {self.entries} entries: {verdict}")
        if not self.ok:
            out.append("fix: delete the listed target/content files and rerun generate_targets to recompute them")
        return out


class TargetStore:
    """Read access to a target store (see the module docstring for the layout).

    Opening never modifies the store. Configs are immutable once registered and are
    cached; entries are re-read from the manifests on every :meth:`entries` call, so a
    reader sees targets added by running writers.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        marker = self.root / "store.json"
        if not self.root.is_dir():
            raise StoreError(f"{root}: no such target store (folder does not exist)")
        if not marker.is_file():
            raise StoreError(
                f"{root}: not a target store (no store.json); create one with scripts/generate_targets.py --out {root}"
            )
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreError(f"{marker}: unreadable store marker ({exc})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
            raise StoreError(f"{root}: store.json does not describe a {FORMAT_NAME}")
        if info.get("version") != FORMAT_VERSION:
            raise StoreError(
                f"{root}: store format version {info.get('version')!r}; this code reads version {FORMAT_VERSION}"
            )
        self._configs: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"TargetStore({str(self.root)!r})"

    # ------------------------------------------------------------------ creation

    @classmethod
    def open_or_create(
        cls,
        root: str | os.PathLike,
        *,
        teacher_config: TeacherConfig,
        style_paths: list[Path],
        style_mask_path: Path | None = None,
    ) -> tuple["TargetStore", str]:
        """Open (creating if needed) the store at ``root`` and register a teacher config.

        Copies each style image into ``styles/`` as PNG and writes
        ``configs/<config_hash>.json`` if absent. Safe to call from several processes at
        once: every file is written atomically and has the same content in each process.
        ``style_mask_path``: the semantic mask of the single style image; it is copied
        (snapped to its palette) into ``styles/`` and its hash enters the config hash.
        Returns ``(store, config_hash)``. Raises :class:`StoreError` if ``root`` is a
        non-empty folder that is not a store, and :class:`distill.core.errors.BadImageError`
        for an unreadable style image (before anything is written).
        """
        root = Path(root)
        teacher_config = teacher_config.resolved()  # the store records what runs, never "auto"
        if not style_paths:
            raise StoreError("at least one style image is needed")
        style_paths = [Path(p) for p in style_paths]
        # Decode every style before writing anything, so a bad style leaves no trace.
        styles = []
        for path in style_paths:
            image = load_image(path)  # BadImageError names the file and the reason
            styles.append((path, sha256_file(path), image))
        style_mask = None if style_mask_path is None else (Path(style_mask_path), sha256_file(style_mask_path), load_mask(style_mask_path))
        if root.exists() and not (root / "store.json").exists():
            if not root.is_dir():
                raise StoreError(f"{root}: exists and is not a folder")
            # A concurrent creator's half-written marker (".store.json.tmp.*") does not make the folder foreign.
            if any(not p.name.startswith(".store.json.tmp.") for p in root.iterdir()):
                raise StoreError(f"{root}: folder is not empty and is not a target store; choose an empty or new folder")
        if not (root / "store.json").exists():
            write_json_atomic(root / "store.json", {"format": FORMAT_NAME, "version": FORMAT_VERSION})
        store = cls(root)

        style_records = []
        for path, style_hash, image in styles:
            copy = store.root / "styles" / f"{style_hash}.png"
            if not copy.exists():
                save_image(image, copy)
            style_records.append(
                {
                    "hash": style_hash,
                    "file": copy.relative_to(store.root).as_posix(),
                    "name": path.name,
                    "png_sha256": sha256_file(copy),
                    "size": list(image.shape[-2:]),
                }
            )
        style_hashes = [record["hash"] for record in style_records]
        weights = weights_file(teacher_config.criterion.weights)
        weights_sha256 = None if weights is None else sha256_file(weights)
        mask_record = None if style_mask is None else store._copy_style_mask(*style_mask)
        mask_hash = mask_record and mask_record["hash"]
        config_hash = compute_config_hash(teacher_config, style_hashes, weights_sha256=weights_sha256, style_mask_sha256=mask_hash)
        # A store written while the fields that are off now still entered the hash keeps its key.
        full_hash = _config_hash(to_dict(teacher_config), style_hashes, weights_sha256, mask_hash, drop_off_fields=False)
        if not (store.root / "configs" / f"{config_hash}.json").exists() and (store.root / "configs" / f"{full_hash}.json").exists():
            config_hash = full_hash
        config_file = store.root / "configs" / f"{config_hash}.json"
        if not config_file.exists():
            record = {
                "config_hash": config_hash,
                "teacher": to_dict(teacher_config),
                "styles": style_hashes,
                "style_files": style_records,
            }
            if weights_sha256 is not None:
                record["weights_sha256"] = weights_sha256
            if mask_record is not None:
                record["style_mask"] = mask_record
            write_json_atomic(config_file, record)
        return store, config_hash

    def _copy_style_mask(self, path: Path, mask_hash: str, mask: torch.Tensor) -> dict[str, str]:
        """The style mask copied (in palette colours) into ``styles/``; its config record."""
        copy = self.root / "styles" / f"{mask_hash}.mask.png"
        if not copy.exists():
            save_image(mask_image(mask), copy)
        return {"hash": mask_hash, "file": copy.relative_to(self.root).as_posix(), "name": path.name}

    # ------------------------------------------------------------------ configs

    def config_hashes(self) -> list[str]:
        """Hashes of all registered teacher configs, sorted."""
        folder = self.root / "configs"
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if _HEX64.match(p.stem))

    def resolve_config(self, config_hash: str | None = None) -> str:
        """The full config hash for ``config_hash`` (full, or a unique prefix such as an entry key's first part).

        ``None`` means the store's only config; :class:`StoreError` lists them when there are several.
        """
        hashes = self.config_hashes()
        if config_hash is None:
            if len(hashes) == 1:
                return hashes[0]
            if not hashes:
                raise StoreError(f"{self.root}: the store has no teacher configs yet")
            listing = "; ".join(f"{h[:16]} (style {self.style_name(h)}, {describe_config(self.teacher_config(h))})" for h in hashes)
            raise StoreError(f"{self.root}: the store has {len(hashes)} teacher configs, pass config_hash=one of: {listing}")
        matches = [h for h in hashes if h.startswith(config_hash)]
        if len(matches) == 1 and config_hash:
            return matches[0]
        if not matches:
            known = ", ".join(h[:16] for h in hashes) or "none"
            raise StoreError(f"{self.root}: no teacher config {config_hash!r} in the store (known: {known})")
        raise StoreError(f"{self.root}: config hash prefix {config_hash!r} is ambiguous")

    def config_record(self, config_hash: str | None = None) -> dict[str, Any]:
        """The raw ``configs/<hash>.json`` content, checked against its hash."""
        config_hash = self.resolve_config(config_hash)
        if config_hash not in self._configs:
            path = self.root / "configs" / f"{config_hash}.json"
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path}: unreadable config record ({exc})") from None
            mask_hash = (record.get("style_mask") or {}).get("hash")
            recomputed = {
                _config_hash(record.get("teacher"), record.get("styles"), record.get("weights_sha256"), mask_hash, drop_off_fields=drop)
                for drop in (True, False)
            }
            if config_hash not in recomputed:
                raise StoreError(f"{path}: content does not match its hash (edited by hand?)")
            self._configs[config_hash] = record
        return self._configs[config_hash]

    def teacher_config(self, config_hash: str | None = None) -> TeacherConfig:
        """The :class:`TeacherConfig` that made the targets of ``config_hash``."""
        return from_dict(TeacherConfig, _with_legacy_values(self.config_record(config_hash)["teacher"]))

    def style_hashes(self, config_hash: str | None = None) -> tuple[str, ...]:
        return tuple(self.config_record(config_hash)["styles"])

    def style_name(self, config_hash: str | None = None) -> str:
        """A readable name for the style of ``config_hash``: its style file's stem ("candy"),
        or the stems joined by "+" for a blend of several styles."""
        return "+".join(Path(record["name"]).stem for record in self.config_record(config_hash)["style_files"])

    def style_paths(self, config_hash: str | None = None) -> list[Path]:
        """Absolute paths of the store's style copies, in blend order."""
        return [self.root / record["file"] for record in self.config_record(config_hash)["style_files"]]

    def style_mask(self, config_hash: str | None = None) -> torch.Tensor | None:
        """The style image's semantic mask as a class map (H, W), or ``None`` for a config without masks."""
        record = self.config_record(config_hash).get("style_mask")
        if record is None:
            return None
        try:
            return load_mask(self.root / record["file"])
        except MaskError as exc:
            raise StoreError(f"style mask copy unreadable: {exc}") from None

    def style_images(self, config_hash: str | None = None) -> list[torch.Tensor]:
        """The style images (3, H, W) in [0, 1], read from the store's own copies, in blend order."""
        images = []
        for path in self.style_paths(config_hash):
            try:
                images.append(load_image(path))
            except BadImageError as exc:
                raise StoreError(f"style copy unreadable: {exc}") from None
        return images

    def build_criterion(
        self,
        config_hash: str | None = None,
        *,
        device: str | torch.device = "cpu",
        weights: str | None = None,
        network: LossNetwork | None = None,
    ) -> StyleCriterion:
        """Exactly the teacher's criterion for ``config_hash``.

        ``weights`` replaces the loss-network weights source only when given, e.g. a local
        weights file standing in for ``"pretrained"`` on an offline machine. Otherwise a
        weights file must still hold what the teacher used (:class:`StoreError` if not).
        ``network``: an already built loss network to share (it must be the one the config
        describes, see :func:`loss_network_key`), e.g. across the styles of a multi-style run.
        """
        criterion_config = self.teacher_config(config_hash).criterion
        if weights is not None:
            criterion_config = dataclasses.replace(criterion_config, weights=weights)
        else:
            self._check_weights_file(config_hash)
        # Global style statistics even when the targets were made with semantic masks: a
        # student's training photos have no masks; it learns the regions from the targets.
        return build_criterion(criterion_config, self.style_images(config_hash), device=device, network=network)

    def loss_network_key(self, config_hash: str | None = None, *, weights: str | None = None) -> tuple:
        """What determines the loss network of ``config_hash`` (configs with equal keys can share one)."""
        criterion_config = self.teacher_config(config_hash).criterion.resolved()
        if weights is not None:
            criterion_config = dataclasses.replace(criterion_config, weights=weights)
        content_layers, style_layers = criterion_config.resolved_layers()
        layers = tuple(dict.fromkeys(content_layers + style_layers))
        return (criterion_config.backbone, criterion_config.weights, criterion_config.seed, criterion_config.pooling, layers)

    def _check_weights_file(self, config_hash: str | None) -> None:
        record = self.config_record(config_hash)
        recorded = record.get("weights_sha256")
        path = weights_file(record["teacher"]["criterion"]["weights"])
        if recorded is None or path is None:
            return  # no file, or a store written before weights files were hashed
        if not path.is_file():
            raise StoreError(
                f"{path}: the teacher's loss-network weights file no longer exists; restore it, or pass the "
                "weights to use instead (--weights / --loss-weights)"
            )
        if sha256_file(path) != recorded:
            raise StoreError(
                f"{path}: holds other loss-network weights than the teacher used (sha256 {recorded[:16]}...); "
                "restore the teacher's file, or pass the weights to use anyway (--weights / --loss-weights)"
            )

    # ------------------------------------------------------------------ entries

    def entries(
        self, config_hash: str | None = None, *, traces: bool = True, torn_files: dict[Path, int] | None = None
    ) -> list[TargetEntry]:
        """Finished entries of ``config_hash``, one per content (the latest record wins), sorted by content hash.

        ``traces=False`` leaves ``TargetEntry.trace`` empty instead of reading one small
        file per entry (what :class:`distill.targets.pairs.TargetPairs` does). An entry whose files were
        deleted
        afterwards is still listed (with an empty trace if that was lost); :meth:`verify` finds it.
        ``torn_files``: if given, receives the number of torn (ignored) lines per manifest file.
        """
        return self._entries(self.resolve_config(config_hash), torn=None, traces=traces, torn_files=torn_files)

    def _entries(
        self, config_hash: str, *, torn: list[int] | None, traces: bool = True, torn_files: dict[Path, int] | None = None
    ) -> list[TargetEntry]:
        latest: dict[str, dict[str, Any]] = {}
        for record in self.read_manifest(config_hash, torn=torn, torn_files=torn_files):
            previous = latest.get(record["key"])
            # A target recomputed after its file was lost has a newer record.
            if previous is None or record.get("created", 0.0) >= previous.get("created", 0.0):
                latest[record["key"]] = record
        entries = [self._entry(record, traces=traces) for record in latest.values()]
        return sorted(entries, key=lambda e: e.content_hash)

    def read_manifest(
        self, config_hash: str, *, torn: list[int] | None = None, torn_files: dict[Path, int] | None = None
    ) -> Iterator[dict[str, Any]]:
        """All complete, parseable manifest records of a config (undeduplicated).

        ``torn``: if given, a one-element list that receives the count of ignored lines;
        ``torn_files``: if given, a dict that receives that count per manifest file.
        """
        reader = ManifestReader(self.root / "manifest" / config_hash)
        records = reader.read_new()
        if torn is not None:
            torn.append(reader.torn_lines)
        if torn_files is not None:
            torn_files.update(reader.torn_files)
        return iter(records)

    def finished_keys(self, config_hash: str) -> set[str]:
        """Keys with a manifest record (no file checks)."""
        return {record["key"] for record in self.read_manifest(config_hash)}

    def _entry(self, record: dict[str, Any], *, traces: bool) -> TargetEntry:
        return TargetEntry(
            key=record["key"],
            content_path=record["content_path"],
            content_hash=record["content_hash"],
            config_hash=record["config_hash"],
            style_hashes=tuple(record["style_hashes"]),
            content_image_path=self.root / record["content_image"],
            target_path=self.root / record["target"],
            final={k: float(v) for k, v in record["final"].items()},
            trace=self._read_trace(record) if traces else {},
            iterations_run=int(record["iterations_run"]),
            seconds=float(record["seconds"]),
            batch_size=int(record["batch_size"]),
            device=str(record["device"]),
            weights=str(record["weights"]),
            stop_reason=str(record.get("stop_reason", "")),
            content_image_sha256=str(record.get("content_image_sha256", "")),
            target_sha256=str(record.get("target_sha256", "")),
            created=float(record.get("created", 0.0)),
        )

    def trace(self, entry: TargetEntry) -> dict[str, list[float]]:
        """The teacher's loss trace of ``entry``, also for entries listed with ``traces=False``.

        Raises :class:`StoreError` when the trace file is missing or unreadable.
        """
        if entry.trace:
            return entry.trace
        path = self.trace_file(entry.config_hash, entry.content_hash)
        trace = self._read_trace({"trace": path.relative_to(self.root)})
        if not trace:
            raise StoreError(f"{path}: loss trace missing or unreadable; run generate_targets.py --verify")
        return trace

    def _read_trace(self, record: dict[str, Any]) -> dict[str, list[float]]:
        try:
            data = json.loads((self.root / record["trace"]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {k: list(v) for k, v in data.items()}

    # ------------------------------------------------------------------ paths used by writers

    def target_file(self, config_hash: str, content_hash: str) -> Path:
        return self.root / "targets" / config_hash / f"{content_hash}.png"

    def trace_file(self, config_hash: str, content_hash: str) -> Path:
        return self.root / "traces" / config_hash / f"{content_hash}.json"

    def content_file(self, content_hash: str, size: int) -> Path:
        return self.root / "contents" / f"{content_hash}_{size}.png"

    def manifest_dir(self, config_hash: str) -> Path:
        return self.root / "manifest" / config_hash

    # ------------------------------------------------------------------ verify

    def verify(self, *, progress: VerifyProgress | None = None) -> VerifyReport:
        """Recompute the hashes of every config, style copy, target and content image.

        Reports files that are missing or whose bytes differ from what was recorded.
        ``progress(label, done, total)`` is called after each entry of each config.
        """
        report = VerifyReport(root=self.root)
        checked: dict[Path, bool] = {}  # content images are shared between configs: hash each once
        hashes = self.config_hashes()
        report.configs = len(hashes)
        for config_hash in hashes:
            try:
                record = self.config_record(config_hash)
            except StoreError:
                report.problems.append(
                    VerifyProblem("corrupt", "config", self.root / "configs" / f"{config_hash}.json", config_hash[:16])
                )
                continue
            for style in record["style_files"]:
                path = self.root / style["file"]
                problem = _check_file(path, style.get("png_sha256", ""), checked)
                if problem:
                    report.problems.append(VerifyProblem(problem, "style image", path, style["hash"][:16]))
            torn: list[int] = []
            entries = self._entries(config_hash, torn=torn, traces=False)
            report.torn_lines += torn[0]
            report.entries += len(entries)
            for done, entry in enumerate(entries, start=1):
                for what, path, digest in (
                    ("target", entry.target_path, entry.target_sha256),
                    ("content image", entry.content_image_path, entry.content_image_sha256),
                    ("trace", self.trace_file(entry.config_hash, entry.content_hash), ""),
                ):
                    problem = _check_file(path, digest, checked)
                    if problem:
                        report.problems.append(VerifyProblem(problem, what, path, entry.key))
                if progress is not None:
                    progress(f"verify {config_hash[:8]}", done, len(entries))
        for folder in ("styles", "contents", "targets", "traces", "configs"):
            base = self.root / folder
            if base.is_dir():
                report.temp_files.extend(sorted(p for p in base.rglob(".*.tmp.*") if p.is_file()))
        return report


def compute_config_hash(
    teacher_config: TeacherConfig,
    style_hashes: Iterable[str],
    *,
    weights_sha256: str | None = None,
    style_mask_sha256: str | None = None,
) -> str:
    """``sha256_json({"teacher": to_dict(config) less its off fields, "styles": [style hashes in blend order]})``.

    ``weights_sha256``: the SHA-256 of the loss-network weights file, when the criterion
    reads one; it stands in the hashed dict for the file's path, so that moving or
    renaming the file keeps the key and changing its content makes a new one.
    ``style_mask_sha256``: the style's semantic mask file, when there is one (added to the
    hashed dict as ``"style_mask"``; configs without masks keep the plain formula).
    Teacher fields that came later than the store format are left out while they are off
    (:data:`_FIELDS_OFF`, and :data:`_CRITERION_FIELDS_OFF` inside the criterion): a store made
    before they existed keeps its key.
    """
    return _config_hash(to_dict(teacher_config), list(style_hashes), weights_sha256, style_mask_sha256)


#: Teacher fields added after stores existed, with the value at which they change nothing
#: (plain Gatys). At that value they stay out of the hash: the same targets keep the same key.
_FIELDS_OFF = {
    "photoreal_weight": 0.0, "smooth": False, "pyramid_coarsest": 16, "colour_basis": "rgb", "luminance_step": 1.0,
}
#: Criterion fields added after stores existed, with the value that reproduces the objective
#: before them; left out of the hash at that value, and assumed when a stored config lacks them.
_CRITERION_FIELDS_OFF = {"sliced_projections": 1, "flat_area_weight": 0.0}
#: Criterion fields that only matter with the sliced-Wasserstein statistic: left out with Gram.
_CRITERION_FIELDS_ONLY_SLICED = ("sliced_projections",)
#: Each backbone's default (content, style) layers while stores recorded ``None`` for them.
#: Resolved configs name their layers; these stay out of the hash, so older keys hold, and a
#: stored ``None`` means them (the texture network's filter banks came later, and are named).
_LEGACY_DEFAULT_LAYERS = {
    "vgg19": (("relu4_2",), ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")),
    "texture_vgg": (("relu4_2",), ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")),
    "resnet50": (("layer2",), ("stem", "layer1", "layer2", "layer3", "layer4")),
}
#: Fields that only matter while another one is on: left out (at any value) while it is off.
_FIELDS_ONLY_WITH = {"matting_epsilon": "photoreal_weight", "smooth_epsilon": "smooth"}
#: Fields that only matter with the Laplacian-pyramid parameterisation: left out on pixels.
_FIELDS_ONLY_LAPLACIAN = ("pyramid_coarsest",)


def _config_hash(
    teacher: dict[str, Any] | None,
    styles: list[str] | None,
    weights_sha256: str | None,
    style_mask_sha256: str | None = None,
    *,
    drop_off_fields: bool = True,
) -> str:
    if drop_off_fields and teacher is not None:
        off = {name for name, value in _FIELDS_OFF.items() if name in teacher and teacher[name] == value}
        off |= {name for name, needs in _FIELDS_ONLY_WITH.items() if needs in off or needs not in teacher}
        if teacher.get("parameterisation") == "pixels":
            off |= set(_FIELDS_ONLY_LAPLACIAN)
        teacher = {key: value for key, value in teacher.items() if key not in off}
        if isinstance(teacher.get("criterion"), dict):
            teacher = {**teacher, "criterion": _criterion_without_off_fields(teacher["criterion"])}
    if teacher is not None and isinstance(teacher.get("criterion"), dict):
        teacher = {**teacher, "criterion": _criterion_with_legacy_layer_keys(teacher["criterion"])}
    if weights_sha256 is not None and teacher is not None:
        teacher = {**teacher, "criterion": {**teacher["criterion"], "weights": f"sha256:{weights_sha256}"}}
    hashed = {"teacher": teacher, "styles": styles}
    if style_mask_sha256 is not None:
        hashed["style_mask"] = style_mask_sha256
    return sha256_json(hashed)


def _criterion_without_off_fields(criterion: dict[str, Any]) -> dict[str, Any]:
    off = {name for name, value in _CRITERION_FIELDS_OFF.items() if criterion.get(name) == value}
    if criterion.get("style_statistic") == "gram":
        off |= set(_CRITERION_FIELDS_ONLY_SLICED)
    return {key: value for key, value in criterion.items() if key not in off}


def _criterion_with_legacy_layer_keys(criterion: dict[str, Any]) -> dict[str, Any]:
    """Default layers as every store before named layers hashed them: ``None``."""
    legacy = _LEGACY_DEFAULT_LAYERS.get(criterion.get("backbone"))
    layers = tuple(tuple(named) if named else None for named in (criterion.get("content_layers"), criterion.get("style_layers")))
    if legacy is None or layers != legacy:
        return criterion
    return {**criterion, "content_layers": None, "style_layers": None}


def _with_legacy_values(teacher: dict[str, Any]) -> dict[str, Any]:
    """A stored teacher config with the fields it predates set to what made its targets
    (their off values), not to today's defaults."""
    teacher = {**{name: value for name, value in _FIELDS_OFF.items() if name not in teacher}, **teacher}
    criterion = teacher.get("criterion")
    if isinstance(criterion, dict):
        missing = {name: value for name, value in _CRITERION_FIELDS_OFF.items() if name not in criterion}
        criterion = {**missing, **criterion}
        legacy = _LEGACY_DEFAULT_LAYERS.get(criterion.get("backbone"))
        if legacy is not None:
            for key, layers in zip(("content_layers", "style_layers"), legacy):
                criterion[key] = criterion.get(key) or list(layers)
        teacher["criterion"] = criterion
    return teacher


def entry_key(config_hash: str, content_hash: str) -> str:
    return f"{config_hash[:16]}/{content_hash[:16]}"


def _check_file(path: Path, digest: str, cache: dict[Path, bool]) -> str | None:
    """None if ``path`` exists with sha256 ``digest``, else "missing" / "corrupt"."""
    if not path.is_file():
        return "missing"
    if not digest:
        return None
    if path not in cache:
        try:
            cache[path] = sha256_file(path) == digest
        except OSError:
            cache[path] = False
    return None if cache[path] else "corrupt"


def describe_config(config: TeacherConfig) -> str:
    """A one-line summary of a teacher config for listings."""
    c = config.criterion
    return (
        f"{c.backbone}/{c.weights}, {c.normalisation} {c.style_statistic}, size {config.size}, "
        f"{config.iterations} iters, init {config.init}"
        + (f", photoreal {config.photoreal_weight:g}" if config.photoreal_weight else "")
        + (", smoothed" if config.smooth else "")
    )


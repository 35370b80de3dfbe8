"""Target sets: loading (folder, zip, CSV), validation, splits, fingerprints and datasets.

Layouts accepted (the README's "Data formats"):

- ImageFolder ``<root>/<class>/<image>``, or split folders ``<root>/{train,val,test}/<class>/...``,
  plus an optional ``<root>/unlabeled/`` folder of images without labels;
- a CSV ``path,label[,split]`` (an empty label marks an unlabeled image), paths relative to the CSV;
- a ``.zip`` holding either of the above (one enclosing top folder is fine).

Source strings (``demo:WORLD`` and the rest) are resolved in :mod:`scd_core.sources`.

Assessment uses the labeled ``train`` and ``val`` images; ``test`` is kept for reporting student
accuracy and never influences a ranking. Without given splits, a seeded stratified split holds out a
validation part. Every problem raises :class:`TargetSetError` naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import io
import shutil
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from scd_core.data.archives import ArchiveLimits, safe_extract_zip, single_top_folder
from scd_core.data.images import check_image_bytes, is_image_name, load_rgb
from scd_core.errors import TargetSetError
from scd_core.fingerprint import bytes_sha256, combine
from scd_core.progress import ProgressFn, emit, scaled

SPLITS = ("train", "val", "test")
UNLABELED = "unlabeled"
UNLABELED_INDEX = -1
MAX_CSV_BYTES = 64 << 20


@dataclass(frozen=True)
class TargetItem:
    """One image: its file, label index (-1 when unlabeled), split and content hash."""

    path: Path
    rel: str
    label: int
    split: str
    sha256: str


@dataclass
class TargetSet:
    """A validated target set; ``items`` are ordered deterministically (split, class, path)."""

    name: str
    root: Path
    class_names: list[str]
    items: list[TargetItem]
    source: str
    split_given: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def fingerprint(self) -> str:
        """Content fingerprint: file bytes, labels, splits and class names."""
        return self.items_fingerprint(self.items)

    def items_fingerprint(self, items: Sequence[TargetItem]) -> str:
        parts = [f"{it.sha256}:{it.label}:{it.split}" for it in items]
        return combine("\x1e".join(self.class_names), *parts)

    def split(self, *names: str) -> list[TargetItem]:
        return [it for it in self.items if it.split in names]

    @property
    def assessment_items(self) -> list[TargetItem]:
        """Labeled images outside ``test``: the only ones that may influence a ranking."""
        return [it for it in self.items if it.split in ("train", "val") and it.label >= 0]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class and split: ``{class_name: {split: count}}`` (unlabeled not included)."""
        table = {c: dict.fromkeys(SPLITS, 0) for c in self.class_names}
        for it in self.items:
            if it.label >= 0:
                table[self.class_names[it.label]][it.split] += 1
        return table

    def summary(self) -> dict:
        """JSON-friendly description (CLI, app)."""
        per_split = Counter(it.split for it in self.items)
        return {
            "name": self.name,
            "source": self.source,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "num_images": len(self.items),
            "splits": {s: per_split.get(s, 0) for s in (*SPLITS, UNLABELED)},
            "split_given": self.split_given,
            "fingerprint": self.fingerprint,
            "warnings": list(self.warnings),
        }


# ----------------------------------------------------------------------------------------------
# Raw records -> validated TargetSet
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    path: Path
    label: str | None
    split: str | None  # None: not given


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (the item's id: it must keep the folders)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.resolve().relative_to(root.resolve()).as_posix()


def _stratified_val(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation items: per class round(frac * n), at least 1, leaving >= 1 in train."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = min(max(1, round(val_fraction * idx.size)), idx.size - 1)
        is_val[rng.permutation(idx)[:n_val]] = True
    return is_val


def _nfc(label: str | None) -> str | None:
    """Class names in Unicode NFC: macOS writes folder names decomposed (NFD), other systems composed."""
    return unicodedata.normalize("NFC", label) if label is not None else None


def _build(records: list[_Record], root: Path, name: str, source: str, *, val_fraction: float,
           seed: int, progress: ProgressFn | None = None, notes: Sequence[str] = ()) -> TargetSet:
    if not records:
        raise TargetSetError(f"{source}: no images found")
    records = [_Record(r.path, _nfc(r.label), r.split) for r in records]
    real_root = root.resolve()
    for rec in records:  # a symbolic link (file or folder) leading out of the target set is never followed
        if real_root not in rec.path.resolve().parents:
            raise TargetSetError(f"{_rel(rec.path, root)}: symbolic link to a file outside the target set "
                                 "(links are not followed out of it)")
    labeled = [r for r in records if r.label is not None]
    class_names = sorted({r.label for r in labeled})
    if not class_names:
        raise TargetSetError(f"{source}: no classes (no labeled images)")
    lowered: dict[str, str] = {}
    for c in class_names:
        if c.casefold() in lowered:
            raise TargetSetError(f"{source}: class names {lowered[c.casefold()]!r} and {c!r} differ only in case")
        lowered[c.casefold()] = c
    if len(class_names) < 2:
        raise TargetSetError(f"{source}: only one class ({class_names[0]!r}); a task needs at least two")
    index = {c: i for i, c in enumerate(class_names)}
    assess = Counter(r.label for r in labeled if r.split in (None, "train", "val"))
    missing = [c for c in class_names if assess[c] == 0]
    if missing:  # a class seen only in test cannot be scored or learned
        detail = ", ".join(f"{c!r} ({assess[c]})" for c in missing[:5])
        raise TargetSetError(f"{source}: every class needs at least one labeled train/val image; none for: {detail}")
    val_given = any(r.split == "val" for r in labeled)
    trained = Counter(r.label for r in labeled if r.split in (None, "train"))
    if not trained:
        raise TargetSetError(f"{source}: no training images (every labeled image is in val or test); put some "
                             "in train, or give no split to have a validation part held out")
    untrained = [c for c in class_names if trained[c] == 0] if val_given else []
    one_shot = [c for c in class_names if assess[c] == 1 and c not in untrained]
    if all(assess[c] == 1 for c in class_names):
        raise TargetSetError(f"{source}: every class has a single labeled image, so none can be held out to "
                             "measure a student; label at least one more image in some class")
    warnings = list(notes)
    if untrained:  # the split was given: its validation images stay there, so the student never learns them
        names = ", ".join(repr(c) for c in untrained[:5])
        names += f" and {len(untrained) - 5} more" if len(untrained) > 5 else ""
        warnings.append(f"{len(untrained)} class(es) with no training image, only validation ones ({names}): a "
                        "student never learns them from labels; move some of their images to train.")
    if one_shot:  # a real few-shot case: keep the class, in train only (there is nothing to hold out)
        names = ", ".join(repr(c) for c in one_shot[:5])
        names += f" and {len(one_shot) - 5} more" if len(one_shot) > 5 else ""
        warnings.append(f"{len(one_shot)} class(es) with one labeled image ({names}): no image of "
                        "theirs can be held out, so validation accuracy does not cover them and their teacher scores "
                        "rest on one image each.")

    split_given = any(r.split in ("train", "val") for r in labeled)
    splits = [r.split if r.label is not None else UNLABELED for r in records]
    if not val_given:  # hold out a stratified validation part
        pool = [i for i, r in enumerate(records) if r.label is not None and r.split in (None, "train")]
        labels = np.array([index[records[i].label] for i in pool])
        is_val = _stratified_val(labels, val_fraction, seed)
        for i, v in zip(pool, is_val):
            splits[i] = "val" if v else "train"
    splits = [s if s is not None else "train" for s in splits]

    items: list[TargetItem] = []
    seen: dict[Path, str] = {}
    every = max(len(records) // 100, 1)  # about a hundred events, however many images
    emit(progress, f"checking {len(records)} images", 0.0, "validate")
    for done, (rec, split) in enumerate(zip(records, splits), start=1):
        resolved = rec.path.resolve()
        if resolved in seen:
            raise TargetSetError(f"{rec.path}: listed twice (also as {seen[resolved]})")
        seen[resolved] = split
        try:
            data = rec.path.read_bytes()
        except OSError as exc:
            raise TargetSetError(f"{rec.path}: cannot read file ({exc.strerror or exc})") from exc
        check_image_bytes(data, _rel(rec.path, root))
        label = index[rec.label] if rec.label is not None else UNLABELED_INDEX
        items.append(TargetItem(rec.path, _rel(rec.path, root), label, split, bytes_sha256(data)))
        if done % every == 0 or done == len(records):
            emit(progress, f"checked {done:,} of {len(records):,} images", done / len(records), "validate")
    order = {s: i for i, s in enumerate((*SPLITS, UNLABELED))}
    items.sort(key=lambda it: (order[it.split], it.label, it.rel))
    return TargetSet(name=name, root=root, class_names=class_names, items=items, source=source,
                     split_given=split_given, warnings=warnings)


# ----------------------------------------------------------------------------------------------
# Layout readers
# ----------------------------------------------------------------------------------------------


def _is_hidden(path: Path, base: Path) -> bool:
    """Whether a name on the way from ``base`` to ``path`` starts with '.' (``.ipynb_checkpoints``, ``.git``)."""
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def _images_in(folder: Path, notes: list[str], shown: str) -> list[Path]:
    """The images below ``folder``; files and folders whose names start with '.' are left out (a note says
    how many images that leaves out)."""
    files, hidden = [], 0
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        if _is_hidden(p, folder):
            hidden += int(is_image_name(p.name) and not p.name.startswith("._"))
            continue
        files.append(p)
    if hidden:
        notes.append(f"{shown}: {hidden} image(s) in hidden folders or files (names starting with '.') were left "
                     "out.")
    bad = [p for p in files if not is_image_name(p.name)]
    if bad:
        raise TargetSetError(f"{bad[0]}: unsupported file type (expected PNG, JPEG, BMP, GIF, WebP or TIFF)")
    return files


def _visible_entries(folder: Path, prefix: str, notes: list[str]) -> list[Path]:
    """The entries of ``folder`` in name order, without hidden ones; a hidden folder that holds images is
    named in a note (``prefix`` + its name), so that a class named that way is not lost without a word."""
    visible = []
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith("."):
            visible.append(entry)
        elif entry.is_dir() and not entry.is_symlink():
            count = sum(1 for p in entry.rglob("*") if p.is_file() and is_image_name(p.name))
            if count:
                notes.append(f"{prefix}{entry.name}: folder skipped ({count} image(s)): names starting with '.' "
                             "are hidden folders; rename it to use it as a class.")
    return visible


def _class_records(entries: list[Path], split: str | None, prefix: str, notes: list[str],
                   refuse_links: bool) -> list[_Record]:
    """Records of class folders (``<class>/<images>``), labelled by folder name. A linked class folder at the
    top is left to :func:`_build`, which refuses links that lead out of the target set."""
    records: list[_Record] = []
    for entry in entries:
        if entry.is_file():
            raise TargetSetError(f"{entry}: file outside a class folder (expected <class>/<image>)")
        if refuse_links and entry.is_symlink():
            raise TargetSetError(f"{entry}: symbolic links are not followed")
        images = _images_in(entry, notes, prefix + entry.name)
        if not images:
            raise TargetSetError(f"{entry}: class folder {entry.name!r} holds no images")
        records.extend(_Record(p, entry.name, split) for p in images)
    return records


def _read_folder(root: Path, notes: list[str]) -> list[_Record]:
    """Records of a folder layout (split folders of class folders, or class folders); ``notes`` collects what
    was skipped."""
    entries = _visible_entries(root, "", notes)
    names: dict[str, Path] = {}
    for p in entries:
        if p.name.lower() in names and p.name.lower() in (*SPLITS, UNLABELED):
            raise TargetSetError(f"{p}: folders {names[p.name.lower()].name!r} and {p.name!r} differ only in "
                                 "case; put their images in one folder")
        names[p.name.lower()] = p
    records: list[_Record] = []
    if any(s in names and names[s].is_dir() for s in SPLITS):
        for entry in names.values():
            if entry.name.lower() not in (*SPLITS, UNLABELED):
                raise TargetSetError(f"{entry}: unexpected entry beside split folders "
                                     f"(expected {', '.join(SPLITS)} and {UNLABELED})")
        for split in SPLITS:
            if split in names:
                folder = names[split]
                records.extend(_class_records(_visible_entries(folder, f"{folder.name}/", notes), split,
                                              f"{folder.name}/", notes, refuse_links=True))
    else:
        records.extend(_class_records([e for e in entries if e.name.lower() != UNLABELED], None, "", notes,
                                      refuse_links=False))
    if UNLABELED in names and names[UNLABELED].is_dir():
        unlabeled = names[UNLABELED]
        records.extend(_Record(p, None, None) for p in _images_in(unlabeled, notes, unlabeled.name))
    return records


def _decode_csv(path: Path) -> str:
    """CSV text: UTF-16 with a byte-order mark (Excel's "Unicode text"), UTF-8, else Windows-1252/Latin-1."""
    raw = path.read_bytes()
    if len(raw) > MAX_CSV_BYTES:
        raise TargetSetError(f"{path}: CSV larger than {MAX_CSV_BYTES} bytes")
    encodings = ("utf-16",) if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else ()
    for encoding in (*encodings, "utf-8-sig", "cp1252", "latin-1"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise TargetSetError(f"{path}: cannot decode CSV text")  # pragma: no cover - latin-1 decodes all


def _read_csv(path: Path) -> list[_Record]:
    text = _decode_csv(path)
    if "\x00" in text:
        raise TargetSetError(f"{path}: not a text CSV file (it holds NUL bytes)")
    header = text.split("\n", 1)[0]
    # Excel in many locales writes ';'-separated CSV, and "CSV" exports are sometimes tab-separated.
    delimiter = max((",", ";", "\t"), key=lambda d: (header.count(d), d == ","))
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    missing = [c for c in ("path", "label") if c not in fields]
    if missing:
        raise TargetSetError(f"{path}: missing column(s) {', '.join(missing)} (expected path,label[,split])")
    base = path.parent.resolve()
    records: list[_Record] = []
    try:
        for row in reader:
            records.append(_csv_record(path, reader.line_num, row, base))
    except csv.Error as exc:
        raise TargetSetError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from exc
    if not records:
        raise TargetSetError(f"{path}: the CSV lists no images")
    return records


def _unlisted_note(csv_path: Path, records: list[_Record]) -> list[str]:
    """A note naming the images under the CSV's folder that it does not list (they are left out)."""
    listed = {r.path for r in records}
    base = csv_path.parent.resolve()
    unlisted = sorted(p for p in base.rglob("*") if p.is_file() and is_image_name(p.name) and p not in listed
                      and not _is_hidden(p, base))
    if not unlisted:
        return []
    return [f"{len(unlisted)} image(s) beside {csv_path.name} are not listed in it and were left out (e.g. "
            f"{unlisted[0].relative_to(base).as_posix()!r}); list them with an empty label to use them as "
            "unlabeled images."]


def _csv_record(path: Path, line_no: int, row: dict, base: Path) -> _Record:
    # Cells beyond the header land under the key None (as a list): ignored.
    row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
    rel = row.get("path", "").replace("\\", "/")  # paths written on Windows
    if not rel:
        raise TargetSetError(f"{path}:{line_no}: empty path")
    file = (base / rel).resolve()
    if base not in file.parents:
        raise TargetSetError(f"{path}:{line_no}: path {rel!r} escapes the CSV's folder")
    if not file.is_file():
        raise TargetSetError(f"{path}:{line_no}: image {rel!r} does not exist")
    if not is_image_name(file.name):
        raise TargetSetError(f"{path}:{line_no}: {rel!r} is not a supported image type")
    split = row.get("split", "").lower() or None
    if split is not None and split not in (*SPLITS, UNLABELED):
        raise TargetSetError(f"{path}:{line_no}: unknown split {split!r} (use train, val, test)")
    label = row.get("label") or None
    if split == UNLABELED:
        label = None
    return _Record(file, label, split if label is not None else None)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def _is_data_folder(folder: Path) -> bool:
    """A split folder, or a class folder (images directly inside): part of the data, not a wrapper. A folder
    holding a CSV is the wrapper of a CSV layout, whatever else it holds."""
    if folder.name.lower() in (*SPLITS, UNLABELED):
        return True
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.suffix.lower() == ".csv" and not p.name.startswith(".") for p in files):
        return False
    return any(is_image_name(p.name) for p in files)


def extraction_dir(archive: Path, extract_dir: Path | None = None) -> Path:
    """Where :func:`load_target` extracts ``archive``: ``<extract_dir>/<content hash>`` (default
    ``<workspace>/uploads/targets``), so the same bytes are extracted once."""
    from scd_core.fingerprint import file_sha256
    from scd_core.runtime.workspace import subdir

    return (extract_dir or subdir("uploads", "targets")) / file_sha256(archive)[:16]


def load_target(spec: str | Path, *, val_fraction: float = 0.2, seed: int = 0,
                extract_dir: Path | None = None, limits: ArchiveLimits | None = None,
                progress: ProgressFn | None = None) -> TargetSet:
    """Load and validate a target set from a folder, a .zip or a CSV path.

    Source strings such as ``demo:WORLD`` are resolved by :func:`scd_core.sources.load_target`. A zip
    is extracted safely (:func:`scd_core.data.archives.safe_extract_zip`, within ``limits``) into
    :func:`extraction_dir`; when the content is refused, the extraction is removed again. ``progress``
    hears the extraction (the first 30% of a zip) and the check of every image (the rest), with
    fractions that only grow.
    """
    text = str(spec)
    if not text.strip():  # Path("") is the current folder: never load that by accident
        raise TargetSetError("no target set given (an empty path)")
    path = Path(text)
    if not path.exists():
        raise TargetSetError(f"{text}: no such file or folder")
    if path.is_file() and path.suffix.lower() == ".zip":
        from scd_core.runtime import workspace

        dest = extraction_dir(path, extract_dir)
        created = not dest.exists()
        if created:
            safe_extract_zip(path, dest, limits, error=TargetSetError, progress=scaled(progress, 0.0, 0.3))
        try:
            with workspace.hold(dest):
                ts = load_target(single_top_folder(dest, keep=_is_data_folder), val_fraction=val_fraction, seed=seed,
                                 progress=scaled(progress, 0.3 if created else 0.0, 1.0))
        except BaseException:
            if created:  # a refused archive leaves no extracted files behind
                shutil.rmtree(dest, ignore_errors=True)
            raise
        ts.name, ts.source = path.stem, str(path)
        if created:
            workspace.enforce_limit(keep=(dest, path))
        return ts
    if path.is_file() and path.suffix.lower() == ".csv":
        records = _read_csv(path)
        return _build(records, path.parent.resolve(), path.stem, str(path), val_fraction=val_fraction, seed=seed,
                      progress=progress, notes=_unlisted_note(path, records))
    if path.is_dir():
        # resolved: items are named by their path below the root, which a relative root would lose
        root = single_top_folder(path.resolve(), keep=_is_data_folder)
        csvs = sorted(p for p in root.glob("*.csv") if not p.name.startswith("."))
        if len(csvs) > 1:
            raise TargetSetError(f"{root}: several CSV files ({', '.join(p.name for p in csvs)}); keep one")
        notes: list[str] = []
        if csvs:
            records = _read_csv(csvs[0])
            notes = _unlisted_note(csvs[0], records)
        else:
            records = _read_folder(root, notes)
        return _build(records, root, path.name or root.name, str(path), val_fraction=val_fraction, seed=seed,
                      progress=progress, notes=notes)
    raise TargetSetError(f"{text}: expected a folder, a .zip, a .csv or demo:WORLD")


# ----------------------------------------------------------------------------------------------
# Torch dataset
# ----------------------------------------------------------------------------------------------


class TargetImageDataset(Dataset):
    """Images of a target set through a transform (e.g. a teacher's own eval transform).

    Returns ``(image_tensor, label, index)``; unlabeled items carry label -1.
    """

    def __init__(self, items: Sequence[TargetItem], transform: Callable) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.items[index]
        return self.transform(load_rgb(item.path)), item.label, index

"""Which model segments a recognised scan, or why none does.

Each 3D bundle declares what it covers in ``configs/metadata.json``::

    "coverage": {"modalities": ["MR"], "regions": ["leg"], "preference": 2, "note": "..."}

``--model auto`` (the default) picks, for each case, the shipped bundle with weights whose
modality matches and whose regions cover most of the scan's lower-limb slices (ties: higher
``preference``). A named model is checked the same way. A case that no model fits is not
segmented: :class:`~muscle_pipeline.errors.CaseRejected` with one line naming the file, what was
found and what the model segments ("CT, no lower limb (20 slices): calf_mri segments MR lower
legs (calves)"). ``force`` segments it anyway, with the reason kept as a warning.

Model names resolve to the shipped bundles only (``$MUSCLE_PIPELINE_BUNDLES``, the repository's
``bundles/``, the installed package's bundles) — never to a folder of the same name in the
working directory; a path is used only when it is given as a path (contains a separator or
starts with ``.`` or ``~``). A bundle's configs are code (MONAI ``$`` expressions run when they
are parsed): use bundles you trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from muscle_pipeline.errors import CaseRejected, ModelError
from muscle_pipeline.regions import REGION_WORDS

if TYPE_CHECKING:  # recognition needs torch and MONAI; resolving a model name must not
    from muscle_pipeline.recognition import ScanRecognition

AUTO = "auto"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REPO_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
_PACKAGE_BUNDLES = Path(__file__).resolve().parent / "data" / "bundles"


def bundle_roots() -> list[Path]:
    """Folders that hold the shipped bundles, in lookup order."""
    roots = [Path(r) for r in os.environ.get("MUSCLE_PIPELINE_BUNDLES", "").split(os.pathsep) if r]
    return roots + [_REPO_BUNDLES, _PACKAGE_BUNDLES]


def is_path(model: str | os.PathLike) -> bool:
    """True when ``model`` was given as a path rather than a bundle name."""
    if isinstance(model, Path):
        return True
    text = str(model)
    return os.sep in text or "/" in text or text.startswith((".", "~"))


def resolve_bundle(model: str | os.PathLike) -> Path:
    """The bundle folder of a shipped bundle name, or of a path given as a path.

    Raises ModelError naming what was looked for."""
    if is_path(model):
        root = Path(os.path.expanduser(str(model)))
        if not (root / "configs").is_dir():
            raise ModelError(f"model {str(model)!r}: {root} is not a bundle (no configs/ folder)")
        return root.resolve()
    name = str(model)
    if not _NAME.match(name):
        raise ModelError(f"model {name!r}: not a bundle name")
    for root in bundle_roots():
        if (root / name / "configs").is_dir():
            return (root / name).resolve()
    raise ModelError(f"model {name!r}: no shipped bundle of that name (known: {', '.join(shipped_names()) or 'none'}; "
                     "give a path, e.g. ./my_bundle, for your own)")


def shipped_names() -> list[str]:
    names: list[str] = []
    for root in bundle_roots():
        if root.is_dir():
            names += [p.name for p in sorted(root.iterdir()) if (p / "configs" / "metadata.json").is_file()
                      and p.name not in names]
    return names


@dataclass(frozen=True)
class Coverage:
    """What one bundle segments: modalities, regions, and whether it has weights."""

    name: str
    root: Path
    modalities: tuple[str, ...]
    regions: tuple[str, ...]
    preference: int
    has_weights: bool
    note: str = ""

    def describe(self) -> str:
        regions = ", ".join(REGION_WORDS.get(r, r) for r in self.regions) or "no declared region"
        return f"{self.name} segments {'/'.join(self.modalities) or 'any modality'} {regions}"


def coverage_of(root: Path) -> Coverage | None:
    """The bundle's declared coverage; None when its metadata declares none (e.g. gym_photo)."""
    try:
        meta = json.loads((root / "configs" / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    declared = meta.get("coverage")
    if not isinstance(declared, dict):
        return None
    models = root / "models"
    has_weights = models.is_dir() and any(p.suffix in (".pt", ".ts", ".pth") for p in models.rglob("*"))
    return Coverage(root.name, root, tuple(m.upper() for m in declared.get("modalities", [])),
                    tuple(declared.get("regions", [])), int(declared.get("preference", 0)), has_weights,
                    str(declared.get("note", "")))


def shipped_coverages() -> list[Coverage]:
    out = []
    for name in shipped_names():
        coverage = coverage_of(resolve_bundle(name))
        if coverage is not None:
            out.append(coverage)
    return out


def fit(recognition: ScanRecognition, coverage: Coverage) -> tuple[str | None, list[str]]:
    """(why the model does not fit the scan or None, warnings when it fits only in part)."""
    found = recognition.summary()
    if recognition.modality and coverage.modalities and recognition.modality not in coverage.modalities:
        return f"{found}: {coverage.describe()}", []
    if not recognition.lower_limb:
        return f"{found}: {coverage.describe()}", []
    limb = recognition.limb_regions
    covered = [r for r in limb if r in coverage.regions]
    if coverage.regions and not covered:
        return f"{found}: {coverage.describe()}", []
    missing = [r for r in limb if r not in coverage.regions]
    warnings = []
    if missing:
        warnings.append(f"{', '.join(f'{REGION_WORDS[r]} ({recognition.regions[r]} slices)' for r in missing)} "
                        f"not covered by {coverage.name}: their muscles are not labelled")
    return None, warnings


def choose(recognition: ScanRecognition, candidates: list[Coverage] | None = None) -> tuple[Coverage, list[str]]:
    """The shipped model with weights that covers most of the scan's lower-limb slices.

    Raises CaseRejected (without a path; the caller adds the file) when none fits."""
    candidates = shipped_coverages() if candidates is None else candidates
    fitting = []
    for coverage in candidates:
        if not coverage.has_weights:
            continue
        reason, warnings = fit(recognition, coverage)
        if reason is None:
            covered = sum(n for r, n in recognition.regions.items() if r in coverage.regions)
            fitting.append((covered, coverage.preference, coverage, warnings))
    if not fitting:
        offered = [c for c in candidates if c.has_weights]
        waiting = [c.name for c in candidates if not c.has_weights]
        why = "; ".join(c.describe() for c in offered) or "no shipped model has weights"
        if waiting:
            why += f" ({', '.join(waiting)}: no weights yet)"
        raise CaseRejected(None, f"{recognition.summary()}: no shipped model fits ({why})")
    _, _, best, warnings = max(fitting, key=lambda t: (t[0], t[1]))
    return best, warnings


def weights_sha256(root: Path) -> str | None:
    """One SHA-256 over the bundle's weight files (names and bytes, sorted): which weights ran."""
    models = root / "models"
    files = sorted(p for p in models.rglob("*") if p.is_file()) if models.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(models)).encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

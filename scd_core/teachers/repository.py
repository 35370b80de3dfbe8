"""Teacher repository: discovery, loading and saving of teachers in the HF hub / timm folder layout.

A teacher folder holds ``config.json`` (``architecture``, ``num_classes``, ``label_names``,
``pretrained_cfg``, optional ``description`` and ``model_args``) and ``model.safetensors``: exactly what
``huggingface-cli download timm/<model>`` yields and what :func:`save_teacher` writes. A repository is
a folder of such folders; it can also name hub models (``hf-hub:timm/<model>`` or a timm pretrained
tag such as ``resnet18.a1_in1k``), one per line, in a ``hub_models.txt`` file, resolved through the
normal HF cache (offline when ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scd_core.config import settings
from scd_core.errors import TeacherError
from scd_core.fingerprint import combine, file_sha256, json_sha256
from scd_core.teachers.hub import hub_offline_reason

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLED_NAMES = ("pytorch_model.bin", "model.pth", "model.bin")
HUB_LIST_NAME = "hub_models.txt"
_SYNSET = re.compile(r"^n\d{8}$")
_MAX_CONFIG_BYTES = 64 << 20
# Keyword arguments of timm.create_model a config's model_args must not set: they load files or
# weights (checkpoint_path, pretrained*), or change what is built behind the config's back.
_FORBIDDEN_MODEL_ARGS = frozenset({"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                                   "pretrained_strict", "cache_dir", "features_only",
                                   "model_name", "device", "dtype"})


def max_teacher_classes() -> int:
    """The largest head accepted: ``SCD_MAX_TEACHER_CLASSES`` (default 100,000; ImageNet-22k has 21,843)."""
    return settings().max_teacher_classes


@dataclass(frozen=True)
class TeacherSpec:
    """What is known about a teacher without loading its weights."""

    name: str
    source: str  # "folder" or "hub"
    location: str  # folder path, or hub id / timm pretrained tag
    architecture: str
    num_classes: int
    label_names: tuple[str, ...]
    description: str = ""
    pretrained_cfg: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    model_args: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    fingerprint: str = ""

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description for tables and the CLI."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "num_classes": self.num_classes,
            "description": self.description,
            "source": self.source,
        }


# ----------------------------------------------------------------------------------------------
# Label names
# ----------------------------------------------------------------------------------------------


def _imagenet_label_names(num_classes: int, pretrained_cfg: dict[str, Any]) -> list[str] | None:
    """Readable ImageNet class names from timm's bundled class info (works offline)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    class _Probe:  # infer_imagenet_subset only reads these two attributes
        def __init__(self) -> None:
            self.pretrained_cfg = dict(pretrained_cfg, num_classes=num_classes)
            self.num_classes = num_classes

    try:
        subset = infer_imagenet_subset(_Probe())
    except Exception:
        subset = None
    if not subset:
        return None
    info = ImageNetInfo(subset)
    names = info.label_descriptions()
    if len(names) != num_classes:
        return None
    return [_short_description(d) for d in names]


@functools.lru_cache(maxsize=1)
def _imagenet_info():
    from timm.data import ImageNetInfo

    return ImageNetInfo("imagenet-1k")  # its lemma table covers the synsets of every ImageNet subset


def _synset_description(synset: str) -> str | None:
    """WordNet lemmas of an ImageNet synset id (any subset, e.g. Imagenette's 10) from timm's class info."""
    try:
        return _imagenet_info().label_name_to_description(synset)
    except KeyError:
        return None


def _short_description(description: str) -> str:
    return description.split(",")[0].strip()


def resolve_label_names(config: dict[str, Any], num_classes: int) -> list[str]:
    """Label names from the config, else timm's ImageNet info for ImageNet-sized heads, else class_<i>.

    WordNet synset ids (``n01440764``) are replaced by their readable description when known.
    """
    names = config.get("label_names")
    if isinstance(names, dict):  # timm allows {index: name} when ids have gaps
        try:
            names = [names.get(str(i), names.get(i, f"class_{i}")) for i in range(num_classes)]
        except Exception as exc:  # pragma: no cover - defensive
            raise TeacherError(f"label_names in config is malformed: {exc}") from exc
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TeacherError("label_names in config.json must be a list of strings")
        if len(names) != num_classes:
            raise TeacherError(
                f"config.json lists {len(names)} label_names but the head has num_classes={num_classes}"
            )
        if names and all(_SYNSET.match(n) for n in names):
            descriptions = config.get("label_descriptions") or {}
            if not isinstance(descriptions, dict):
                descriptions = {}
            readable = [descriptions.get(n) or _synset_description(n) for n in names]
            if all(readable):
                return [_short_description(d) for d in readable]
        return list(names)
    imagenet = _imagenet_label_names(num_classes, config.get("pretrained_cfg", {}))
    return imagenet if imagenet is not None else [f"class_{i}" for i in range(num_classes)]


# ----------------------------------------------------------------------------------------------
# Specs from folders and hub names
# ----------------------------------------------------------------------------------------------


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise TeacherError(f"{folder}: no {CONFIG_NAME} (a teacher folder needs config.json and weights)")
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise TeacherError(f"{path}: config.json is implausibly large")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TeacherError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise TeacherError(f"{path}: expected a JSON object")
    return config


def weights_file(folder: Path) -> Path:
    """The weights file of a teacher folder: safetensors preferred, else a pickled state dict."""
    safe = folder / SAFETENSORS_NAME
    if safe.is_file():
        return safe
    for name in PICKLED_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise TeacherError(f"{folder}: no weights ({SAFETENSORS_NAME} or {', '.join(PICKLED_NAMES)})")


def _spec_from_config(name: str, source: str, location: str, config: dict[str, Any],
                      fingerprint: str) -> TeacherSpec:
    import timm

    arch = config.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise TeacherError(f"teacher {name!r}: config.json has no 'architecture'")
    if not timm.is_model(arch):
        raise TeacherError(f"teacher {name!r}: unknown timm architecture {arch!r}")
    pretrained_cfg = config.get("pretrained_cfg") or {}
    if not isinstance(pretrained_cfg, dict):
        raise TeacherError(f"teacher {name!r}: pretrained_cfg must be an object")
    num_classes = config.get("num_classes", pretrained_cfg.get("num_classes"))
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise TeacherError(f"teacher {name!r}: config.json needs a positive integer 'num_classes'")
    if num_classes > max_teacher_classes():
        raise TeacherError(f"teacher {name!r}: num_classes={num_classes} exceeds the limit of "
                           f"{max_teacher_classes()} classes (SCD_MAX_TEACHER_CLASSES)")
    labels = resolve_label_names(config, num_classes)
    description = config.get("description", "")
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise TeacherError(f"teacher {name!r}: model_args must be an object")
    forbidden = sorted(k for k in model_args if not isinstance(k, str) or k in _FORBIDDEN_MODEL_ARGS)
    if forbidden:
        raise TeacherError(f"teacher {name!r}: model_args may not set {', '.join(map(str, forbidden))} "
                           "(weights come only from the teacher folder's own file)")
    return TeacherSpec(
        name=name,
        source=source,
        location=location,
        architecture=arch,
        num_classes=num_classes,
        label_names=tuple(labels),
        description=str(description).strip().splitlines()[0] if description else "",
        pretrained_cfg=dict(pretrained_cfg),
        model_args=dict(model_args),
        fingerprint=fingerprint,
    )


def spec_from_folder(folder: str | Path) -> TeacherSpec:
    """Read a teacher folder's config (no weights loaded); the teacher's name is the folder's name."""
    folder = Path(folder)
    config = _read_config(folder)
    weights = weights_file(folder)
    fingerprint = combine(file_sha256(folder / CONFIG_NAME), file_sha256(weights))
    return _spec_from_config(folder.name, "folder", str(folder), config, fingerprint)


def _config_cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = hub_id.partition("@")
    try:
        return isinstance(try_to_load_from_cache(repo, CONFIG_NAME, revision=revision or None), str)
    except Exception:  # a malformed id: let the resolver report it
        return False


def spec_from_hub(name: str) -> TeacherSpec:
    """Resolve ``hf-hub:<repo>`` or a timm pretrained tag; reads config.json from the HF cache.

    With ``HF_HUB_OFFLINE=1`` only files already in the cache are used.
    """
    import timm
    from timm.models import get_pretrained_cfg

    if name.startswith("hf-hub:"):
        from timm.models._hub import load_model_config_from_hf

        hub_id = name[len("hf-hub:"):]
        offline = None if _config_cached(hub_id) else hub_offline_reason()
        if offline:  # fail in about a second instead of after the HTTP client's retries
            raise TeacherError(f"cannot resolve {name!r}: it is not in the local Hugging Face cache and {offline}")
        try:
            config, _ = load_model_config_from_hf(hub_id)
        except Exception as exc:
            raise TeacherError(f"cannot resolve {name!r} from the Hugging Face hub or cache: {exc}") from exc
        config = dict(config)
        config.setdefault("architecture", config.get("architecture"))
        return _spec_from_config(name, "hub", name, config, json_sha256(["hub", name]))
    if not timm.is_model(name):
        raise TeacherError(f"{name!r} is neither a folder, an hf-hub: name nor a timm model name")
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise TeacherError(f"timm model {name!r} has no pretrained weights tag")
    cfg_dict = cfg.to_dict()
    config = {
        "architecture": name.split(".")[0],
        "num_classes": cfg_dict.get("num_classes", 1000),
        "pretrained_cfg": cfg_dict,
    }
    return _spec_from_config(name, "hub", name, config, json_sha256(["hub", name]))


class TeacherRepository:
    """An ordered collection of teacher specs, addressable by name."""

    def __init__(self, specs: Sequence[TeacherSpec], location: str = "") -> None:
        names = [s.name for s in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise TeacherError(f"duplicate teacher names in repository: {', '.join(duplicates)}")
        self.specs = list(specs)
        self.location = location

    @classmethod
    def from_folder(cls, folder: str | Path, location: str | None = None) -> TeacherRepository:
        """Every sub-folder with a config.json is a teacher; ``hub_models.txt`` adds hub names."""
        folder = Path(folder)
        if not folder.is_dir():
            raise TeacherError(f"teacher repository {folder} is not a folder")
        if (folder / CONFIG_NAME).is_file():  # a single teacher folder given as repository
            return cls([spec_from_folder(folder)], location=str(folder))
        specs = [spec_from_folder(sub) for sub in sorted(folder.iterdir())
                 if sub.is_dir() and (sub / CONFIG_NAME).is_file()]
        hub_list = folder / HUB_LIST_NAME
        if hub_list.is_file():
            for line in hub_list.read_text(encoding="utf-8").splitlines():
                line = line.split("#")[0].strip()
                if line:
                    specs.append(spec_from_hub(line))
        if not specs:
            raise TeacherError(f"teacher repository {folder} holds no teacher folders (config.json + weights)")
        return cls(specs, location=location or str(folder))

    def __iter__(self) -> Iterator[TeacherSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def get(self, name: str) -> TeacherSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise TeacherError(f"no teacher named {name!r} in the repository (have: {', '.join(self.names)})")

    def select(self, names: Sequence[str] | None) -> list[TeacherSpec]:
        """The named teachers in the given order, or all of them when ``names`` is empty."""
        return [self.get(n) for n in names] if names else list(self.specs)


# ----------------------------------------------------------------------------------------------
# Loading and saving weights
# ----------------------------------------------------------------------------------------------


def _tupleize(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def load_state_dict_safely(path: Path) -> dict[str, torch.Tensor]:
    """Load weights without executing code: safetensors, or a pickle restricted to tensors."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TeacherError(f"{path}: cannot read weights safely ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TeacherError(f"{path}: weights file does not hold a state dict of tensors")
    return state


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header (no tensor data is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:
        raise TeacherError(f"{path}: cannot read weights safely ({type(exc).__name__}: {exc})") from exc


def _check_weights_fit(spec: TeacherSpec, weights: Path, overlay: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """Compare the architecture's parameter shapes (built on the meta device: no memory) with the
    safetensors header, so that a config naming a huge model beside small weights is refused before
    the model is allocated. Architectures that cannot be built on the meta device skip this check
    (the strict load still catches a mismatch)."""
    import timm

    shapes = _safetensors_shapes(weights)
    try:
        with torch.device("meta"):
            meta = timm.create_model(spec.architecture, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)
        expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    except Exception:
        return
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    if not (missing or unexpected or wrong):
        return
    details = []
    if wrong:
        k = wrong[0]
        details.append(f"{len(wrong)} size mismatch(es), e.g. {k}: {list(shapes[k])} in the file, "
                       f"{list(expected[k])} in the model")
    if missing:
        details.append(f"{len(missing)} missing tensor(s), e.g. {missing[0]}")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
    raise TeacherError(f"teacher {spec.name!r}: weights do not fit {spec.architecture!r} with "
                       f"{spec.num_classes} classes ({weights.name}: {'; '.join(details)})")


def load_teacher(spec: TeacherSpec, device: str | torch.device = "cpu") -> nn.Module:
    """Instantiate the teacher's timm model with its weights, in eval mode, on ``device``."""
    import timm

    overlay = _tupleize({k: v for k, v in spec.pretrained_cfg.items() if k not in ("file", "hf_hub_id", "url")})
    if spec.source == "hub":
        try:
            model = timm.create_model(spec.location, pretrained=True)
        except Exception as exc:
            raise TeacherError(f"cannot load hub teacher {spec.location!r}: {exc}") from exc
        return model.eval().to(device)
    weights = weights_file(Path(spec.location))
    kwargs = dict(spec.model_args, num_classes=spec.num_classes)
    if weights.suffix == ".safetensors":  # check shapes against the file's header before allocating
        _check_weights_fit(spec, weights, overlay, kwargs)
    try:
        model = timm.create_model(spec.architecture, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as exc:
        raise TeacherError(f"teacher {spec.name!r}: cannot build {spec.architecture!r}: {exc}") from exc
    state = load_state_dict_safely(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise TeacherError(f"teacher {spec.name!r}: weights do not fit {spec.architecture!r} "
                           f"with {spec.num_classes} classes ({detail[:300]})") from exc
    return model.eval().to(device)


def save_teacher(model: nn.Module, label_names: Sequence[str], folder: str | Path,
                 description: str | None = None, data_config: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a teacher folder (config.json + model.safetensors), atomically.

    The folder loads with plain timm:
    ``timm.create_model(arch, pretrained=True, num_classes=K, pretrained_cfg_overlay=dict(file=...))``,
    and joins a teacher repository as is.
    """
    from timm.models import save_for_hf

    folder = Path(folder)
    num_classes = getattr(model, "num_classes", None)
    if num_classes != len(label_names):
        raise TeacherError(f"model has {num_classes} classes but {len(label_names)} label names were given")
    model_config: dict[str, Any] = {"label_names": [str(n) for n in label_names]}
    if description:
        model_config["description"] = " ".join(description.split())
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_for_hf(model.cpu() if next(model.parameters()).device.type != "cpu" else model,
                    str(tmp), model_config=model_config, safe_serialization=True, data_config=data_config)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def teacher_transform(model: nn.Module):
    """The teacher's own eval transform (timm), and a fingerprint of its data config."""
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return create_transform(**cfg, is_training=False), json_sha256(cfg)


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The teacher's classifier when it is a plain linear layer on the pre-logits, else None."""
    try:
        head = model.get_classifier()
    except Exception:
        return None
    return head if isinstance(head, nn.Linear) else None

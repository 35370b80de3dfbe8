"""Tests of scd_core.teachers.repository: the HF-hub/timm folder layout, label names, repositories, safe weights."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import timm
import torch
from helpers import make_teacher, write_teacher_config
from timm.data import ImageNetInfo

from scd_core.errors import TeacherError
from scd_core.sources import open_repository
from scd_core.teachers.repository import (
    TeacherRepository,
    linear_head,
    load_state_dict_safely,
    load_teacher,
    resolve_label_names,
    save_teacher,
    spec_from_folder,
    spec_from_hub,
    teacher_transform,
)

ARCH = "test_resnet"
HUB_TAG = "test_resnet.r160_in1k"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models: one thread is faster, and avoids OpenMP spin-waits on a busy 2-core machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """Offline with an empty HF cache: hub weights can never be found, whatever this machine has cached."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "hf_cache"


def _model(num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False, num_classes=num_classes)
    with torch.no_grad():
        for p in model.get_classifier().parameters():
            p.normal_(0, 0.1)
        for m in model.modules():  # non-trivial BatchNorm statistics must round-trip too
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------
# Save / load round trips
# ----------------------------------------------------------------------------------------------


def test_save_teacher_round_trip(tmp_path, images):
    model = _model(4)
    labels = ["apple", "Birne", "チェリー", "δ"]
    folder = save_teacher(model, labels, tmp_path / "repo" / "fruit", description="  Fruit\n  teacher  ",
                          data_config={"input_size": (3, 16, 16)})
    assert folder == tmp_path / "repo" / "fruit"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["fruit"]  # no temporary folder left
    config = _config(folder)
    assert config["architecture"] == ARCH and config["num_classes"] == 4
    assert config["label_names"] == labels and config["description"] == "Fruit teacher"
    assert config["pretrained_cfg"]["input_size"] == [3, 16, 16]

    spec = spec_from_folder(folder)
    assert (spec.name, spec.source, spec.location) == ("fruit", "folder", str(folder))
    assert spec.architecture == ARCH and spec.num_classes == 4
    assert spec.label_names == tuple(labels) and spec.description == "Fruit teacher"
    assert spec.summary() == {"name": "fruit", "architecture": ARCH, "num_classes": 4,
                              "description": "Fruit teacher", "source": "folder"}
    loaded = load_teacher(spec)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
        feats = loaded.forward_head(loaded.forward_features(images), pre_logits=True)
        assert torch.equal(feats, model.forward_head(model.forward_features(images), pre_logits=True))
    assert isinstance(linear_head(loaded), torch.nn.Linear)
    transform, _ = teacher_transform(loaded)
    assert transform.transforms[-1].mean.tolist() == [0.5, 0.5, 0.5]


def test_saved_teacher_loads_with_plain_timm(tmp_path, images):
    model = _model(5, seed=1)
    folder = save_teacher(model, [f"c{i}" for i in range(5)], tmp_path / "t")
    plain = timm.create_model(ARCH, pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(
        file=str(folder / "model.safetensors"), num_classes=5)).eval()
    with torch.no_grad():
        assert torch.equal(plain(images), model(images))


def test_save_teacher_overwrites_and_checks_labels(tmp_path, images):
    folder = make_teacher(tmp_path / "t", 3, seed=0)
    model = _model(3, seed=7)
    save_teacher(model, ["x", "y", "z"], folder)
    assert spec_from_folder(folder).label_names == ("x", "y", "z")
    with torch.no_grad():
        assert torch.equal(load_teacher(spec_from_folder(folder))(images), model(images))
    with pytest.raises(TeacherError, match="3 classes but 2 label names"):
        save_teacher(model, ["x", "y"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_fingerprint_tracks_weights_and_config(tmp_path):
    folder = make_teacher(tmp_path / "t", 3, seed=0)
    fp = spec_from_folder(folder).fingerprint
    assert len(fp) == 64 and spec_from_folder(folder).fingerprint == fp
    time.sleep(0.02)  # file hashes are memoised by (path, size, mtime): let the clock tick
    make_teacher(folder, 3, seed=1)  # same architecture and size, other weights
    fp_weights = spec_from_folder(folder).fingerprint
    assert fp_weights != fp
    config = _config(folder)
    config["label_names"] = ["p", "q", "r"]
    time.sleep(0.02)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert spec_from_folder(folder).fingerprint not in (fp, fp_weights)


# ----------------------------------------------------------------------------------------------
# Label names
# ----------------------------------------------------------------------------------------------


def test_label_names_imagenet_fallback(tmp_path):
    spec = spec_from_folder(write_teacher_config(tmp_path / "in1k", {"architecture": ARCH, "num_classes": 1000}))
    assert len(spec.label_names) == 1000
    assert spec.label_names[0] == "tench" and spec.label_names[1] == "goldfish"
    assert not any(n.startswith(("n0", "class_")) for n in spec.label_names)


@pytest.mark.parametrize("num_classes", [1, 7, 999, 1001])
def test_label_names_generic_fallback(tmp_path, num_classes):
    folder = write_teacher_config(tmp_path / "t", {"architecture": ARCH, "num_classes": num_classes})
    names = spec_from_folder(folder).label_names
    assert names == tuple(f"class_{i}" for i in range(num_classes))


def test_label_names_from_pretrained_cfg_num_classes(tmp_path):
    folder = write_teacher_config(tmp_path / "t", {"architecture": ARCH, "pretrained_cfg": {"num_classes": 2}})
    assert spec_from_folder(folder).label_names == ("class_0", "class_1")


def test_synset_label_names_made_readable():
    synsets = ImageNetInfo("imagenet-1k").label_names()
    assert resolve_label_names({"label_names": synsets}, 1000)[:3] == ["tench", "goldfish", "great white shark"]
    imagenette = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
                  "n03394916", "n03417042", "n03425413", "n03445777", "n03888257"]
    names = resolve_label_names({"label_names": imagenette}, 10)
    assert names[0] == "tench" and names[1] == "English springer" and names[9] == "parachute"
    assert not any(n.startswith("n0") for n in names)
    shuffled = synsets[::-1]  # readable names follow the config's own order, not the index
    assert resolve_label_names({"label_names": shuffled}, 1000)[-1] == "tench"
    given = {"n01440764": "Tinca tinca, the tench", "n01443537": "Carassius auratus"}
    assert resolve_label_names({"label_names": list(given), "label_descriptions": given}, 2) == [
        "Tinca tinca", "Carassius auratus"]
    unknown = ["n00000001", "n01440764"]
    assert resolve_label_names({"label_names": unknown}, 2) == unknown


def test_label_names_as_dict_and_plain():
    assert resolve_label_names({"label_names": {"0": "a", "2": "c"}}, 3) == ["a", "class_1", "c"]
    assert resolve_label_names({"label_names": ["dog", "cat"]}, 2) == ["dog", "cat"]


def test_label_names_errors():
    with pytest.raises(TeacherError, match="3 label_names but the head has num_classes=2"):
        resolve_label_names({"label_names": ["a", "b", "c"]}, 2)
    with pytest.raises(TeacherError, match="list of strings"):
        resolve_label_names({"label_names": [1, 2]}, 2)


# ----------------------------------------------------------------------------------------------
# Repositories
# ----------------------------------------------------------------------------------------------


def test_repository_from_folder(tmp_path):
    repo = tmp_path / "repo"
    for name, k in [("zeta", 2), ("alpha", 3), ("Mid", 4)]:
        make_teacher(repo / name, k, seed=k, description=f"teacher {name}")
    (repo / "notes").mkdir()  # no config.json: not a teacher
    (repo / "README.md").write_text("x")
    teachers = TeacherRepository.from_folder(repo)
    assert teachers.names == ["Mid", "alpha", "zeta"]
    assert len(teachers) == 3 and [s.name for s in teachers] == teachers.names
    assert teachers.get("alpha").num_classes == 3 and teachers.get("alpha").description == "teacher alpha"
    assert [s.name for s in teachers.select(["zeta", "Mid"])] == ["zeta", "Mid"]
    assert teachers.select(None) == teachers.specs
    with pytest.raises(TeacherError, match=r"no teacher named 'beta' in the repository \(have: Mid, alpha, zeta\)"):
        teachers.get("beta")
    assert open_repository(repo).names == teachers.names
    assert open_repository(repo / "zeta").names == ["zeta"]  # one teacher folder
    both = open_repository(f"{repo / 'zeta'}, {repo / 'alpha'}")
    assert both.names == ["zeta", "alpha"]


def test_repository_errors(tmp_path):
    with pytest.raises(TeacherError, match="is not a folder"):
        TeacherRepository.from_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match="holds no teacher folders"):
        TeacherRepository.from_folder(tmp_path / "empty")
    with pytest.raises(TeacherError, match="does not exist"):
        open_repository(str(tmp_path / "missing" / "x"))
    with pytest.raises(TeacherError, match="empty teacher repository"):
        open_repository("  ")
    make_teacher(tmp_path / "a" / "same", 2)
    make_teacher(tmp_path / "b" / "same", 2)
    with pytest.raises(TeacherError, match="duplicate teacher names in repository: same"):
        open_repository(f"{tmp_path / 'a' / 'same'},{tmp_path / 'b' / 'same'}")


def test_hub_models_listed_without_network(tmp_path, empty_hf_cache):
    repo = tmp_path / "repo"
    make_teacher(repo / "local", 2)
    (repo / "hub_models.txt").write_text(f"# timm pretrained tags\n\n{HUB_TAG}   # a tiny resnet\n", encoding="utf-8")
    teachers = TeacherRepository.from_folder(repo)
    assert teachers.names == ["local", HUB_TAG]
    hub = teachers.get(HUB_TAG)
    assert hub.source == "hub" and hub.location == HUB_TAG
    assert hub.architecture == ARCH and hub.num_classes == 1000
    assert hub.label_names[0] == "tench" and len(hub.label_names) == 1000
    assert hub.fingerprint == spec_from_hub(HUB_TAG).fingerprint
    with pytest.raises(TeacherError, match=f"cannot load hub teacher '{HUB_TAG}'"):
        load_teacher(hub)
    assert not any(empty_hf_cache.rglob("*.safetensors"))


def test_hub_names_errors_offline(empty_hf_cache):
    with pytest.raises(TeacherError, match=r"cannot resolve 'hf-hub:timm/test_resnet\.r160_in1k'"):
        spec_from_hub("hf-hub:timm/test_resnet.r160_in1k")
    with pytest.raises(TeacherError, match="neither a folder, an hf-hub: name nor a timm model name"):
        spec_from_hub("no_such_model_xyz")
    with pytest.raises(TeacherError, match="neither a folder"):
        open_repository("no_such_model_xyz")
    assert open_repository(HUB_TAG).names == [HUB_TAG]


# ----------------------------------------------------------------------------------------------
# Errors in teacher folders
# ----------------------------------------------------------------------------------------------


def test_error_unknown_architecture(tmp_path):
    folder = write_teacher_config(tmp_path / "t", {"architecture": "resnet_does_not_exist", "num_classes": 2})
    with pytest.raises(TeacherError, match="unknown timm architecture 'resnet_does_not_exist'"):
        spec_from_folder(folder)


@pytest.mark.parametrize(("config", "match"), [
    ({"num_classes": 2}, "has no 'architecture'"),
    ({"architecture": ARCH}, "positive integer 'num_classes'"),
    ({"architecture": ARCH, "num_classes": 0}, "positive integer 'num_classes'"),
    ({"architecture": ARCH, "num_classes": "3"}, "positive integer 'num_classes'"),
    ({"architecture": ARCH, "num_classes": 3, "label_names": ["a", "b"]},
     "2 label_names but the head has num_classes=3"),
    ({"architecture": ARCH, "num_classes": 2, "model_args": [1]}, "model_args must be an object"),
])
def test_error_bad_config(tmp_path, config, match):
    with pytest.raises(TeacherError, match=match):
        spec_from_folder(write_teacher_config(tmp_path / "t", config))


def test_error_invalid_json_and_missing_files(tmp_path):
    folder = write_teacher_config(tmp_path / "t", {"architecture": ARCH, "num_classes": 2})
    (folder / "config.json").write_text("{'architecture': 'test_resnet',", encoding="utf-8")
    with pytest.raises(TeacherError, match=r"config\.json: not valid JSON"):
        spec_from_folder(folder)
    (folder / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TeacherError, match="not valid JSON"):
        spec_from_folder(folder)
    (folder / "config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(TeacherError, match="expected a JSON object"):
        spec_from_folder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(TeacherError, match=r"no config\.json"):
        spec_from_folder(folder)
    nowts = write_teacher_config(tmp_path / "nw", {"architecture": ARCH, "num_classes": 2}, weights=None)
    with pytest.raises(TeacherError, match=r"nw: no weights \(model\.safetensors or pytorch_model\.bin"):
        spec_from_folder(nowts)


def test_error_weights_of_wrong_head_size(tmp_path):
    folder = make_teacher(tmp_path / "t", 3)
    config = _config(folder)
    config["num_classes"] = 4
    config["label_names"] = ["a", "b", "c", "d"]
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    spec = spec_from_folder(folder)
    with pytest.raises(TeacherError, match=r"weights do not fit 'test_resnet' with 4 classes.*size mismatch"):
        load_teacher(spec)


def test_error_weights_of_another_architecture(tmp_path):
    folder = make_teacher(tmp_path / "t", 3, arch="test_efficientnet")
    config = _config(folder)
    config["architecture"] = ARCH
    config.pop("model_args", None)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(TeacherError, match="weights do not fit 'test_resnet'"):
        load_teacher(spec_from_folder(folder))


def test_error_corrupt_safetensors(tmp_path):
    folder = make_teacher(tmp_path / "t", 2)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(TeacherError, match="cannot read weights safely"):
        load_teacher(spec_from_folder(folder))


def test_error_bad_model_args(tmp_path):
    folder = make_teacher(tmp_path / "t", 2)
    config = _config(folder)
    config["model_args"] = {"no_such_argument": 3}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(TeacherError, match="cannot build 'test_resnet'"):
        load_teacher(spec_from_folder(folder))


# ----------------------------------------------------------------------------------------------
# Pickled weights: weights_only, never code execution
# ----------------------------------------------------------------------------------------------


class _Evil:
    """Unpickling this runs code (writes a marker file) unless the loader refuses arbitrary callables."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _pickled_teacher(tmp_path: Path, name: str, payload, filename: str = "pytorch_model.bin") -> Path:
    folder = make_teacher(tmp_path / name, 3)
    (folder / "model.safetensors").unlink()
    torch.save(payload, folder / filename)
    return folder


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.pth", "model.bin"])
def test_pickled_state_dict_loads(tmp_path, images, filename):
    model = _model(3, seed=5)
    folder = _pickled_teacher(tmp_path, "p", model.state_dict(), filename)
    spec = spec_from_folder(folder)
    assert spec.num_classes == 3
    with torch.no_grad():
        assert torch.equal(load_teacher(spec)(images), model(images))


def test_pickled_checkpoint_with_state_dict_key(tmp_path, images):
    model = _model(3, seed=6)
    folder = _pickled_teacher(tmp_path, "p", {"state_dict": model.state_dict(), "epoch": 3})
    with torch.no_grad():
        assert torch.equal(load_teacher(spec_from_folder(folder))(images), model(images))


def test_safetensors_preferred_over_pickle(tmp_path, images):
    model = _model(3, seed=8)
    folder = save_teacher(model, ["a", "b", "c"], tmp_path / "t")
    torch.save({"junk": torch.zeros(1)}, folder / "pytorch_model.bin")
    with torch.no_grad():
        assert torch.equal(load_teacher(spec_from_folder(folder))(images), model(images))


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned.txt"
    state = dict(_model(3).state_dict())
    state["payload"] = _Evil(marker)
    folder = _pickled_teacher(tmp_path, "evil", state)
    spec = spec_from_folder(folder)  # reading the config never touches the weights
    with pytest.raises(TeacherError, match=r"pytorch_model\.bin: cannot read weights safely"):
        load_teacher(spec)
    with pytest.raises(TeacherError, match="cannot read weights safely"):
        load_state_dict_safely(folder / "pytorch_model.bin")
    assert not marker.exists()


def test_pickled_whole_module_refused(tmp_path):
    folder = _pickled_teacher(tmp_path, "module", _model(3))
    with pytest.raises(TeacherError, match="cannot read weights safely"):
        load_teacher(spec_from_folder(folder))


def test_pickle_without_tensors_refused(tmp_path):
    folder = _pickled_teacher(tmp_path, "list", [1, 2, 3])
    with pytest.raises(TeacherError, match="does not hold a state dict of tensors"):
        load_teacher(spec_from_folder(folder))


def test_environment_is_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_uncached_hub_name_fails_fast_when_offline():
    import time

    start = time.perf_counter()
    with pytest.raises(TeacherError, match=r"not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        spec_from_hub("hf-hub:timm/not_cached_model_xyz.a1_in1k")
    assert time.perf_counter() - start < 3.0


def test_hub_reachability_check_reports_a_closed_endpoint(monkeypatch):
    import socket

    from scd_core.teachers import hub

    monkeypatch.setattr(hub, "_offline_flag", lambda: False)
    with socket.socket() as probe:  # a local port that nothing listens on: connection refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reason = hub.hub_offline_reason(f"http://127.0.0.1:{port}", timeout_s=1.0)
    assert reason is not None and f"127.0.0.1:{port}" in reason
    with socket.socket() as server:  # and one that accepts: reachable
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert hub.hub_offline_reason(f"http://127.0.0.1:{server.getsockname()[1]}", timeout_s=1.0) is None

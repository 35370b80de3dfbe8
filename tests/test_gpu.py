"""CUDA checks (marked ``gpu``: skipped without a CUDA device; run by ``benchmarks/gpu_check.py``).

The CPU is the reference: the batched Sinkhorn, the OT loss's gradient, the assessment and one
distillation epoch must give the same results on the GPU (up to float32 / bf16 rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_teacher, write_image_folder

from scd_core.distill.losses import ot_divergence
from scd_core.ot.transport import sinkhorn

pytestmark = pytest.mark.gpu


def _problem(batch: int, k_t: int, k_s: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    C = rng.random((k_t, k_s))
    C = (C - C.min()) / (C.max() - C.min())
    return rng.dirichlet(np.ones(k_t), size=batch), rng.dirichlet(np.ones(k_s), size=batch), C


@pytest.mark.parametrize(("eps", "size"), [(0.05, (256, 1000, 100)), (0.01, (256, 1000, 100)),
                                           (1e-3, (32, 200, 20))])
def test_sinkhorn_on_cuda_matches_cpu_at_benchmark_size(eps, size):
    """The benchmark's 256 problems of 1000 x 100: scaling iterations with the float32 warm-up (eps
    0.05), float32 inputs promoted to float64 (0.01); the log domain (1e-3) on a smaller batch, whose
    CPU reference would otherwise take minutes."""
    a, b, C = _problem(*size)
    cpu = sinkhorn(a, b, C, eps, max_iter=20_000, tol=1e-9)
    on = {k: torch.tensor(x, device="cuda") for k, x in (("a", a), ("b", b), ("C", C))}
    gpu = sinkhorn(on["a"], on["b"], on["C"], eps, max_iter=20_000, tol=1e-9)
    assert gpu.cost.device.type == "cuda" and gpu.log_domain == cpu.log_domain
    np.testing.assert_allclose(gpu.cost.cpu().numpy(), cpu.cost.numpy(), atol=1e-8)
    np.testing.assert_allclose(gpu.g.cpu().numpy(), cpu.g.numpy(), atol=1e-5 if eps >= 0.01 else 1e-4)
    f32 = sinkhorn(on["a"].float(), on["b"].float(), on["C"].float(), eps, max_iter=20_000)
    assert f32.cost.dtype == torch.float32 and torch.isfinite(f32.cost).all()
    np.testing.assert_allclose(f32.cost.double().cpu().numpy(), cpu.cost.numpy(), atol=1e-4)


def test_ot_loss_gradient_on_cuda_matches_cpu():
    torch.manual_seed(0)
    cost = torch.rand(50, 6)
    a = torch.softmax(torch.randn(32, 50) * 3, 1)
    logits = torch.randn(32, 6)
    grads = {}
    for device in ("cpu", "cuda"):
        z = logits.to(device).requires_grad_(True)
        value = ot_divergence(a.to(device), torch.softmax(z, 1), cost.to(device), eps=0.05, max_iter=500, tol=1e-6)
        value.sum().backward()
        assert torch.isfinite(z.grad).all()
        grads[device] = (value.detach().cpu(), z.grad.cpu())
    torch.testing.assert_close(grads["cuda"][0], grads["cpu"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads["cuda"][1], grads["cpu"][1], atol=1e-4, rtol=1e-3)


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    from scd_core.data.targets import load_target
    from scd_core.teachers.repository import TeacherRepository

    root = tmp_path_factory.mktemp("gpu")
    classes = {"red": 6, "green": 6, "blue": 6}
    splits = {"train": dict.fromkeys(classes, 6), "val": dict.fromkeys(classes, 3),
              "test": dict.fromkeys(classes, 3)}
    target = load_target(write_image_folder(root / "target", classes, size=16, splits=splits, unlabeled=16))
    make_teacher(root / "repo" / "five", 5, img_size=16, seed=1)
    make_teacher(root / "repo" / "seven", 7, img_size=16, seed=2)
    return target, TeacherRepository.from_folder(root / "repo")


def test_rank_on_cuda_matches_cpu(small_task):
    from scd_core.assess.ranking import rank

    target, repo = small_task
    cpu = rank(target, repo, metrics=["scd", "leep", "nce"], device="cpu", use_cache=False).table()
    gpu = rank(target, repo, metrics=["scd", "leep", "nce"], device="cuda", use_cache=False).table()
    assert set(gpu.index) == set(cpu.index)
    # bf16 autocast on CUDA: scores agree to bf16 rounding of the logits, not bit for bit
    for metric in ("scd", "leep"):
        np.testing.assert_allclose(gpu.loc[cpu.index, metric], cpu[metric], atol=2e-2, rtol=2e-2)


def test_distill_one_epoch_on_cuda(small_task, tmp_path):
    from scd_core.distill.trainer import DistillConfig, distill

    target, repo = small_task
    cfg = DistillConfig(method="scd", student="test_resnet", epochs=1, batch_size=8, device="cuda", lr=0.05)
    res = distill(target, repo.get("five"), cfg, run_dir=tmp_path / "run")
    assert res.status == "finished" and len(res.history) == 1
    assert np.isfinite(res.history[0]["train_loss"]) and "train_scd" in res.history[0]
    assert "cuda" in res.timing["device"] and 0 <= res.val_acc <= 1
    assert (tmp_path / "run" / "student").is_dir()

"""Assessment benchmarks: scale to a 21,843-class teacher, and cached re-rank speed.

``scale``: a real timm model (``test_resnet``) with a 21,843-way linear head scores 20,000 real PNG
images of 100 target classes through the product path (loader, streaming pass, cache, all metrics);
the figure is the peak resident memory beyond the loaded model (Linux VmHWM, reset after loading).

``rerank``: a repository of real timm teachers ranked twice on the same target, cold (empty cache)
and warm (cached outputs), in one process; the figure is the time ratio.

    python benchmarks/bench_assessment.py [--quick] [--part scale|rerank|all]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import peak_rss_bytes, reset_peak_rss, rss_bytes, save
from PIL import Image


def write_images(root: Path, n_classes: int, per_class: int, size: int, seed: int = 0) -> Path:
    """An ImageFolder of small PNGs, one colour+noise pattern per class (vectorised generation)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (n_classes, 3))
    for c in range(n_classes):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-40, 40, (per_class, size, size, 3))
        batch = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)
        for i in range(per_class):
            Image.fromarray(batch[i]).save(folder / f"{i:04d}.png", compress_level=1)
    return root


def bench_scale(quick: bool) -> dict:
    import timm
    import torch

    from scd_core.assess.ranking import rank
    from scd_core.data.targets import load_target
    from scd_core.teachers.repository import TeacherRepository, save_teacher

    n_classes_t = 21_843
    n_target_classes, per_class = (20, 50) if quick else (100, 200)
    work = Path(tempfile.mkdtemp(prefix="scd-scale-"))
    os.environ["SCD_CACHE_DIR"] = str(work / "cache")
    try:
        t = time.perf_counter()
        target_dir = write_images(work / "target", n_target_classes, per_class, 16)
        t_write = time.perf_counter() - t
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", num_classes=n_classes_t)
        save_teacher(model, [f"synset_{i}" for i in range(n_classes_t)], work / "repo" / "in22k_like",
                     data_config={"input_size": (3, 16, 16), "crop_pct": 1.0})
        t = time.perf_counter()
        target = load_target(target_dir)
        t_load = time.perf_counter() - t
        repo = TeacherRepository.from_folder(work / "repo")
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        del model
        # baseline: everything imported, target indexed, a copy of the model loaded once
        from scd_core.teachers.repository import load_teacher

        warm_model = load_teacher(repo.specs[0])
        baseline = rss_bytes()
        del warm_model
        reset_peak_rss()
        t = time.perf_counter()
        ranking = rank(target, repo, device="cpu", batch_size=128)
        t_rank = time.perf_counter() - t
        peak = peak_rss_bytes()
        n = len(target.assessment_items)
        return {
            "teacher_classes": n_classes_t,
            "images": n,
            "target_classes": n_target_classes,
            "model_bytes": model_bytes,
            "write_images_s": t_write,
            "load_target_s": t_load,
            "rank_s": t_rank,
            "timing": ranking.timing,
            "baseline_rss_bytes": baseline,
            "peak_rss_bytes": peak,
            "peak_beyond_baseline_bytes": peak - baseline,
            "n_x_kt_float32_bytes": n * n_classes_t * 4,
            "scores": dict(ranking.teachers[0].scores),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_rerank(quick: bool) -> dict:
    import timm
    import torch

    from scd_core.assess.ranking import rank
    from scd_core.data.targets import load_target
    from scd_core.teachers.repository import TeacherRepository, save_teacher

    archs = ["resnet18", "efficientnet_b0", "convnext_atto", "mobilenetv3_large_100", "resnet34"]
    if quick:
        archs = archs[:2]
    n_classes, per_class, size = (5, 20, 64) if quick else (10, 60, 96)
    work = Path(tempfile.mkdtemp(prefix="scd-rerank-"))
    os.environ["SCD_CACHE_DIR"] = str(work / "cache")
    try:
        target = load_target(write_images(work / "target", n_classes, per_class, size))
        for i, arch in enumerate(archs):
            torch.manual_seed(i)
            k = [100, 37, 1000, 12, 250][i]
            save_teacher(timm.create_model(arch, num_classes=k), [f"c{j}" for j in range(k)], work / "repo" / arch,
                         data_config={"input_size": (3, size, size), "crop_pct": 1.0})
        repo = TeacherRepository.from_folder(work / "repo")
        t = time.perf_counter()
        cold = rank(target, repo, device="cpu").table()
        t_cold = time.perf_counter() - t
        t = time.perf_counter()
        warm = rank(target, repo, device="cpu").table()
        t_warm = time.perf_counter() - t
        assert list(cold.index) == list(warm.index)
        np.testing.assert_allclose(cold["scd"].to_numpy(), warm["scd"].to_numpy())
        return {"teachers": archs, "images": len(target.assessment_items), "image_size": size,
                "cold_s": t_cold, "warm_s": t_warm, "speedup": t_cold / t_warm}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", default="all", choices=["scale", "rerank", "all"])
    args = parser.parse_args()
    results: dict = {"quick": args.quick}
    if args.part in ("rerank", "all"):
        results["rerank"] = r = bench_rerank(args.quick)
        print(f"| cached re-rank | {r['teachers'].__len__()} teachers, {r['images']} images | cold {r['cold_s']:.2f} s "
              f"| warm {r['warm_s']:.3f} s | {r['speedup']:.0f}x |")
    if args.part in ("scale", "all"):
        results["scale"] = s = bench_scale(args.quick)
        print(f"| 21,843-class teacher | {s['images']} images | rank {s['rank_s']:.1f} s | peak beyond baseline "
              f"{s['peak_beyond_baseline_bytes'] / 2**20:.0f} MiB (N x K_t float32 would be "
              f"{s['n_x_kt_float32_bytes'] / 2**30:.2f} GiB) |")
    path = save("assessment" + ("_quick" if args.quick else ""), results)
    print(f"saved {path}")


if __name__ == "__main__":
    main()

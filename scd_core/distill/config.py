"""The settings of a distillation run and its recorded result.

:class:`DistillConfig` holds everything that determines a run; it is validated once, at the start of
:func:`scd_core.distill.trainer.distill`, so the parts below (data, teacher signal, optimizer, loop,
export) can trust it. Each loss reads its own options from it (:meth:`DistillLoss.from_config`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from scd_core.errors import ScdError

DEFAULT_STUDENT = "resnet10t"
WEIGHTINGS = ("fixed", "adaptive")


@dataclass
class DistillConfig:
    """Everything that determines a run (recorded in run.json)."""

    method: str = "scd"
    student: str = DEFAULT_STUDENT
    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "sgd"  # a key of scd_core.distill.optim.OPTIMIZERS
    lr: float | None = None  # default: the optimizer's
    weight_decay: float | None = None  # default: the optimizer's
    weight: float = 1.0  # lambda of the teacher term
    weighting: str = "adaptive"  # fixed: lambda as given; adaptive: per image, lambda times its teacher class's weight
    temperature: float = 4.0
    eps: float = 0.05  # entropic regularisation of the scd loss, relative to a [0, 1] cost
    cost: str = "prototype"  # teacher-to-target cost of the scd loss: a name in scd_core.ot.costs.COSTS
    image_size: int | None = None  # default: from the data, 32..224
    flip: bool = False
    use_unlabeled: bool = True
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        """Refuse settings no run can use, with a message naming the setting."""
        import timm

        from scd_core.distill.optim import OPTIMIZERS
        from scd_core.ot.costs import get_cost

        if not timm.is_model(self.student):
            raise ScdError(f"unknown student architecture {self.student!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ScdError("epochs must be >= 1 and batch size >= 2")
        if self.optimizer not in OPTIMIZERS:
            raise ScdError(f"unknown optimizer {self.optimizer!r} ({' or '.join(OPTIMIZERS)})")
        if self.weighting not in WEIGHTINGS:
            raise ScdError(f"unknown teacher weighting {self.weighting!r} ({' or '.join(WEIGHTINGS)})")
        get_cost(self.cost)  # an unknown cost name raises, listing the valid ones
        if not self.weight >= 0:
            raise ScdError(f"the teacher weight must be >= 0, got {self.weight}")


@dataclass
class DistillResult:
    run_id: str
    run_dir: str
    status: str  # finished or cancelled
    config: dict
    teacher: str | None
    history: list[dict] = field(default_factory=list)
    val_acc: float = float("nan")
    test_acc: float | None = None
    student_dir: str = ""
    timing: dict = field(default_factory=dict)
    teacher_weight: dict = field(default_factory=dict)  # the lambda used and how it was set

    def to_json(self) -> dict:
        return asdict(self)

"""scd_core: selective cross-task distillation engine (no UI code; never imports streamlit)."""

from scd_core.errors import ScdError, TargetSetError, TeacherError

__all__ = ["ScdError", "TargetSetError", "TeacherError"]

"""Demo worlds built offline from a seed: a target set and a zoo of teachers with known relations to it.

One module per world family (:mod:`~scd_core.demo.shapes`, :mod:`~scd_core.demo.digits`,
:mod:`~scd_core.demo.glyphs`), the shared build machinery in :mod:`~scd_core.demo.common`, and the
registry of the shipped worlds with their workspace cache in :mod:`~scd_core.demo.worlds`.
"""

from scd_core.demo.common import MANIFEST_NAME, DemoWorld, SizeConfig, Teacher, open_world
from scd_core.demo.worlds import SIZES, WORLDS, build_world, ensure_world, family, world_description, world_dir

__all__ = ["MANIFEST_NAME", "SIZES", "WORLDS", "DemoWorld", "SizeConfig", "Teacher", "build_world", "ensure_world",
           "family", "open_world", "world_description", "world_dir"]

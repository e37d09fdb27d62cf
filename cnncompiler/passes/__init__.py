"""Graph passes: named, switchable, verified between steps (see DESIGN.md, "Passes").

Importing this package registers the built-in pipeline in order.
"""

from cnncompiler.passes import cleanup, folding, fusion  # noqa: F401  (registration, in pipeline order)
from cnncompiler.passes.manager import Pass, PassManager, PassRecord, all_passes, register_pass

__all__ = ["Pass", "PassManager", "PassRecord", "all_passes", "register_pass"]

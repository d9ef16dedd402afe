"""Mesh construction and logical-axis rules; the only place that maps names to devices."""
from lm.parallel.axes import STANDARD_RULES, axis_rules, constrain, logical_to_spec
from lm.parallel.mesh import MeshConfig, make_mesh
from lm.parallel.rules import LAYOUTS, Layout, layout

__all__ = ["STANDARD_RULES", "axis_rules", "constrain", "logical_to_spec", "MeshConfig",
           "make_mesh", "LAYOUTS", "Layout", "layout"]

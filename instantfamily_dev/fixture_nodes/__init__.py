"""Test-only ComfyUI node pack (ids prefixed ``IFTest``): lets real prompts run without weights.

Loaded by the node tests through ComfyUI's own loader, like any custom node pack.
"""

from . import tiny_model, workflow_nodes
from .node_classes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

NODE_CLASS_MAPPINGS.update(workflow_nodes.NODE_CLASS_MAPPINGS)
NODE_DISPLAY_NAME_MAPPINGS.update({name: name for name in workflow_nodes.NODE_CLASS_MAPPINGS})

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "tiny_model"]

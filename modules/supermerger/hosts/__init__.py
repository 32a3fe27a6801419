"""Hosts: the only code that touches a live model (standalone diffusers, the WebUI, Forge).

Importing this package imports no host library; each adapter imports its own inside functions.
"""

from .base import GenParams, Generated, Host

__all__ = ["GenParams", "Generated", "Host"]

"""SuperMerger's entry point in the AUTOMATIC1111 WebUI and Forge: registers the "SuperMerger" tab.

The code lives in ``<extension>/modules/supermerger``; that folder goes on ``sys.path`` so the package
imports as ``supermerger`` (the name ``modules`` belongs to the WebUI's own package: never import it
from here as ours).
"""

import os
import sys

_MODULES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "modules")
if _MODULES not in sys.path:
    sys.path.insert(0, _MODULES)

# The WebUI loads this file with __name__ "supermerger.py" (package "supermerger"); another extension
# importing it as scripts.supermerger must not register the tab a second time.
if __package__ == "supermerger":
    from modules import script_callbacks  # the WebUI's

    from supermerger.ui.webui_tab import after_component, on_ui_tabs, use_extension_folder

    use_extension_folder(os.path.dirname(_MODULES))  # history, presets, ... in the extension's folder
    script_callbacks.on_ui_tabs(on_ui_tabs)
    if hasattr(script_callbacks, "on_after_component"):  # the WebUI's checkpoint dropdown follows the merge
        script_callbacks.on_after_component(after_component)

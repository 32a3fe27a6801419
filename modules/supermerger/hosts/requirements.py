"""Whether the standalone host's libraries (diffusers, transformers, Pillow, the CLIP vocabulary) are
there, with the pip command to run when they are not. Used by the command line (`gen`, `demo`, `xyz`,
`queue run`, `ui`); imports none of those libraries, nor gradio.
"""

from __future__ import annotations

import importlib.util
import os

from ..errors import SuperMergerError

PIP_STANDALONE = ('pip install "diffusers>=0.30" "transformers>=4.40" "accelerate>=0.26" Pillow safetensors '
                  '&& pip install --no-deps open-clip-torch')


def check_standalone() -> None:
    """A clear message (which pip command to run) when the standalone host's libraries are missing."""
    missing = [m for m in ("diffusers", "transformers", "PIL") if importlib.util.find_spec(m) is None]
    if missing:
        names = ", ".join("Pillow" if m == "PIL" else m for m in missing)
        raise SuperMergerError(f"Generating needs the standalone host's libraries, and {names} "
                               f"{'is' if len(missing) == 1 else 'are'} not installed.",
                               f'Install them: {PIP_STANDALONE} (in a checkout: pip install -e ".[standalone]" '
                               "&& pip install --no-deps open-clip-torch).")
    from .clip_tokenizer import find_bpe_file

    find_bpe_file()
    # transformers warns about torchvision (an image processor the pipelines here never use)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

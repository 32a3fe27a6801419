"""WebUI / Forge install hook (run by the WebUI's launcher in its own process, with ``launch`` importable).

Installs only what the WebUI lacks, never torch and never a newer version of something the WebUI
already has (its pins of diffusers/transformers stay as they are).
"""

import importlib.metadata
import importlib.util
import os

# (distribution, import name, pip requirement when missing). torch is the WebUI's own.
REQUIREMENTS = [
    ("numpy", "numpy", "numpy"),
    ("tqdm", "tqdm", "tqdm"),
    ("Pillow", "PIL", "Pillow"),
    ("safetensors", "safetensors", "safetensors"),
]
# Forge's host converts text-encoder weights with diffusers; Forge pins 0.31.0 and ships it.
FORGE_REQUIREMENTS = [("diffusers", "diffusers", "diffusers==0.31.0")]


def installed(distribution: str, module: str) -> bool:
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return importlib.util.find_spec(module) is not None


def is_forge(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "modules_forge")) or os.path.isdir(os.path.join(root, "backend"))


def missing(root: str = ".", check=None) -> list:
    check = check or installed
    wanted = REQUIREMENTS + (FORGE_REQUIREMENTS if is_forge(root) else [])
    return [req for dist, module, req in wanted if not check(dist, module)]


def main() -> None:
    import launch  # the WebUI's launcher (only inside the WebUI's install step)

    for requirement in missing(os.getcwd()):
        launch.run_pip(f'install "{requirement}"', f"SuperMerger requirement: {requirement}")


if __name__ == "__main__":
    main()

"""The real WebUIs, brought up offline for the live tests: unpack a source snapshot, build its own venv
(cached, keyed by the snapshot's hash), install SuperMerger into ``extensions/`` from this checkout as a
user would (``git clone``), run its ``install.py`` the way the launcher does, start the server headless.

The snapshots and the facts of bringing them up are in ``../shared/hosts/`` (README.md there). Nothing
here is copied from them: they are read from that folder each time.

Run by hand to build (or check) a host's venv: ``python tests/live/hostenv.py a1111|forge``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def hosts_dir() -> Path | None:
    """``$SUPERMERGER_HOSTS_DIR``, else ``shared/hosts`` beside the checkout (or its parent)."""
    env = os.environ.get("SUPERMERGER_HOSTS_DIR")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "hosts", REPO.parent.parent / "shared" / "hosts",
                   Path("/work/shared/hosts")]
    for c in candidates:
        if (c / "README.md").is_file() and any(c.glob("*.tar.xz")):
            return c
    return None


def cache_root() -> Path:
    return Path(os.environ.get("SUPERMERGER_LIVE_CACHE", Path.home() / ".cache" / "supermerger-live"))


@dataclasses.dataclass(frozen=True)
class HostSpec:
    key: str
    tarball: str
    top: str  # the folder inside the tarball
    extra_pip: tuple[tuple[str, ...], ...]  # further pip install argument lists, in order
    flags: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


A1111 = HostSpec(
    key="a1111", tarball="a1111-v1.10.1.tar.xz", top="a1111",
    extra_pip=(("clip-anytorch",),),
    flags=("--skip-torch-cuda-test", "--use-cpu", "all", "--no-half", "--precision", "full", "--api",
           "--skip-version-check", "--no-download-sd-model", "--disable-nan-check"),
)
FORGE = HostSpec(
    key="forge", tarball="forge-dfdcbab6.tar.xz", top="forge",
    extra_pip=(("--no-deps", "openai-clip"), ("joblib", "ftfy", "regex"),
               ("fvcore", "mediapipe", "onnxruntime", "svglib", "numpy==1.26.2")),
    flags=("--always-cpu", "--skip-torch-cuda-test", "--api", "--skip-version-check", "--all-in-fp32",
           "--disable-gpu-warning"),
)
SPECS = {s.key: s for s in (A1111, FORGE)}


def snapshot_hash(spec: HostSpec, folder: Path) -> str:
    h = hashlib.sha256()
    with open(folder / spec.tarball, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _run(cmd, log, **kw):
    print("+", " ".join(map(str, cmd)), file=log, flush=True)
    subprocess.run([str(c) for c in cmd], check=True, stdout=log, stderr=subprocess.STDOUT, **kw)


def build_venv(spec: HostSpec, folder: Path, log=sys.stderr) -> Path:
    """The host's own venv (Python 3.11), built once per snapshot hash; returns its python."""
    base = cache_root() / f"{spec.key}-{snapshot_hash(spec, folder)}"
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # .ci/run may be building it already, in the background
        return _build_venv(spec, folder, base, log)


def _build_venv(spec: HostSpec, folder: Path, base: Path, log) -> Path:
    venv = base / "venv"
    python = venv / "bin" / "python"
    done = base / "venv.complete"
    if done.exists() and python.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    interpreter = shutil.which("python3.11") or sys.executable
    _run([interpreter, "-m", "venv", venv], log)
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run([*pip, "torch==2.13.0"], log)
    _run([*pip, "--no-deps", "torchvision==0.28.0"], log)
    site = subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   text=True).strip()
    _run([python, folder / "patch_torchvision.py", site], log)
    with tarfile.open(folder / spec.tarball) as tar:
        member = tar.extractfile(f"{spec.top}/requirements_versions.txt")
        lines = member.read().decode().splitlines()
    reqs = [line for line in lines
            if not line.startswith("setuptools")]
    req_file = base / "requirements.txt"
    req_file.write_text("\n".join(reqs) + "\n")
    _run([*pip, "-r", req_file, "setuptools>=77,<81"], log)
    for args in spec.extra_pip:
        _run([*pip, *args], log)
    done.write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
    return python


def hf_home(python: Path, folder: Path, log=sys.stderr) -> Path:
    """An offline Hugging Face cache with the CLIP-L tokenizer and config (A1111 asks the hub at start)."""
    home = python.parents[2] / "hf"
    if not (home / "hub" / "version.txt").exists():
        _run([python, folder / "make_offline_clip.py", home], log)
        (home / "hub" / "version.txt").write_text("1")
    return home


def unpack(spec: HostSpec, folder: Path, dest: Path | None = None) -> Path:
    """The host's tree, unpacked once per snapshot into the cache (or into ``dest``); returns its root."""
    dest = dest or cache_root() / f"{spec.key}-{snapshot_hash(spec, folder)}" / "tree"
    root = dest / spec.top
    if (root / "launch.py").exists():
        return root
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / spec.tarball) as tar:
        tar.extractall(dest, filter="data")
    return root


def install_extension(tree: Path, python: Path, log=sys.stderr, source: Path = REPO) -> Path:
    """``git clone`` of this checkout's working tree into ``extensions/supermerger`` (uncommitted changes
    included, as the tests must test what is here), then its install.py as the launcher runs it."""
    ext = tree / "extensions" / "supermerger"
    shutil.rmtree(ext, ignore_errors=True)
    _run(["git", "clone", "-q", "--no-hardlinks", source, ext], log)
    # the working tree's changes (tracked and untracked, not ignored) over the clone's HEAD
    files = subprocess.check_output(["git", "-C", source, "ls-files", "-co", "--exclude-standard", "-z"],
                                    text=True).split("\0")
    for rel in filter(None, files):
        src = source / rel
        if src.is_file() and not rel.startswith("tests/"):
            (ext / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ext / rel)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    _run([python, ext / "install.py"], log, cwd=tree, env=env)
    return ext


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running WebUI: its URL, its console (every line kept), its process."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path = proc, url, log_path
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        with open(self.log_path, "a", encoding="utf-8") as log:
            for line in self.proc.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()

    def console(self, since: int = 0) -> str:
        return "".join(self.lines[since:])

    def mark(self) -> int:
        return len(self.lines)

    def api(self, path: str, payload=None, method: str | None = None, timeout: float = 900):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method or ("POST" if data else "GET"),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def _status_bytes(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def rss_bytes(self) -> int:
        """Resident memory of the server process now."""
        return self._status_bytes("VmRSS")

    def peak_rss_bytes(self) -> int:
        """Its peak resident memory (since the start, or since ``reset_peak``)."""
        return self._status_bytes("VmHWM")

    def reset_peak(self) -> None:
        """Resets VmHWM (Linux ≥ 4.0: writing 5 to clear_refs)."""
        with contextlib.suppress(OSError):
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start(spec: HostSpec, tree: Path, python: Path, hf: Path, *, ckpt_dir: Path, data_home: Path,
          log_path: Path, timeout: float = 600, extra_flags=()) -> Server:
    port = free_port()
    env = {**os.environ, "HF_HOME": str(hf), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "SUPERMERGER_HOME": str(data_home), "GRADIO_ANALYTICS_ENABLED": "False",
           "DO_NOT_TRACK": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [str(python), "launch.py", "--skip-prepare-environment", *spec.flags, "--port", str(port),
           "--ckpt-dir", str(ckpt_dir), *extra_flags]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, bufsize=1)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.key} exited with {proc.returncode}:\n{server.console()[-4000:]}")
        try:
            server.api("/sdapi/v1/sd-models", timeout=5)
            return server
        except OSError:
            time.sleep(1)
    server.stop()
    raise RuntimeError(f"{spec.key} did not answer within {timeout:.0f} s:\n{server.console()[-4000:]}")


if __name__ == "__main__":  # build a host's venv by hand
    folder = hosts_dir()
    if folder is None:
        sys.exit("no ../shared/hosts found (set SUPERMERGER_HOSTS_DIR)")
    for key in sys.argv[1:] or list(SPECS):
        t = time.monotonic()
        py = build_venv(SPECS[key], folder, log=sys.stdout)
        hf_home(py, folder, log=sys.stdout)
        print(key, py, f"{time.monotonic() - t:.0f} s")

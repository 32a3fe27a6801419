"""The streaming executor: read, merge and write one bounded chunk at a time.

Three stages overlap: a reader thread maps the input files' chunks (or reads them into buffers),
the calling thread computes, and a sink consumes the result — a writer thread appending to a safetensors
file whose header was written first (``"file"``), new tensors in memory (``"memory"``), or the
tensors of an existing state dict overwritten in place (``"into"``: a live model re-merged with
new ratios, no second copy of it). Chunks in flight and their buffers are bounded by a fixed
number of recycled slots, so peak memory is set by the chunk size, not by the size of the models.

Where the time goes, and what is done about it (see bench/README.md for the figures):
- ``import torch`` takes 1-2 s: the cyclic garbage collector is paused during it and the merge,
  and the command line skips the interpreter's teardown of torch at exit (another 0.4 s).
- Writing the output's pages is the dearest part; see io/writer.py for how a replaced output's
  pages are recycled.
- Arithmetic runs on one intra-op thread: the chunks are small and the other core is busy with
  reading and writing; torch's two-thread default made element-wise work 5-30x slower here when
  the machine had other load (threads waiting on each other at every operation).
- Weight sum of half-precision tensors runs as one fused ``lerp`` (float32 arithmetic inside,
  one rounding), checked at start-up to give the very bits of the float32 path; everything else
  is computed in float32 windows that stay in the CPU cache.
- On a GPU (``device="cuda"``) inputs go through pinned buffers, uploads run on a side stream
  ahead of the arithmetic, and results come back while the next chunk is being read. The same
  code runs on the CPU with ``staged=True``, which is how the tests cover it.
"""

from __future__ import annotations

import contextlib
import gc
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..errors import RecipeError, SuperMergerError
from ..io.sources import Source, torch_dtype
from .calcmodes import MergeContext
from .plan import KeyTask, MergePlan

CHUNK_ELEMS = 1 << 21  # elements per streamed chunk (4 MiB of float16)
WINDOW_ELEMS = 1 << 18  # elements per float32 compute window (1 MiB: stays in L2)
SLOTS = 4  # chunks in flight between reader, compute and writer


class MergeCancelled(SuperMergerError):
    """The merge was stopped by the user; nothing was written."""


@dataclass
class Slot:
    """Reusable byte buffers (uint8 tensors) for one chunk in flight: one per input, one for the output."""

    pin: bool = False  # page-locked, for asynchronous copies to and from a GPU
    bufs: dict = field(default_factory=dict)

    def buf(self, name: str, nbytes: int):
        import torch

        b = self.bufs.get(name)
        if b is None or b.numel() < nbytes:
            b = torch.empty(max(nbytes, 64), dtype=torch.uint8, pin_memory=self.pin)
            self.bufs[name] = b
        return b


@dataclass
class Work:
    index: int  # task index
    task: KeyTask
    start: int
    count: int
    inputs: dict  # name -> flat torch tensor (views into slot buffers or memory)
    slot: Slot | None
    home: queue.Queue | None  # the pool the slot goes back to once the chunk is consumed (None: private)
    last: bool  # last chunk of this task

    def release(self) -> None:
        if self.home is not None:
            self.home.put(self.slot)
            self.home = None


def _chunks(task: KeyTask, chunk_elems: int):
    n = task.numel
    if task.whole or task.op == "literal" or n == 0:
        yield 0, n
        return
    for start in range(0, n, chunk_elems):
        yield start, min(chunk_elems, n - start)


def _needed_inputs(plan: MergePlan, task: KeyTask) -> tuple[str, ...]:
    if task.op == "copy":
        return (task.src,)
    if task.op == "merge":
        return plan.inputs()
    return ()


def _buffered(src: Source, map_inputs: bool = True) -> bool:
    """Whether reading from ``src`` needs a buffer of ours (unmapped files; tensors in memory are viewed)."""
    return getattr(src, "buffered", False) and not (map_inputs and getattr(src, "mapped", False))


def _does_io(src: Source) -> bool:
    """Whether getting chunks from ``src`` costs time (reading, mapping): the reader thread does it."""
    return getattr(src, "buffered", False) or getattr(src, "mapped", False)


def _iter_work(plan: MergePlan, chunk_elems: int, take: Callable[[queue.Queue], Slot], pools, file_sink: bool,
               abort: threading.Event, map_inputs: bool = True):
    """Every chunk of every task, in output order, with its inputs read.

    ``pools``: (chunk slots, whole-tensor slots). A slot is taken whenever bytes must land in a
    buffer of ours (a file input, or the output bound for the file) and given back once consumed;
    the whole-tensor pool is small, so at most two whole tensors are in flight, and their buffers,
    grown to the largest tensor, are reused rather than allocated (and page-faulted) per key.
    ``map_inputs``: view file inputs through memory maps; when False they are read into the slots'
    buffers (pinned for a GPU: uploads from them are asynchronous)."""
    chunk_pool, whole_pool = pools
    for index, task in enumerate(plan.tasks):
        needed = _needed_inputs(plan, task)
        buffered = any(_buffered(plan.sources[n], map_inputs) for n in needed)
        for start, count in _chunks(task, chunk_elems):
            if abort.is_set():
                return
            pool = None
            if task.op != "literal" and (buffered or file_sink):
                pool = whole_pool if task.whole else chunk_pool
            slot = take(pool) if pool is not None else None
            inputs = {}
            for name in needed:
                src: Source = plan.sources[name]
                skey = task.src_key or task.key if name == task.src else task.key
                info = src.tensors[skey]
                n = info.numel if task.whole else count  # whole: each model's own size (inpainting A is wider)
                if map_inputs and getattr(src, "mapped", False):
                    inputs[name] = src.view(skey, start, n)
                else:
                    buf = slot.buf(name, n * info.itemsize) if slot is not None and _buffered(src, map_inputs) else None
                    inputs[name] = src.chunk(skey, start, n, buf)
            yield Work(index, task, start, count, inputs, slot, pool, start + count >= task.numel)


def _received(q: queue.Queue, abort: threading.Event, sink):
    """The reader's chunks until its end mark; gives up when the writer fails."""
    while True:
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            if abort.is_set():
                if sink is not None and sink.error is not None:
                    raise sink.error
                return
            continue
        if item is None:
            return
        yield item


class _Reader(threading.Thread):
    def __init__(self, items, out_q: queue.Queue, abort: threading.Event):
        super().__init__(daemon=True, name="supermerger-reader")
        self.items, self.out_q, self.abort = items, out_q, abort
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for w in self.items:
                self._put(w)
        except _Aborted:
            pass
        except BaseException as e:  # handed to the main thread
            self.error = e
        self._put(None)

    def _put(self, item) -> None:
        while not self.abort.is_set():
            try:
                self.out_q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


# -- arithmetic ----------------------------------------------------------------------------------

_EXACT_LERP: dict = {}


def fused_lerp_is_exact(device, dtype) -> bool:
    """Whether ``torch.lerp`` on ``dtype`` tensors gives the bits of float32 lerp rounded once.

    True for float32 itself and, on the PyTorch builds we know, for float16/bfloat16 (they compute
    in float32 inside); checked once per device and dtype rather than assumed."""
    import torch

    if dtype == torch.float32:
        return True
    if dtype not in (torch.float16, torch.bfloat16):
        return False
    key = (str(device), dtype)
    if key not in _EXACT_LERP:
        g = torch.Generator().manual_seed(0)
        n = 65536 + 37  # odd length: the scalar tail is checked too
        a = (torch.randn(n, generator=g) * 0.05).to(dtype).to(device)
        b = (torch.randn(n, generator=g) * 0.05).to(dtype).to(device)
        ok = True
        for alpha in (0.5, 0.3, 0.7, 1 / 3, 0.0001, 0.9999, -0.25, 1.5):
            ref = torch.lerp(a.float(), b.float(), alpha).to(dtype)
            ok = ok and torch.equal(torch.lerp(a, b, alpha).view(torch.int16), ref.view(torch.int16))
        _EXACT_LERP[key] = ok
    return _EXACT_LERP[key]


class Computer:
    """Turns input chunks into output chunks; shared by every sink. One instance per compute thread
    (it owns scratch buffers)."""

    def __init__(self, plan: MergePlan, device: str = "cpu", window: int = WINDOW_ELEMS, stats: dict | None = None,
                 staged: bool | None = None, chunk_elems: int = CHUNK_ELEMS):
        import torch

        self.plan = plan
        self.stats = stats
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:  # "cuda" and "cuda:0" must compare equal below
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.staged = (self.device.type != "cpu") if staged is None else staged
        self.window = chunk_elems if self.staged else window
        self.scratch = {n: torch.empty(self.window, dtype=torch.float32, device=self.device) for n in plan.inputs()}
        self.whole_bufs: dict = {}
        self.gamma = plan.recipe.gamma
        self.seed = plan.recipe.seed
        self.lerp_ok = plan.mode.id == "weight_sum" and plan.calcmode.id == "normal"
        if self.staged:
            # Two banks of device copies of the inputs' bytes: chunk i+1 is uploaded into one while
            # chunk i is computed from the other.
            nbytes = chunk_elems * 8
            self.banks = [{n: torch.empty(nbytes, dtype=torch.uint8, device=self.device) for n in plan.inputs()}
                          for _ in range(2)]
            self.bank_free = [None, None]  # event: the arithmetic that last read that bank is done
            self.flip = 0
            self.out_dev = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            self.upload_stream = torch.cuda.Stream(self.device) if self.cuda else None

    def compute_into(self, w: Work, out) -> None:
        """Write the output of chunk ``w`` into the flat tensor ``out`` (output dtype)."""
        import torch

        task = w.task
        if task.op == "literal":
            out.copy_(torch.tensor(task.value, dtype=out.dtype))
            return
        if task.op == "copy":
            src = w.inputs[task.src]
            if src.data_ptr() != out.data_ptr() or src.device != out.device:
                out.copy_(src)
            return
        names = self.plan.inputs()
        ctx = MergeContext(task.key, self.plan.mode, self.gamma, self.stats, self.seed)
        fn = self.plan.calcmode.fn
        if task.whole:
            if self._moves_in_place(task, w, out):
                out.copy_(w.inputs["A"])  # A in the output dtype; the method moves B's values in
                fn(out.view(task.shape), w.inputs["B"].view(task.shape), None, task.alpha, task.beta, ctx)
                return
            out.copy_(self._whole(task, w, names, ctx, fn).reshape(-1))
            return
        offset = None
        if task.adjust is not None and task.adjust.offset is not None:
            offset = torch.tensor(task.adjust.offset, dtype=torch.float32, device=self.device)
        scale = task.adjust.scale if task.adjust is not None else 1.0
        if self.staged:
            self._staged(w, out, names, ctx, fn, scale, offset)
            return
        if self._can_fuse(task, w.inputs, out):
            torch.lerp(w.inputs["A"], w.inputs["B"], task.alpha, out=out)
            return
        for s in range(0, w.count, self.window):
            n = min(self.window, w.count - s)
            win = {name: self.scratch[name][:n].copy_(w.inputs[name][s:s + n]) for name in names}
            r = fn(win["A"], win["B"], win.get("C"), task.alpha, task.beta, ctx)
            self._finish(r, w.start + s, n, scale, offset)
            out[s:s + n].copy_(r)

    def _moves_in_place(self, task: KeyTask, w: Work, out) -> bool:
        """A value-moving method (tensor exchange) can skip the float32 copies: every value of the
        result is a value of A or B, and the copy into the output dtype rounds it as the float32
        route would (float32 holds every fp16 / bf16 value exactly)."""
        if not self.plan.calcmode.moves_values or task.adjust is not None or task.channels is not None:
            return False
        a, b = w.inputs["A"], w.inputs["B"]
        return (self.device.type == "cpu" and out.device.type == "cpu" and a.device.type == "cpu"
                and b.device.type == "cpu" and a.is_floating_point() and b.is_floating_point()
                and out.data_ptr() != b.data_ptr())

    def _can_fuse(self, task: KeyTask, inputs, out) -> bool:
        if not self.lerp_ok or task.adjust is not None:
            return False
        a, b = inputs["A"], inputs["B"]
        return (a.dtype == b.dtype == out.dtype and a.device == b.device == out.device == self.device
                and fused_lerp_is_exact(self.device, a.dtype))

    @staticmethod
    def _finish(r, start: int, n: int, scale: float, offset) -> None:
        if scale != 1.0:
            r.mul_(scale)
        if offset is not None:
            r.add_(offset[start:start + n])

    def _staged(self, w: Work, out, names, ctx, fn, scale: float, offset) -> None:
        """One whole chunk on the device: upload (side stream), compute, copy back (asynchronous)."""
        import torch

        task, n = w.task, w.count
        bank = self.banks[self.flip]
        wait = self.bank_free[self.flip]
        dev = {}
        stream = torch.cuda.stream(self.upload_stream) if self.upload_stream is not None else contextlib.nullcontext()
        with stream:
            if wait is not None:
                self.upload_stream.wait_event(wait)
            for name in names:
                src = w.inputs[name]
                if src.device == self.device:
                    dev[name] = src
                    continue
                raw = bank[name][: n * src.element_size()].view(src.dtype)
                raw.copy_(src, non_blocking=True)
                dev[name] = raw
        if self.upload_stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.upload_stream)
        if self._can_fuse(task, dev, dev["A"]) and out.dtype == dev["A"].dtype:
            r16 = self.out_dev[: n * out.element_size()].view(out.dtype)
            torch.lerp(dev["A"], dev["B"], task.alpha, out=r16)
            out.copy_(r16, non_blocking=True)
        else:
            win = {name: self.scratch[name][:n].copy_(dev[name]) for name in names}
            r = fn(win["A"], win["B"], win.get("C"), task.alpha, task.beta, ctx)
            self._finish(r, w.start, n, scale, offset)
            if out.device == self.device:
                out.copy_(r)
            else:
                r_out = self.out_dev[: n * out.element_size()].view(out.dtype)
                r_out.copy_(r)
                out.copy_(r_out, non_blocking=True)
        if self.cuda:
            self.bank_free[self.flip] = torch.cuda.current_stream(self.device).record_event()
        self.flip ^= 1

    def fence(self):
        """An event that completes when everything queued so far is done (None: already done)."""
        if not self.cuda:
            return None
        import torch

        return torch.cuda.current_stream(self.device).record_event()

    def _whole(self, task: KeyTask, w: Work, names, ctx, fn):
        import torch

        shape = task.shape
        # A private float32 copy per input (the method may overwrite it; never a view of the caller's
        # tensors), in buffers kept from key to key: fresh ones would be page-faulted in every time.
        t = {n: self._whole_scratch(n, w.inputs[n].numel()).copy_(w.inputs[n]) for n in names}
        if task.channels is not None:
            # inpainting / pix2pix model A: merge only the first channels of the first conv
            a_full = t["A"].reshape(shape)
            part = {n: (t[n].reshape(shape)[:, :task.channels] if n == "A" else
                        t[n].reshape(shape[0], -1, *shape[2:])[:, :task.channels]).contiguous() for n in names}
            merged = fn(part["A"], part["B"], part.get("C"), task.alpha, task.beta, ctx)
            a_full[:, :task.channels] = merged
            result = a_full
        else:
            result = fn(t["A"].reshape(shape), t["B"].reshape(shape), t["C"].reshape(shape) if "C" in t else None,
                        task.alpha, task.beta, ctx)
        if task.adjust is not None:
            result = result * task.adjust.scale
            if task.adjust.offset is not None:
                result = result + torch.tensor(task.adjust.offset, dtype=result.dtype, device=result.device)
        return result

    def _whole_scratch(self, name: str, numel: int):
        import torch

        buf = self.whole_bufs.get(name)
        if buf is None or buf.numel() < numel:
            buf = self.whole_bufs[name] = None  # free the old one first
            buf = self.whole_bufs[name] = torch.empty(numel, dtype=torch.float32, device=self.device)
        return buf[:numel]


@contextlib.contextmanager
def intra_op_threads(n: int):
    """Run torch's CPU kernels on ``n`` threads inside the block, then restore the caller's setting."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


# -- sinks ---------------------------------------------------------------------------------------

class FileSink:
    """Append output chunks to a safetensors file on a writer thread (header already written)."""

    def __init__(self, writer, abort: threading.Event):
        self.writer, self.abort = writer, abort
        self.q: queue.Queue = queue.Queue(maxsize=SLOTS)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="supermerger-writer")
        self.thread.start()

    def out_chunk(self, w: Work):
        import torch

        dtype = torch_dtype(w.task.dtype)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if w.slot is None:
            w.slot = Slot()  # private: a literal
        if w.count == 0:
            return torch.empty(0, dtype=dtype)
        return w.slot.buf("out", w.count * itemsize)[: w.count * itemsize].view(dtype)

    @staticmethod
    def passthrough(w: Work) -> bool:
        """A plain copy with unchanged dtype goes to the file without touching the bytes."""
        t = w.task
        src = w.inputs[t.src]
        return t.op == "copy" and src.dtype == torch_dtype(t.dtype) and src.is_contiguous() and src.device.type == "cpu"

    def submit(self, w: Work, data) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put((w, data), timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is None:
                    return
                w, data = item
                if self.abort.is_set():
                    continue
                self.writer.write(data)
                w.release()
        except BaseException as e:
            self.error = e
            self.abort.set()

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _bytes_of(t):
    """The bytes of a flat contiguous CPU tensor, without a copy (bfloat16 has no numpy type: view as bytes)."""
    import torch

    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else b""


def _into_targets(plan: MergePlan, target: Mapping) -> dict:
    """The destination tensor of every task, checked before anything is written."""
    import torch

    dests, problems = {}, []
    for task in plan.tasks:
        t = target.get(task.key)
        if not isinstance(t, torch.Tensor):
            problems.append(f"{task.key}: missing")
        elif tuple(t.shape) != tuple(task.shape):
            problems.append(f"{task.key}: shape {list(t.shape)}, the merge gives {list(task.shape)}")
        elif not t.is_contiguous():
            problems.append(f"{task.key}: not contiguous")
        else:
            dests[task.key] = t.view(-1)
    if problems:
        shown = "\n  ".join(problems[:5]) + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise RecipeError(f"The state dict to merge into does not fit this merge ({len(problems)} keys):\n  {shown}",
                          "Merge into a state dict of the same architecture as model A (all keys, same shapes).")
    return dests


# -- the loop ------------------------------------------------------------------------------------

class _Aborted(Exception):
    """The reader stops because the merge is being torn down."""


def execute(plan: MergePlan, sink_kind: str, *, writer=None, target: Mapping | None = None, device: str = "cpu",
            progress: Callable[[int, int], None] | None = None, stop: threading.Event | None = None,
            chunk_elems: int = CHUNK_ELEMS, window: int = WINDOW_ELEMS, staged: bool | None = None,
            threads: int | None = 1) -> dict | None:
    """Run ``plan``. ``sink_kind``: "file" (needs ``writer``), "memory" (returns a new state dict) or
    "into" (overwrites the tensors of ``target`` in place and returns it).

    ``threads``: torch intra-op threads for the arithmetic (None keeps the caller's setting).
    ``staged``: compute a whole chunk at a time through device buffers (default: on GPUs only).
    An "into" merge that fails or is stopped midway leaves ``target`` partly merged."""
    if sink_kind not in ("file", "memory", "into"):
        raise ValueError(f"unknown sink {sink_kind!r}")
    abort = threading.Event()
    reader: _Reader | None = None
    sink = FileSink(writer, abort) if sink_kind == "file" else None
    gc_was_enabled = gc.isenabled()
    # The cyclic garbage collector walks torch's ~100k objects over and over during its import
    # (a few tenths of a second); the merge itself makes no cycles worth collecting.
    gc.disable()
    try:
        import torch

        dests = _into_targets(plan, target) if sink_kind == "into" else None
        dev = torch.device(device)
        chunk_pool: queue.Queue = queue.Queue()
        whole_pool: queue.Queue = queue.Queue()
        for _ in range(SLOTS):
            chunk_pool.put(Slot(pin=dev.type == "cuda"))
        for _ in range(2):  # one whole tensor computing, the next one being read
            whole_pool.put(Slot())

        def take(pool: queue.Queue) -> Slot:
            while True:
                try:
                    return pool.get(timeout=0.1)
                except queue.Empty:
                    if abort.is_set():
                        raise _Aborted from None

        with intra_op_threads(threads) if threads and dev.type == "cpu" else contextlib.nullcontext():
            stats = plan.calcmode.prepass(plan) if plan.calcmode.prepass is not None else None
            computer = Computer(plan, device, window, stats, staged, chunk_elems)
            # Staged (GPU) merges read into pinned buffers instead of mapping: uploads from mapped
            # (pageable) memory would not overlap with anything.
            items = _iter_work(plan, chunk_elems, take, (chunk_pool, whole_pool), sink is not None, abort,
                               map_inputs=not computer.staged)
            if any(_does_io(s) for s in plan.sources.values()):
                work_q: queue.Queue = queue.Queue(maxsize=SLOTS)
                reader = _Reader(items, work_q, abort)
                items = _received(work_q, abort, sink)
                reader.start()
            result = _run(plan, items, computer, sink, dests, progress, stop)
        if reader is not None:
            reader.join()
            if reader.error is not None:
                raise reader.error
        if sink is not None:
            sink.close()
            sink = None
    except BaseException:
        abort.set()
        if sink is not None:
            sink.q.put(None)
        raise
    finally:
        abort.set()
        if reader is not None:
            reader.join(timeout=5)
        if gc_was_enabled:
            gc.enable()
    if sink_kind == "memory":
        return result
    if sink_kind == "into":
        return target  # type: ignore[return-value]
    return None


def _run(plan: MergePlan, items, computer: Computer, sink: FileSink | None, dests: dict | None,
         progress, stop) -> dict:
    import torch

    result: dict = {}
    total = plan.bytes_to_write()
    done = 0
    pending: list = []  # chunks whose device work may still be running: (work, payload, event)

    def hand_over(w: Work, payload, event) -> None:
        if event is not None:
            event.synchronize()
        if sink is not None:
            sink.submit(w, payload)  # the writer gives the slot back once written
        else:
            w.release()

    for w in items:
        if stop is not None and stop.is_set():
            raise MergeCancelled("The merge was stopped; nothing was written.")
        task = w.task
        if sink is not None:
            if sink.passthrough(w):
                payload, event = _bytes_of(w.inputs[task.src]), None
            else:
                out = sink.out_chunk(w)
                computer.compute_into(w, out)
                payload, event = _bytes_of(out), computer.fence()
        else:
            if dests is not None:
                flat = dests[task.key]
            else:
                dest = result.get(task.key)
                if dest is None:
                    dest = result[task.key] = torch.empty(task.shape, dtype=torch_dtype(task.dtype))
                flat = dest.view(-1)
            computer.compute_into(w, flat[w.start:w.start + w.count])
            payload, event = None, computer.fence()
        w.inputs = {}  # drop the references: a payload keeps alive what the writer still needs
        pending.append((w, payload, event))
        while len(pending) > (1 if event is not None else 0):
            hand_over(*pending.pop(0))
        done += w.count * torch_dtype(task.dtype).itemsize
        if progress is not None:
            progress(done, total)
    while pending:
        hand_over(*pending.pop(0))
    return result

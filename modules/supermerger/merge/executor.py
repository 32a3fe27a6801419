"""The streaming executor: read, merge and write one bounded chunk at a time.

Three stages overlap: a reader thread fills chunk buffers from the input files, the calling
thread computes (float32 windows that stay in cache, one rounding to the output dtype), and a
sink consumes the result — a writer thread appending to a safetensors file whose header was
written first, or tensors in memory. Buffers are recycled through a fixed number of slots, so
peak memory is set by the chunk size, not by the size of the models.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..errors import SuperMergerError
from ..io.sources import Source, torch_dtype
from .calcmodes import MergeContext
from .plan import KeyTask, MergePlan

CHUNK_ELEMS = 1 << 21  # elements per streamed chunk (8 MiB of float32)
WINDOW_ELEMS = 1 << 18  # elements per float32 compute window (1 MiB: stays in L2)
SLOTS = 4  # chunks in flight between reader, compute and writer


class MergeCancelled(SuperMergerError):
    """The merge was stopped by the user; nothing was written."""


@dataclass
class Slot:
    """Reusable byte buffers for one chunk in flight: one per input and one for the output."""

    bufs: dict[str, bytearray] = field(default_factory=dict)

    def buf(self, name: str, nbytes: int) -> bytearray:
        b = self.bufs.get(name)
        if b is None or len(b) < nbytes:
            b = bytearray(max(nbytes, 64))
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
    last: bool  # last chunk of this task


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


class _Reader(threading.Thread):
    def __init__(self, plan: MergePlan, out_q: queue.Queue, free: queue.Queue, chunk_elems: int, abort: threading.Event):
        super().__init__(daemon=True, name="supermerger-reader")
        self.plan, self.out_q, self.free, self.chunk_elems, self.abort = plan, out_q, free, chunk_elems, abort
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for index, task in enumerate(self.plan.tasks):
                needed = _needed_inputs(self.plan, task)
                for start, count in _chunks(task, self.chunk_elems):
                    if self.abort.is_set():
                        return
                    slot = self.free.get() if needed and not task.whole else None
                    inputs = {}
                    for name in needed:
                        src: Source = self.plan.sources[name]
                        skey = task.src_key or task.key if name == task.src else task.key
                        if task.whole:
                            inputs[name] = src.tensor(skey).reshape(-1)
                        else:
                            info = src.tensors[skey]
                            buf = slot.buf(name, count * info.itemsize) if slot else None
                            inputs[name] = src.chunk(skey, start, count, buf)
                    last = start + count >= task.numel
                    self._put(Work(index, task, start, count, inputs, slot, last))
            self._put(None)
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


class Computer:
    """Turns input chunks into output chunks. Shared by file and in-memory merges."""

    def __init__(self, plan: MergePlan, device: str = "cpu", window: int = WINDOW_ELEMS, stats: dict | None = None):
        import torch

        self.plan = plan
        self.stats = stats
        self.device = torch.device(device)
        self.window = window if self.device.type == "cpu" else CHUNK_ELEMS
        self.scratch = {n: torch.empty(self.window, dtype=torch.float32, device=self.device) for n in ("A", "B", "C")}
        self.gamma = plan.recipe.gamma
        self.seed = plan.recipe.seed

    def compute_into(self, w: Work, out) -> None:
        """Write the output of chunk ``w`` into the flat tensor ``out`` (output dtype)."""
        import torch

        task = w.task
        if task.op == "literal":
            out.copy_(torch.tensor(task.value, dtype=out.dtype))
            return
        if task.op == "copy":
            out.copy_(w.inputs[task.src])
            return
        names = self.plan.inputs()
        ctx = MergeContext(task.key, self.plan.mode, self.gamma, self.stats, self.seed)
        fn = self.plan.calcmode.fn
        if task.whole:
            result = self._whole(task, w, names, ctx, fn)
            out.copy_(result.reshape(-1))
            return
        offset = None
        if task.adjust is not None and task.adjust.offset is not None:
            offset = torch.tensor(task.adjust.offset, dtype=torch.float32, device=self.device)
        scale = task.adjust.scale if task.adjust is not None else 1.0
        on_cpu = self.device.type == "cpu"
        for s in range(0, w.count, self.window):
            n = min(self.window, w.count - s)
            win = {}
            for name in names:
                t = self.scratch[name][:n]
                t.copy_(w.inputs[name][s:s + n], non_blocking=not on_cpu)
                win[name] = t
            r = fn(win["A"], win["B"], win.get("C"), task.alpha, task.beta, ctx)
            if scale != 1.0:
                r.mul_(scale)
            if offset is not None:
                r.add_(offset[w.start + s:w.start + s + n])
            out[s:s + n].copy_(r, non_blocking=False)

    def _whole(self, task: KeyTask, w: Work, names, ctx, fn):
        shape = task.shape
        t = {n: w.inputs[n].to(self.device, torch_float32()) for n in names}
        if task.channels is not None:
            # inpainting / pix2pix model A: merge only the first channels of the first conv
            a_full = t["A"].reshape(shape).clone()
            part = {n: (t[n].reshape(shape)[:, :task.channels] if n == "A" else
                        t[n].reshape(shape[0], -1, *shape[2:])[:, :task.channels]).contiguous() for n in names}
            merged = fn(part["A"], part["B"], part.get("C"), task.alpha, task.beta, ctx)
            a_full[:, :task.channels] = merged
            result = a_full
        else:
            result = fn(*(t[n].reshape(shape).clone() for n in ("A", "B")),
                        t["C"].reshape(shape).clone() if "C" in t else None, task.alpha, task.beta, ctx)
        if task.adjust is not None:
            result = result * task.adjust.scale
            if task.adjust.offset is not None:
                import torch

                result = result + torch.tensor(task.adjust.offset, dtype=result.dtype, device=result.device)
        return result


def torch_float32():
    import torch

    return torch.float32


class FileSink:
    """Append output chunks to a safetensors file on a writer thread (header already written)."""

    def __init__(self, writer, free: queue.Queue, abort: threading.Event):
        self.writer, self.free, self.abort = writer, free, abort
        self.q: queue.Queue = queue.Queue(maxsize=SLOTS)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="supermerger-writer")
        self.thread.start()

    def out_chunk(self, w: Work):
        import torch

        dtype = torch_dtype(w.task.dtype)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        slot = w.slot or Slot()
        buf = slot.buf("out", w.count * itemsize)
        w.slot = slot
        if w.count == 0:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(memoryview(buf)[: w.count * itemsize], dtype=dtype, count=w.count)

    def passthrough(self, w: Work) -> bool:
        """A plain copy with unchanged dtype goes to the file without touching the bytes."""
        t = w.task
        return t.op == "copy" and w.inputs[t.src].dtype == torch_dtype(t.dtype) and w.inputs[t.src].is_contiguous()

    def submit(self, w: Work, data, pooled: bool) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.q.put((w, data, pooled), timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is None:
                    return
                w, data, pooled = item
                if self.abort.is_set():
                    continue
                self.writer.write(data)
                if pooled and w.slot is not None:
                    self.free.put(w.slot)
        except BaseException as e:
            self.error = e
            self.abort.set()

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def execute(plan: MergePlan, sink_kind: str, *, writer=None, device: str = "cpu",
            progress: Callable[[int, int], None] | None = None, stop: threading.Event | None = None,
            chunk_elems: int = CHUNK_ELEMS, window: int = WINDOW_ELEMS) -> dict | None:
    """Run ``plan``; ``sink_kind`` is "file" (needs ``writer``) or "memory" (returns a state dict)."""
    import torch

    abort = threading.Event()
    free: queue.Queue = queue.Queue()
    for _ in range(SLOTS):
        free.put(Slot())
    work_q: queue.Queue = queue.Queue(maxsize=SLOTS)
    reader = _Reader(plan, work_q, free, chunk_elems, abort)
    stats = plan.calcmode.prepass(plan) if plan.calcmode.prepass is not None else None
    computer = Computer(plan, device, window, stats)
    sink = FileSink(writer, free, abort) if sink_kind == "file" else None
    result: dict = {}
    total = plan.bytes_to_write()
    done = 0
    reader.start()
    try:
        while True:
            if stop is not None and stop.is_set():
                raise MergeCancelled("The merge was stopped; nothing was written.")
            w = work_q.get()
            if w is None:
                if reader.error is not None:
                    raise reader.error
                break
            task = w.task
            if sink is not None:
                if sink.passthrough(w):
                    data = w.inputs[task.src]
                    sink.submit(w, memoryview(data.numpy()).cast("B") if data.numel() else b"", pooled=True)
                else:
                    out = sink.out_chunk(w)
                    computer.compute_into(w, out)
                    payload = memoryview(out.numpy()).cast("B") if out.numel() else b""
                    sink.submit(w, payload, pooled=not task.whole and w.slot is not None and _slot_from_pool(w))
            else:
                dest = result.get(task.key)
                if dest is None:
                    dest = torch.empty(task.shape, dtype=torch_dtype(task.dtype))
                    result[task.key] = dest
                flat = dest.view(-1)[w.start:w.start + w.count]
                computer.compute_into(w, flat)
                if w.slot is not None:
                    free.put(w.slot)
            done += w.count * torch.empty(0, dtype=torch_dtype(task.dtype)).element_size()
            if progress is not None:
                progress(done, total)
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
        reader.join(timeout=5)
    return result if sink_kind == "memory" else None


def _slot_from_pool(w: Work) -> bool:
    # Whole-tensor tasks and literals get a private slot from out_chunk; it is not returned to the pool.
    return not (w.task.whole or w.task.op == "literal")

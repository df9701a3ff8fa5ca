"""The processes of one training run, as torchrun started them, and what they agree on each step.

Why the ranks share one stream of windows (trainer.Trainer draws every window of a step on every
rank and keeps its own slice) rather than each drawing from a stream of its own: the steps then
learn from exactly the windows a single process with the same batch would, so the weights equal a
single process's (tests check it), and every rank's state is the whole state: rank 0 alone saves
a checkpoint that resumes exactly on any number of processes. Drawing the start positions of the
other ranks' windows costs a few random integers; only the rank's own windows are read.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import re
import signal
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from ..errors import RepytilianError
from ..runtime.cpu import usable_cores

DEFAULT_TIMEOUT_SECONDS = 300.0  # a collective that waits longer than this ends the run (REPYTILIAN_DIST_TIMEOUT)


class CommunicationError(RepytilianError):
    """Another process of the run died or stopped answering: this one cannot go on alone."""


def timeout_seconds() -> float:
    text = os.environ.get("REPYTILIAN_DIST_TIMEOUT")
    if not text:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise RepytilianError(f"REPYTILIAN_DIST_TIMEOUT must be a number of seconds above 0, got {text!r}")
    return value


def _env_int(env: Any, name: str, default: int) -> int:
    text = env.get(name)
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise RepytilianError(f"{name}={text!r} in the environment is not a number (torchrun sets it)") from None


def is_communication_failure(error: BaseException) -> bool:
    """Whether an error from a collective (or DDP's all-reduce inside backward) means a lost peer."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("Gloo", "gloo", "NCCL", "Connection closed", "Connection reset", "Timed out",
                                  "timed out", "Socket", "Broken pipe"))


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _owns_group: bool = False
    _parent: int | None = None
    _lost: bool = False  # a peer died or stopped answering (lost())
    _sigterm: Any = None  # the SIGTERM handler before start(), while this world holds it

    @classmethod
    def from_env(cls, env: Any = None) -> "World":
        """The world torchrun describes in the environment (a world of one without it)."""
        env = os.environ if env is None else env
        size = _env_int(env, "WORLD_SIZE", 1)
        rank = _env_int(env, "RANK", 0)
        if size < 1 or not 0 <= rank < size:
            raise RepytilianError(f"RANK={rank} and WORLD_SIZE={size} in the environment do not fit together")
        return cls(rank, size, _env_int(env, "LOCAL_RANK", 0), _env_int(env, "LOCAL_WORLD_SIZE", 1))

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"{self.size} processes" if self.distributed else "1 process"

    # --- starting and ending -------------------------------------------------------------

    def place(self, device: torch.device) -> torch.device:
        """Each process of a machine gets a GPU of its own: cuda becomes cuda:LOCAL_RANK."""
        if not self.distributed:
            return device
        if device.type == "cuda":
            if device.index is not None and self.local_size > 1:
                raise RepytilianError(f"`device` {device} names one GPU, but torchrun started {self.local_size} "
                                      "processes on this machine: use `device` cuda (each takes the GPU of its "
                                      "LOCAL_RANK)", ("device",))
            index = self.local_rank if device.index is None else device.index
            if index >= torch.cuda.device_count():
                raise RepytilianError(f"process {self.local_rank} of this machine has no GPU of its own: "
                                      f"{torch.cuda.device_count()} GPU(s) for {self.local_size} processes "
                                      "(use --nproc_per_node at most the number of GPUs)")
            return torch.device("cuda", index)
        if device.type != "cpu":
            raise RepytilianError(f"training on several processes works on CUDA GPUs (NCCL) and CPUs (Gloo), "
                                  f"not on {device.type}; use `device` cpu or cuda", ("device",))
        return device

    def start(self, device: torch.device) -> None:
        """Join the process group (NCCL on CUDA, Gloo on CPU), unless this is a world of one."""
        self.device = device
        if not self.distributed:
            return
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            self._share_cores()
        if not dist.is_initialized():  # a program that opened the group itself keeps it
            backend = "nccl" if device.type == "cuda" else "gloo"
            try:
                dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()))
            except (RuntimeError, ValueError) as e:
                raise CommunicationError(f"could not join the other processes of this run ({_first_line(e)})") from None
            self._owns_group = True
        if dist.get_world_size() != self.size:
            raise RepytilianError(f"the process group has {dist.get_world_size()} processes, WORLD_SIZE says {self.size}")
        self._parent = os.getppid()
        self._hold_sigterm_once_lost()

    def _hold_sigterm_once_lost(self) -> None:
        """When a process of the job dies, torchrun sends SIGTERM to the others. One that has found the
        loss (lost()) is on its way out with the error that says so, and SIGTERM's default ended it
        before it could (the job then said only which process died, under load): SIGTERM is let pass
        from then on (torchrun sends SIGKILL after its grace period if a process hangs). Before the
        loss, SIGTERM does what it did (in training, StopRequest's own handler comes first)."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals are for the main thread
        previous = signal.getsignal(signal.SIGTERM)

        def handle(signum: int, frame: Any) -> None:
            if self._lost or previous == signal.SIG_IGN:
                return
            if callable(previous):
                previous(signum, frame)
                return
            signal.signal(signum, signal.SIG_DFL)  # as before: the default ends the process
            os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, handle)
        self._sigterm = previous

    def _share_cores(self) -> None:
        """torchrun sets OMP_NUM_THREADS=1 for every process when it starts several; on a CPU each
        process does better with its share of the cores (any other OMP_NUM_THREADS is kept)."""
        if self.local_size > 1 and os.environ.get("OMP_NUM_THREADS") in (None, "1"):
            torch.set_num_threads(max(1, usable_cores() // self.local_size))

    def close(self) -> None:
        if self._owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns_group = False
        if self._sigterm is not None and not self._lost:  # once lost, the process ends with its error
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None

    # --- what the processes agree on -----------------------------------------------------

    def orphaned(self) -> bool:
        """torchrun is gone (e.g. killed by a signal it does not forward): time to save and stop."""
        return self._parent is not None and os.getppid() != self._parent

    def _all_reduce(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        tensor = torch.as_tensor(values, dtype=torch.float64)
        tensor = tensor.to(self.device)
        try:
            dist.all_reduce(tensor)
        except Exception as e:  # noqa: BLE001 - every failure of a collective means the same here
            raise self.lost(e) from None
        return tensor.cpu()

    def agree_step(self, stop: bool, seconds: float, loss: torch.Tensor) -> tuple[bool, float, float]:
        """After a step: whether any process wants to stop, the step's time and loss averaged over
        the processes (so the time budget, the schedule and the progress bar agree everywhere)."""
        if not self.distributed:
            return stop, seconds, loss.item()
        stop = stop or self.orphaned()
        out = self._all_reduce([float(stop), seconds, float(loss.detach().float().item())])
        return bool(out[0] > 0), float(out[1]) / self.size, float(out[2]) / self.size

    def mean(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        return [float(v) / self.size for v in self._all_reduce(values)]

    def total(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        return [float(v) for v in self._all_reduce(values)]

    def same_everywhere(self, text: str, what: str) -> None:
        """Refuse to train when the processes prepared different things (data, tokenizer)."""
        if not self.distributed:
            return
        digest = hashlib.sha256(text.encode()).digest()
        mine = [float(int.from_bytes(digest[i:i + 3], "big")) for i in range(0, 12, 3)]
        total = self._all_reduce(mine)
        if [float(v) for v in total] != [v * self.size for v in mine]:
            raise RepytilianError(f"the processes of this run prepared different {what}: each needs the same "
                                  "files at the same paths (on every machine) and the same command line")

    def from_main(self, choice: str, choices: tuple[str, ...]) -> str:
        """Rank 0's choice (e.g. a measured number format), for every process."""
        if not self.distributed:
            return choice
        import torch.distributed as dist

        index = torch.tensor([choices.index(choice)], dtype=torch.int64, device=self.device)
        try:
            dist.broadcast(index, 0)
        except Exception as e:  # noqa: BLE001
            raise self.lost(e) from None
        return choices[int(index.item())]

    def lost(self, error: BaseException, step: int | None = None) -> CommunicationError:
        """This world is lost (a peer died or stopped answering): the error that says so, to raise."""
        self._lost = True
        at = "" if step is None else f" at step {step}"
        return CommunicationError(
            f"process {self.rank} of {self.size} lost the others{at}: another process of this run died or stopped "
            f"answering ({_first_line(error)}). The run cannot go on; resume from its last saved folder with `load`, "
            "on any number of processes", ("load",))

    # --- the model -----------------------------------------------------------------------

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around the module: gradients averaged over the processes in backward."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # The model's buffers (rotary tables) are the same everywhere: no broadcast each forward
        # (the switch was renamed in recent PyTorch).
        params = inspect.signature(DistributedDataParallel).parameters
        buffers = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
        try:
            return DistributedDataParallel(module, device_ids=ids, **buffers)
        except Exception as e:  # noqa: BLE001 - the first broadcast of the weights can meet a dead peer
            if is_communication_failure(e):
                raise self.lost(e) from None
            raise

    @staticmethod
    def no_sync(wrapped: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Micro-batches before the last accumulate their gradients locally: one all-reduce a step."""
        if last or not hasattr(wrapped, "no_sync"):
            return contextlib.nullcontext()
        return wrapped.no_sync()


def _first_line(error: BaseException) -> str:
    """The gist of a backend's message: its first sentence, without the source file it came from."""
    lines = str(error).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|py):\d+\]\s*", "", lines[0] if lines else type(error).__name__)
    return text.split(". ")[0][:300]

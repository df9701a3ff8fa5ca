"""Calling a decoding step built by decode_compiled.py: a shared library AOTInductor made on this
machine, loaded only where this user alone can have written it (it is native code), called either
through torch's own runner or through the library's C interface, which lets other threads run."""
from __future__ import annotations

import ctypes
import os
import stat
import weakref
from collections.abc import Callable
from pathlib import Path

import torch


def load(path: Path, let_go: bool = True) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """The built step's function of its flattened inputs (keys..., values..., idx, pos, span), from a
    library only this user can have written (it is native code: never one others could plant).
    `let_go`: other threads run while it does (NativeStep); else torch's own runner, which holds the
    interpreter's lock but costs ~17 us less a call (v2c's one-row step: 109 against 126 us, 2-core
    AVX2 EPYC), the better for the one-row step, a tenth of a millisecond that nothing waits on."""
    check_owned(path)
    allow_amx()
    return NativeStep(path) if let_go else torch._C._aoti.AOTIModelContainerRunnerCpu(str(path), 1).run


def allow_amx() -> None:
    """Ask Linux for AMX's tile state for this process: a built bf16 step's matrix kernels use the
    tiles, and the kernel gives them only to a process that asked (compiling asks, so does a bf16
    product of oneDNN's); one that only loaded a built step died of an illegal instruction at its
    first call. Where the CPU has no AMX, nothing is asked."""
    init = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    if init is not None:
        init()


def check_owned(path: Path) -> None:
    """A PermissionError unless `path` and its folder are this user's alone (native code is loaded
    only from where no one else can have planted it)."""
    for where in (path, path.parent):
        st = where.stat()
        if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & stat.S_IWOTH):
            raise PermissionError(f"{where} is not this user's alone")


class NativeStep:
    """A built library called through its C interface, which lets go of the interpreter's lock
    while the step runs (ctypes does, for every call). torch's own runner for it
    (torch._C._aoti.AOTIModelContainerRunnerCpu) holds the lock throughout: in a server, the event
    loop then stood still for every token of every batch, and 8 clients used one of two cores."""

    def __init__(self, path: Path):
        self._lib = lib = ctypes.CDLL(str(path))
        handle = ctypes.c_void_p()
        _check(lib, lib.AOTInductorModelContainerCreateWithDevice(ctypes.byref(handle), 1, b"cpu", None))
        self._handle = handle
        self._run = lib.AOTInductorModelContainerRun
        self._run.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                              ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
        weakref.finalize(self, lib.AOTInductorModelContainerDelete, handle)

    @property
    def entry(self) -> tuple[int, int]:
        """(the library's run function, this instance's container): what C code calls it with."""
        return ctypes.cast(self._run, ctypes.c_void_p).value, self._handle.value

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        handles = new_handles(inputs)  # the library takes them over, and frees them
        output = (ctypes.c_void_p * 1)()
        _check(self._lib, self._run(self._handle, (ctypes.c_void_p * len(handles))(*handles), len(handles),
                                    output, 1, None, None))
        return torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs([_capsule(output[0], None, None)])


def new_handles(tensors: list[torch.Tensor]) -> list[int]:
    """A new handle (at::Tensor*, as torch's C interface takes tensors) for each of `tensors`:
    owned by whoever it is given to (the library's run takes its inputs' over)."""
    return [_pointer(h, None) for h in torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(tensors)]


_pointer = ctypes.pythonapi.PyCapsule_GetPointer  # torch hands tensor handles over as capsules
_pointer.restype, _pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_capsule = ctypes.pythonapi.PyCapsule_New
_capsule.restype, _capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def _check(lib: ctypes.CDLL, status: int) -> None:
    if status != 0:
        message = ctypes.c_char_p()
        lib.AOTInductorGetLastError(ctypes.byref(message))
        raise RuntimeError(f"the built decoding step failed: {(message.value or b'').decode(errors='replace')}")

"""Which failures a record can cause, and which it cannot.

A model exception is answered in one of two ways (beam_pipeline/handler.py):

- **caused by records** (`caused_by_records`): the batch is bisected until only the records that fail on their own
  remain; they become `inference_error` dead letters and their neighbours are scored. Errors a record can cause:
  ValueError, ArithmeticError, LookupError and RuntimeError (shapes, dtypes, an index a value selects, our own
  "the model returned N rows for M records"), and out-of-memory on the accelerator (a smaller batch fits: bisection
  is the retry; a record that does not fit alone is dead-lettered, whole, for replay);
- **infrastructure** (everything else): re-raised, so that the bundle fails and the runner retries it (Dataflow
  retries a failed work item, restarting the worker if it has to; the DirectRunner fails the job, exit 1). A broken
  CUDA context, a driver or library mismatch, an illegal memory access, a device-side assert (the context is
  unusable after it, so every later batch would fail too), an operator not built for the device
  (NotImplementedError), host memory (MemoryError), the disk or the network (OSError), a missing module: none of
  these says anything about the records, and dead-lettering them would empty the input into the dead letters.

`BatchFailed` is what the handler raises when something a record can cause escapes outside the model call (never
for infrastructure): RunInference's exception output catches it, and only it, and the pipeline dead-letters the
batch's records.
"""

from __future__ import annotations

import re
import sys

RECORD_ERRORS = (ValueError, ArithmeticError, LookupError, RuntimeError)
# RuntimeErrors that describe the machine, not the data: CUDA/cuBLAS/cuDNN/NCCL failures, drivers, devices.
_INFRASTRUCTURE_TEXT = re.compile(
    r"CUDA error|CUDA driver|CUDA runtime|cuda runtime error|CUBLAS_STATUS|CUDNN_STATUS|cuDNN error|CUFFT|CUSOLVER|"
    r"NCCL|device-side assert|illegal memory access|illegal instruction|unspecified launch failure|ECC error|"
    r"no CUDA GPUs|CUDA-capable device|driver version|NVML|GPU is lost|device not ready|"
    r"misaligned address|launch timed out|hardware|not compiled with CUDA",
    re.IGNORECASE)
_OUT_OF_MEMORY = re.compile(r"out of memory", re.IGNORECASE)


class BatchFailed(Exception):
    """Records of a batch failed outside the model call, for a reason records can cause (see module docstring)."""


def _torch_types(*names: str) -> tuple[type, ...]:
    torch = sys.modules.get("torch")  # never imported here: only what the model already loaded can have raised
    if torch is None:
        return ()
    found = [getattr(torch, n, None) for n in names] + [getattr(getattr(torch, "cuda", None), n, None) for n in names]
    return tuple(t for t in found if isinstance(t, type))


def out_of_memory(e: BaseException) -> bool:
    """The accelerator ran out of memory (torch.OutOfMemoryError, or a RuntimeError saying so): batch-size bound."""
    oom = _torch_types("OutOfMemoryError")
    return (bool(oom) and isinstance(e, oom)) or (isinstance(e, RuntimeError) and not isinstance(e, MemoryError)
                                                  and bool(_OUT_OF_MEMORY.search(str(e))))


def caused_by_records(e: BaseException) -> bool:
    """Whether records can have caused `e` (bisect and dead-letter them) rather than the machine (re-raise)."""
    if out_of_memory(e):
        return True
    if not isinstance(e, RECORD_ERRORS) or isinstance(e, (NotImplementedError, RecursionError)):
        return False
    if isinstance(e, _torch_types("AcceleratorError", "CudaError")):
        return False
    return not _INFRASTRUCTURE_TEXT.search(str(e))

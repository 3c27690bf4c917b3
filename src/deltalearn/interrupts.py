"""Ctrl-C (SIGINT) or SIGTERM during training: finish the step, save a checkpoint, then stop.

`stop_on_signal()` replaces both handlers for the duration of a `train` call with one that only records the
request; the loop asks `requested()` at each step boundary, saves a checkpoint there and raises `TrainInterrupted`,
whose message tells the user that a rerun resumes from that step. A second signal while the first is honoured
stops at once (Python's KeyboardInterrupt); a rerun then resumes from the newest checkpoint saved before, if any.
Handlers can only be set from the main thread; elsewhere (a caller's worker thread) signals keep their own meaning.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

_requested: list[int] = []  # the signal numbers received during the current train call


class TrainInterrupted(KeyboardInterrupt):
    """Training stopped on a signal, after saving a checkpoint at a step boundary."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def _handler(signum, _frame) -> None:
    if _requested:  # asked twice: stop now
        raise KeyboardInterrupt
    _requested.append(signum)
    print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint, then stopping "
          "(send it again to stop at once, without saving)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_on_signal() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _requested.clear()
    try:
        yield
        if _requested:  # asked during the last step: training finished and was saved; stop what comes after it
            raise TrainInterrupted(f"stopped by {signal.Signals(_requested[0]).name} after training finished (its "
                                   "model is saved); rerun the same command to go on", _requested[0])
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        _requested.clear()


def requested(accelerator=None) -> bool:
    """Whether a stop was asked for; in a multi-process run, whether any process was asked (all then save)."""
    if accelerator is None or accelerator.num_processes == 1:
        return bool(_requested)
    import torch

    flag = torch.tensor([float(bool(_requested))], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def interrupted(step: int, total: int, checkpoint) -> TrainInterrupted:
    signum = _requested[0] if _requested else signal.SIGINT
    return TrainInterrupted(f"stopped by {signal.Signals(signum).name} after step {step} of {total}; saved the "
                            f"checkpoint {checkpoint}: rerun the same command to resume from it", signum)

"""A Ctrl-C that cannot be lost.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives. Inside
torch.compile's machinery (guards, finalisers, the compile itself) it can be caught and dropped,
and the fit then runs on for its remaining iterations: seen about once in thirty interrupts
during a cold compile. So the handler also latches the signal, and the progress report, called
every few iterations of every stage, and the step before any file is written raise it again.
Where it is dropped in a finaliser or a weakref callback, Python would print it with a
traceback ("Exception ignored in ..."); while latched, that report is silenced, since the
latch raises the interrupt again where the run can end with its one line."""
import signal
import sys
import threading
from contextlib import contextmanager

_pending = False


def _handler(signum, frame):
    global _pending
    _pending = True
    raise KeyboardInterrupt


def _quiet_unraisable(previous):
    def hook(unraisable):
        if _pending and isinstance(unraisable.exc_value, KeyboardInterrupt):
            return  # latched: raise_if_interrupted will end the run
        previous(unraisable)
    return hook


def raise_if_interrupted():
    if _pending:
        raise KeyboardInterrupt


@contextmanager
def latched_sigint():
    """Latch Ctrl-C for the duration; a SIGINT the shell set to be ignored stays ignored."""
    global _pending
    own = (threading.current_thread() is threading.main_thread()
           and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    old = signal.signal(signal.SIGINT, _handler) if own else None
    old_hook, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable(sys.unraisablehook)
    try:
        yield
    finally:
        if own:
            signal.signal(signal.SIGINT, old)
        sys.unraisablehook = old_hook
        _pending = False

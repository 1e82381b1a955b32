"""The ``biasscope`` command as a thin launcher: it runs the real command in a child Python
process and exits 0 only when the child both exited 0 and reported that the command
completed. User code (a factory, a model's forward) that calls ``os._exit(0)`` ends the child
without that report, so it can never look like a success (exit 2, with a paragraph).

The launcher imports no torch, typer or rich (a few milliseconds of its own plus one Python
start-up). Ctrl-C: the parent forwards SIGINT/SIGTERM to the child, waits for it, and exits
with its code (130). On Linux the child dies with the parent (a SIGKILL'd launcher leaves no
orphaned run). Under ``torchrun``, on Windows, and with ``BIASSCOPE_IN_PROCESS=1`` the
command runs in the process itself (under torchrun, torchrun is each rank's launcher)."""

from __future__ import annotations

import os
import signal
import sys

#: the environment variable naming the file descriptor the child reports completion on
DONE_FD = "BIASSCOPE_DONE_FD"
_PARENT = "BIASSCOPE_PARENT_PID"
_CHILD_CODE = "import sys; sys.path.pop(0); from biasscope.cli.launcher import child; child()"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_process() -> bool:
    return bool(
        os.environ.get("BIASSCOPE_IN_PROCESS") or os.environ.get("TORCHELASTIC_RUN_ID")
        or not hasattr(os, "posix_spawn")  # Windows: no launcher (the command runs in-process)
    )


def main() -> None:
    """The ``biasscope`` entry point."""
    if _in_process():
        from .main import app

        app(prog_name="biasscope")
        return
    received: list[int] = []
    child_pid: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        if child_pid:
            _signal(child_pid[0], signum)

    for sig in _SIGNALS:
        signal.signal(sig, forward)
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    env = {**os.environ, DONE_FD: str(write_end), _PARENT: str(os.getpid())}
    # posix_spawn, not subprocess: its import alone costs more than the rest of the launcher
    child_pid.append(os.posix_spawn(sys.executable, [sys.executable, "-c", _CHILD_CODE, *sys.argv[1:]], env))
    os.close(write_end)
    if received:  # Ctrl-C while the child was starting
        _signal(child_pid[0], received[0])
    report = _read_all(read_end)
    sys.exit(_exit_code(_wait(child_pid[0]), report, received))


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:  # already gone
        pass


def _wait(pid: int) -> int:
    """The child's exit code (negative: the signal that ended it)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except InterruptedError:  # pragma: no cover (PEP 475 retries)
            continue


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 64)
        except InterruptedError:  # pragma: no cover (PEP 475 retries)
            continue
        if not chunk:
            os.close(fd)
            return b"".join(chunks)
        chunks.append(chunk)


def _exit_code(code: int, report: bytes, received: list[int]) -> int:
    """The launcher's exit code from the child's (``code``) and what it reported."""
    reported = int(report.split()[-1]) if report.strip().split() and report.split()[-1].isdigit() else None
    if code < 0:  # the child died of a signal
        return 130 if -code == signal.SIGINT or received else 128 - code
    if reported is not None:
        return reported if code in (0, reported) else code
    if code in (0, 1):  # exited "cleanly" without completing: user code called os._exit
        os.write(2, (
            f"error: the command stopped before it completed: its process exited with code {code} "
            "without finishing (user code, such as the factory or the model's forward, called "
            "os._exit or exited the interpreter). Nothing it would have written can be trusted: "
            "no output was completed. Make the factory return its object and the forward "
            "return its output.\n"
        ).encode())
        return 2
    return code


def child() -> None:
    """The child's entry: run the command, then report its exit code on the launcher's pipe."""
    fd = int(os.environ.pop(DONE_FD))
    parent = int(os.environ.pop(_PARENT, "0"))
    _die_with_parent(parent)
    from .main import app

    try:
        app(prog_name="biasscope")
    except SystemExit as exc:
        code = exc.code
        number = 0 if code is None else code if isinstance(code, int) else 1
        try:
            os.write(fd, f"done {number}\n".encode())
        except OSError:  # the launcher is gone
            pass
        raise


def _die_with_parent(parent: int) -> None:
    """On Linux, end this process when the launcher dies (a SIGKILL'd launcher leaves no run
    behind); a launcher already gone ends it now."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover
            pass
    if parent and os.getppid() != parent:
        os._exit(128 + signal.SIGKILL)

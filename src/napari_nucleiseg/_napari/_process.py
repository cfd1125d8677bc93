"""Run a progress generator in a child Python process and get its items back, as a generator.

Why a process: a whole-slide job holds Python's GIL for long stretches (image processing in C
extensions that do not release it); run in the viewer's process it would freeze the interface.

Why not ``multiprocessing``: its "spawn" start re-runs the user's ``__main__`` script in the child
(a napari script without an ``if __name__ == "__main__"`` guard would open a second viewer), and
"fork" is unsafe in a process running Qt threads. The child here is a fresh ``python -m`` of this
module; the request and the items travel pickled over its stdin and stdout.

Protocol: the parent writes one pickled ``(fn, args, kwargs)`` to the child's stdin; the child
sends length-prefixed pickled messages ``("item", x)``, ``("end", None)`` or
``("error", (type name, message))`` on its original stdout (its fd 1 is pointed at stderr so that
prints from libraries cannot corrupt the stream). Any byte on stdin, or stdin closing, asks the
child to stop after the current item; it then closes the generator (which records what finished)
and exits.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading

_HEADER = struct.Struct("<Q")


class JobError(RuntimeError):
    """An error raised by the job in the child process: its message, and its type's name."""

    def __init__(self, message: str, kind: str = ""):
        super().__init__(message)
        self.kind = kind


def _read_exact(stream, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        part = stream.read(n - len(buf))
        if not part:
            return None
        buf += part
    return buf


def in_subprocess(fn, *args, **kwargs):
    """Iterate the progress generator ``fn(*args, **kwargs)`` in a child process.

    ``fn`` and the arguments must pickle (a module-level function; a ``Slide`` pickles as its
    path). Closing this generator asks the child to stop after its current item and waits for it.
    Errors in the child are raised here as :class:`JobError` with the original message.
    """
    import tempfile

    err = tempfile.TemporaryFile()
    env = dict(os.environ)
    # The child must import this package from where the parent did (a source checkout too).
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen(
        [sys.executable, "-m", __name__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err,
        env=env,
    )
    try:
        proc.stdin.write(pickle.dumps((fn, args, kwargs)))
        proc.stdin.flush()
        while True:
            header = _read_exact(proc.stdout, _HEADER.size)
            if header is None:
                proc.wait(30)
                err.seek(0)
                tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
                raise JobError(
                    f"the job's process stopped unexpectedly (exit code {proc.returncode})"
                    + (": " + " / ".join(tail) if tail else "")
                )
            what, value = pickle.loads(_read_exact(proc.stdout, _HEADER.unpack(header)[0]))
            if what == "item":
                yield value
            elif what == "end":
                return
            else:
                kind, message = value
                raise JobError(message, kind)
    finally:
        try:
            proc.stdin.write(b"c")  # stop after the current item
            proc.stdin.close()
        except OSError:  # the child has gone already
            pass
        # Read what it still sends while it finishes its tile (a child blocked writing to a full
        # pipe would never exit).
        drain = threading.Thread(target=lambda: proc.stdout.read(), daemon=True)
        drain.start()
        try:
            proc.wait(600)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        drain.join(5)
        err.close()


def _child_main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints from anything in the job go to stderr, not into the message stream
    lock = threading.Lock()

    def send(what, value) -> None:
        data = pickle.dumps((what, value))
        with lock:
            out.write(_HEADER.pack(len(data)) + data)
            out.flush()

    stdin = sys.stdin.buffer
    fn, args, kwargs = pickle.load(stdin)
    stop = threading.Event()

    def watch() -> None:
        stdin.read(1)  # a byte, or EOF when the parent goes away
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        steps = fn(*args, **kwargs)
        try:
            for item in steps:
                send("item", item)
                if stop.is_set():
                    break
        finally:
            steps.close()
        send("end", None)
    except BaseException as exc:  # everything goes back to the interface as a message
        send("error", (type(exc).__name__, str(exc)))
    out.close()


if __name__ == "__main__":
    _child_main()

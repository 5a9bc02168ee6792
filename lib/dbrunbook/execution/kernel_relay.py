"""The process jupyter_client starts as a kernel when a warm template serves kernels (see kernel_template).

Run as a plain script, ``python kernel_relay.py SOCKET CMD...``, importing nothing from dbrunbook (its start
must cost milliseconds). It hands the template its standard streams, working directory and environment and
the ipykernel arguments of CMD; then it stands in for the kernel: every signal it receives is passed to the
kernel's process group, it exits with the kernel's exit status, and it exits (so the kernel is killed) when
the process that started it is gone. When no template answers, it becomes CMD itself.
"""

import contextlib
import json
import os
import select
import signal
import socket
import sys

_PASSED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def main(argv: list) -> None:
    path, cmd = argv[1], argv[2:]
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        request = {"argv": cmd[3:], "cwd": os.getcwd(), "env": dict(os.environ)}
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
    except OSError:
        conn.close()
        os.execv(cmd[0], cmd)  # no template: the usual kernel, in this very process

    def passed(signum, _frame):
        with contextlib.suppress(OSError):
            conn.sendall(f"sig {signum}\n".encode())

    for signum in _PASSED:
        signal.signal(signum, passed)
    parent, buffer = os.getppid(), b""
    while True:
        try:
            ready, _, _ = select.select([conn], [], [], 0.5)
        except InterruptedError:
            continue
        if os.getppid() != parent:
            os._exit(1)  # whoever started the kernel is gone: closing the socket ends the kernel
        if not ready:
            continue
        data = conn.recv(4096)
        if not data:
            os._exit(1)  # the template died with the kernel
        buffer += data
        if b"\n" in buffer and buffer.startswith(b"exit "):
            code = int(buffer[5:buffer.index(b"\n")])
            if code < 0:  # the kernel was killed by a signal: end the same way
                signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
            os._exit(code)


if __name__ == "__main__":
    main(sys.argv)

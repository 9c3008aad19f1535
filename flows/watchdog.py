"""Parent-death watchdog for a `recsys` command (started by flows/cli_errors.start_orphan_watchdog).

    python -S flows/watchdog.py <fd> <token>

Blocks on the read end of a pipe whose only write end the command holds. EOF means the command is gone
(normal exit, crash or kill -9); then every process whose environment carries RECSYS_CLI_RUN_TOKEN=<token>
(the command's children, e.g. Prefect's temporary API server, reparented to init by now) gets SIGTERM and,
after 5 s, SIGKILL. Standard library only, Linux /proc.
"""

import os
import signal
import sys
import time


def _marked(needle: bytes) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def main() -> None:
    fd, token = int(sys.argv[1]), sys.argv[2]
    while True:
        try:
            if not os.read(fd, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    needle = f"RECSYS_CLI_RUN_TOKEN={token}".encode()
    pids = _signal(_marked(needle), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = _marked(needle)
    _signal(pids, signal.SIGKILL)


def _signal(pids: list[int], sig: int) -> list[int]:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    return pids


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the terminal is for the command, not for us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    main()

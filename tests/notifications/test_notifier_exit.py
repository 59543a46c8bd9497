"""An exiting process sends what its notifiers still buffer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import rpclib
    from rpclib.transports.memory import MemoryDriver
    from rpclib.transports.url import parse_url

    class SlowRecordingDriver(MemoryDriver):
        def send(self, address, body, **kwargs):
            time.sleep(0.002)  # slower than the caller, so the buffer is full at exit
            with open(sys.argv[1], "a") as out:
                out.write(str(address) + "\\n")

    transport = rpclib.Transport(SlowRecordingDriver(parse_url("memory://exit")))
    notifier = rpclib.Notifier(transport, publisher_id="p", topics=["notifications"])
    for i in range(200):
        notifier.info({}, "instance.exists", {"i": i})
    # no flush(), no close(): the interpreter just exits
    """
)


def test_buffered_notifications_are_sent_when_the_process_exits(tmp_path: Path) -> None:
    sent = tmp_path / "sent.txt"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(sent)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = sent.read_text().splitlines()
    assert len(lines) == 200
    assert set(lines) == {"rpclib/notifications.info"}

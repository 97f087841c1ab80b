"""rendezvous.abort_connections shuts a process's connected TCP sockets, except those it is told
to keep, and leaves listening sockets alone. It acts on the whole process, so it runs in a child."""
from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import socket, threading
    from galaxy.runtime import rendezvous

    listener = rendezvous.listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    kept_client = socket.create_connection(("127.0.0.1", port)); kept_server, _ = listener.accept()
    cut_client = socket.create_connection(("127.0.0.1", port)); cut_server, _ = listener.accept()
    waiting = {}
    reader = threading.Thread(target=lambda: waiting.setdefault("got", cut_client.recv(10)))
    reader.start()  # a wait on a peer that sends nothing, as in a collective
    count = rendezvous.abort_connections(keep={kept_client.fileno(), kept_server.fileno()})
    reader.join(timeout=5)
    assert not reader.is_alive() and waiting["got"] == b"", waiting
    kept_client.sendall(b"still"); assert kept_server.recv(5) == b"still"
    late = socket.create_connection(("127.0.0.1", port)); listener.accept()  # the listener still listens
    print(count)
""")


def test_abort_shuts_the_connections_but_the_kept_ones_and_listeners():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 2  # both ends of the cut connection live in this process

"""The simulated applicator as a TCP server: one host at a time, the same device across reconnections.

The host reaches it as ``socket://HOST:PORT`` (pyserial). A dropped link (``disconnect_every``) closes the
host's socket; the host reconnects and finds the device's state and counters intact.
"""

from __future__ import annotations

import select
import socket
import sys

from .device import SimulatedApplicator

POLL_S = 0.02  # timer resolution while idle (watchdog, disarm, delayed replies)


class SimServer:
    def __init__(self, device: SimulatedApplicator, host: str = "127.0.0.1", port: int = 0):
        self.device = device
        self.sock = socket.create_server((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.connections = 0
        self._stop = False

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def stop(self) -> None:
        self._stop = True

    def serve_forever(self) -> None:
        try:
            while not self._stop:
                ready, _, _ = select.select([self.sock], [], [], POLL_S)
                self.device.poll()
                if ready:
                    conn, _ = self.sock.accept()
                    self.connections += 1
                    self._serve(conn)
        finally:
            self.sock.close()

    def _wait_s(self) -> float:
        due = self.device.next_due()
        if due is None:
            return POLL_S
        return max(0.0, min(POLL_S, due - self.device.clock.now()))

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.device.drop_output()
        try:
            while not self._stop:
                ready, _, _ = select.select([conn], [], [], self._wait_s())
                if ready:
                    data = conn.recv(4096)
                    if not data:
                        return  # the host closed the link
                    self.device.receive(data)
                    if self.device.take_disconnect():
                        return  # the disconnect fault: drop the host
                self.device.poll()
                out = self.device.take_output()
                if out:
                    conn.sendall(out)
        except OSError as exc:
            sys.stderr.write(f"simulator: link error {exc}; waiting for the host to reconnect\n")
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

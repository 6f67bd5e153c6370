"""``navigator serve``: the listeners (DICOM, HTTP, OpenIGTLink) around one ``LiveSession``, the READY line,
and a clean stop on SIGTERM/SIGINT (the journal line in hand is finished: appends are whole and fsynced under
a lock; a delivery is asked to stop after the seed in hand; the worker finishes or leaves its series queued,
which the next start runs again from the journal)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from navigator.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    session: Path
    plan: Path | None = None
    preplan_ct: Path | None = None
    ae_title: str = "NAVIGATOR"
    dicom_port: int = 11112
    allow_ae: list[str] | None = None
    http_port: int = 8080
    bind: str = "127.0.0.1"
    device: str | None = None
    igtl_port: int = 18944
    series_quiet_s: float = 5.0
    users: Path | None = None
    tolerance_mm: float = 2.0
    simulate_operator: bool = False  # rehearsal: the simulated applicator is docked by a simulated operator


def _http_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"--http-port {port} on {host}: cannot listen ({exc.strerror}); choose another port "
                         "(0 = any free port) or stop what uses it") from None
    sock.listen(128)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Service:
    def __init__(self, o: ServeOptions):
        from navigator.live.users import UserStore

        self.o = o
        self.users = UserStore.load(o.users) if o.users else None
        self.stop_event = threading.Event()

    def start(self):
        from navigator.live.api import create_app
        from navigator.live.igtl import IgtlServer
        from navigator.live.receiver import DicomReceiver
        from navigator.live.session import LiveSession

        o = self.o
        self.live = live = LiveSession(o.session, o.plan, o.preplan_ct, o.device, o.tolerance_mm,
                                           simulate_operator=o.simulate_operator)
        self.receiver = DicomReceiver(Path(o.session) / "incoming", o.ae_title, o.bind, o.dicom_port, o.allow_ae,
                                      o.series_quiet_s, on_complete=live.series_complete,
                                      on_rejected=live.association_rejected, on_settled=live.series_settled)
        live.receiver = self.receiver
        try:
            self.receiver.start()
        except OSError as exc:
            raise InputError(f"--dicom-port {o.dicom_port} on {o.bind}: cannot listen ({exc}); choose another "
                             "port (0 = any free port)") from None
        restored = self.receiver.restore(live.known_series())
        self.igtl = IgtlServer(live, o.bind, o.igtl_port)
        try:
            self.igtl.start()
        except OSError as exc:
            raise InputError(f"--igtl-port {o.igtl_port} on {o.bind}: cannot listen ({exc}); choose another "
                             "port (0 = any free port)") from None
        live.listeners.append(self.igtl.refresh)
        self.app = create_app(live, self.users)
        self._start_http()
        live.start()
        live.record("service_started", {"dicom": f"{o.bind}:{self.receiver.port}", "ae_title": o.ae_title,
                                        "allow_ae": o.allow_ae or [], "http": self.http_url,
                                        "igtl": f"{o.bind}:{self.igtl.port}", "device": o.device,
                                        "users": len(self.users) if self.users else 0,
                                        "series_watched_again": restored})
        self.igtl.refresh()

    def _start_http(self) -> None:
        import uvicorn

        sock = _http_socket(self.o.bind, self.o.http_port)
        port = sock.getsockname()[1]
        self.http_url = f"http://{_url_host(self.o.bind)}:{port}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self.http = uvicorn.Server(config)
        self.http_thread = threading.Thread(target=self.http.run, kwargs={"sockets": [sock]}, daemon=True,
                                            name="http")
        self.http_thread.start()
        deadline = time.monotonic() + 30
        while not self.http.started:
            if not self.http_thread.is_alive() or time.monotonic() > deadline:
                raise InputError(f"the HTTP server did not start on {self.http_url}; see the messages above")
            time.sleep(0.02)

    def ready_line(self) -> str:
        h = _url_host(self.o.bind)
        return f"READY dicom={h}:{self.receiver.port} http={self.http_url} igtl={h}:{self.igtl.port}"

    def shutdown(self, reason: str) -> None:
        live = self.live
        live.record("service_stopping", {"reason": reason})
        self.app.state.stopping.set()
        self.receiver.stop()
        live.stop(timeout_s=10.0)
        self.http.should_exit = True
        self.http_thread.join(timeout=5.0)
        self.igtl.stop()
        live.record("service_stopped", {"reason": reason})
        live.session.journal.close()


def serve(o: ServeOptions, out=sys.stdout) -> None:
    """Runs until SIGTERM/SIGINT, then ends the process with exit status 0."""
    service = Service(o)
    got: list[str] = []

    def on_signal(signum, frame):
        got.append(signal.Signals(signum).name)
        service.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    out.write(service.ready_line() + "\n")
    out.flush()
    while not service.stop_event.wait(0.5):
        pass
    service.shutdown(got[0] if got else "stop")
    # The journal is closed and whole. Leave at once rather than through the interpreter's teardown: ITK's
    # thread pool (registration ran on the worker thread), and a worker still inside a computation that the
    # next start redoes from the journal, are torn down under their threads there and abort the process
    # ("terminate called without an active exception", exit -6 instead of 0).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

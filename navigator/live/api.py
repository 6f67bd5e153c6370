"""The HTTP JSON API of the live session and the console's files (live-session.md, "HTTP API").

Auth: ``POST /api/login`` checks the pair against the users file and answers a random token, also set as an
HttpOnly SameSite=Strict cookie; every other route needs that cookie or ``Authorization: Bearer <token>``
(401 without, 403 for a role that may not). Changing routes also need the caller to hold control: one console
at a time (``POST /api/control``; 409 while another holds it; released after 30 s without a request from it).
Errors are JSON ``{"detail": text}`` saying what is wrong and what to do; bad input 400, a step the state does
not allow 409, a route not available in this build 501.
"""

from __future__ import annotations

import asyncio
import html
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from starlette.staticfiles import StaticFiles

from navigator.errors import InputError, NavigatorError
from navigator.live.users import User, UserStore, may
from navigator.session.controller import SessionStateError

COOKIE = "navigator_session"
CONTROL_IDLE_S = 30.0
CONSOLE_DIR = Path(__file__).parent / "console"


@dataclass
class Caller:
    user: User
    token: str


class Access:
    """Tokens of logged-in consoles and who holds control (thread-safe)."""

    def __init__(self, users: UserStore | None, control_idle_s: float = CONTROL_IDLE_S):
        self.users = users
        self.tokens: dict[str, User] = {}
        self.control: dict | None = None   # {"token", "user", "last"}
        self.idle_s = control_idle_s
        self._lock = threading.Lock()

    def login(self, name, password) -> tuple[str, User] | None:
        user = self.users.verify(name, password) if self.users is not None else None
        if user is None:
            return None
        token = secrets.token_urlsafe(32)
        with self._lock:
            self.tokens[token] = user
        return token, user

    def caller(self, token: str | None) -> Caller | None:
        with self._lock:
            user = self.tokens.get(token or "")
            if user is None:
                return None
            if self.control and self.control["token"] == token:
                self.control["last"] = time.monotonic()
            return Caller(user, token)

    def holder(self) -> dict | None:
        with self._lock:
            if self.control and time.monotonic() - self.control["last"] > self.idle_s:
                self.control = None
            return self.control

    def take(self, c: Caller) -> bool:
        with self._lock:
            held = self.control
            if held and held["token"] != c.token and time.monotonic() - held["last"] <= self.idle_s:
                return False
            self.control = {"token": c.token, "user": c.user.name, "last": time.monotonic()}
            return True

    def logout(self, c: Caller) -> None:
        self.release(c)
        with self._lock:
            self.tokens.pop(c.token, None)

    def release(self, c: Caller) -> bool:
        with self._lock:
            if self.control and self.control["token"] == c.token:
                self.control = None
                return True
            return False


def create_app(live, users: UserStore | None, control_idle_s: float = CONTROL_IDLE_S) -> FastAPI:
    # No page or route without login: FastAPI's own /docs, /redoc and /openapi.json are off; the OpenAPI schema
    # is served to a logged-in caller at /api/openapi.json.
    app = FastAPI(title="navigator serve", description="live CT-guided seed-implant session", version="1",
                  docs_url=None, redoc_url=None, openapi_url=None)
    access = Access(users, control_idle_s)
    app.state.access, app.state.live, app.state.stopping = access, live, threading.Event()

    def authed(request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        c = access.caller(token)
        if c is None:
            raise HTTPException(401, "not logged in: POST /api/login with {\"username\", \"password\"}, then send "
                                     "the cookie or Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})
        return c

    def allowed(action: str, control: bool):
        def dep(c: Caller = Depends(authed)) -> Caller:
            if not may(c.user.role, action):
                what = "approve (physicist only)" if action == "approve" else "change the session"
                raise HTTPException(403, f"user {c.user.name} ({c.user.role}) may not {what}")
            if control:
                held = access.holder()
                if held is None or held["token"] != c.token:
                    who = f"the console of {held['user']} holds it" if held else "nobody holds it"
                    raise HTTPException(409, f"this console does not hold control ({who}): POST /api/control "
                                             "first; control is released after 30 s without requests")
            return c
        return dep

    reader, changer, approver = allowed("read", False), allowed("change", True), allowed("approve", True)

    @app.exception_handler(NavigatorError)
    async def _navigator_error(request: Request, exc: NavigatorError):
        code = 409 if isinstance(exc, SessionStateError) else 400 if isinstance(exc, InputError) else 500
        return JSONResponse({"detail": str(exc)}, status_code=code)

    _auth_routes(app, access, live)
    _read_routes(app, live, access, reader)
    _change_routes(app, live, access, changer, approver)
    _console_routes(app)
    return app


def _auth_routes(app: FastAPI, access: Access, live) -> None:
    from fastapi import Body

    @app.post("/api/login")
    def login(body: dict = Body(...)):
        name, password = body.get("username"), body.get("password")
        if access.users is None or len(access.users) == 0:
            raise HTTPException(401, "no console users: stop the service, add one with `navigator users add NAME "
                                     "--role physicist --users FILE` and start it with --users FILE")
        got = access.login(name, password) if isinstance(name, str) and isinstance(password, str) else None
        if got is None:
            live.record("login_failed", {"user": str(name)[:64]})
            raise HTTPException(401, "wrong user name or password")
        token, user = got
        live.record("login", {"user": user.name, "role": user.role})
        resp = JSONResponse({"token": token, "role": user.role})
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return resp


def _read_routes(app: FastAPI, live, access: Access, reader) -> None:  # noqa: C901 (one route each)
    @app.post("/api/logout")
    def logout(c: Caller = Depends(reader)):
        access.logout(c)
        live.record("logout", {"user": c.user.name})
        resp = JSONResponse({"logged_out": c.user.name})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/api/plan")
    def plan(c: Caller = Depends(reader)):
        if live.pre is None:
            raise HTTPException(404, "no pre-plan loaded yet: send the RT Plan with its CT and RT Structure Set, "
                                     "or start with --plan and --preplan-ct")
        return live.pre.plan.to_dict()

    @app.get("/api/structures")
    def structures(c: Caller = Depends(reader)):
        if live.pre is None:
            raise HTTPException(404, "no pre-plan loaded yet: its structures come with it")
        from navigator.live.steps import structures_json

        return structures_json(live.pre)

    @app.get("/api/me")
    def me(c: Caller = Depends(reader)):
        return {"username": c.user.name, "role": c.user.role}

    @app.get("/api/openapi.json")
    def openapi(c: Caller = Depends(reader)):
        return app.openapi()

    @app.get("/api/session")
    def session(c: Caller = Depends(reader)):
        held = access.holder()
        return {**live.session_json(), "controller": held["user"] if held else None}

    @app.get("/api/series")
    def series(c: Caller = Depends(reader)):
        return live.series_list()

    @app.get("/api/checks/latest")
    def latest_check(c: Caller = Depends(reader)):
        data = live.latest_check()
        if data is None:
            raise HTTPException(404, "no needle check yet: insert the needles and scan")
        return data

    @app.get("/api/checks/latest/html", response_class=HTMLResponse)
    def latest_check_html(c: Caller = Depends(reader)):
        return _page(live.facts.checks, "needles.html", "no needle check yet")

    @app.get("/api/postimplant/latest")
    def latest_post(c: Caller = Depends(reader)):
        data = live.latest_postimplant()
        if data is None:
            raise HTTPException(404, "no post-implant evaluation yet: take the post-implant scan")
        return data

    @app.get("/api/postimplant/latest/html", response_class=HTMLResponse)
    def latest_post_html(c: Caller = Depends(reader)):
        return _page(live.facts.postimplants, "postimplant.html", "no post-implant evaluation yet")

    @app.get("/api/delivery")
    def delivery(c: Caller = Depends(reader)):
        return live.delivery.to_json()

    @app.get("/api/replan/latest")
    def latest_replan(c: Caller = Depends(reader)):
        data = live.latest_replan()
        if data is None:
            raise HTTPException(404, "no re-plan yet: after the check of all needles, run it (POST /api/replan)")
        return data

    @app.get("/api/replan/latest/html", response_class=HTMLResponse)
    def latest_replan_html(c: Caller = Depends(reader)):
        return _page(live.facts.replans, "replan.html", "no re-plan yet")

    @app.get("/api/report", response_class=HTMLResponse)
    def report(c: Caller = Depends(reader)):
        from navigator.live.report import session_report

        return session_report(live)

    @app.get("/api/events")
    async def events(request: Request, since: int = 0, c: Caller = Depends(reader)):
        last = request.headers.get("last-event-id")
        start = int(last) if last and last.isdigit() else since
        return StreamingResponse(_tail(live.dir / "session.jsonl", start, request, app.state.stopping),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _page(items: list[dict], name: str, missing: str) -> str:
    if not items:
        raise HTTPException(404, missing)
    path = Path(items[-1]["dir"]) / name
    if not path.exists():
        raise HTTPException(404, f"{name} of the latest result is still being drawn; try again in a moment")
    return path.read_text()


def _change_routes(app: FastAPI, live, access: Access, changer, approver) -> None:
    from fastapi import Body

    @app.post("/api/control")
    def control(c: Caller = Depends(allowed_change_no_control(access))):
        if not access.take(c):
            held = access.holder()
            raise HTTPException(409, f"the console of {held['user']} holds control; it is released when that "
                                     "console stops sending requests for 30 s")
        live.decision(c.user, "take_control")
        return {"controller": c.user.name, "idle_release_s": access.idle_s}

    @app.delete("/api/control")
    def release(c: Caller = Depends(changer)):
        access.release(c)
        live.decision(c.user, "release_control")
        return {"controller": None}

    @app.post("/api/checks/latest/accept")
    def accept(body: dict = Body(...), c: Caller = Depends(approver)):
        return live.accept(c.user, body.get("needle_ids"), body.get("reason"))

    @app.post("/api/scans/next")
    def relabel(body: dict = Body(...), c: Caller = Depends(changer)):
        return live.relabel_next_scan(c.user, body.get("scan"))

    @app.post("/api/replan")
    def replan(c: Caller = Depends(changer)):
        return live.replan(c.user)

    @app.post("/api/replan/approve")
    def replan_approve(c: Caller = Depends(approver)):
        return live.approve_replan(c.user)

    @app.post("/api/delivery/start")
    def delivery_start(c: Caller = Depends(changer)):
        return live.delivery.start(c.user)

    @app.post("/api/delivery/stop")
    def delivery_stop(c: Caller = Depends(changer)):
        return live.delivery.stop(c.user)

    @app.post("/api/supplement/approve")
    def supplement(c: Caller = Depends(approver)):
        return live.approve_supplement(c.user)


def allowed_change_no_control(access: Access):
    """Taking control needs a role that may change things, not control itself."""
    def dep(request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        c = access.caller(token)
        if c is None:
            raise HTTPException(401, "not logged in: POST /api/login first", headers={"WWW-Authenticate": "Bearer"})
        if not may(c.user.role, "change"):
            raise HTTPException(403, f"user {c.user.name} ({c.user.role}) may not take control (viewers read only)")
        return c
    return dep


def _console_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    def index():
        page = CONSOLE_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse("<!doctype html><html><head><meta charset='utf-8'><title>navigator</title></head><body>"
                            "<h1>navigator serve</h1><p>The operator console is not installed in this build "
                            f"(no {html.escape(str(page))}). The HTTP API is up: POST /api/login, then GET "
                            "/api/session; its description is at <a href='/docs'>/docs</a>.</p></body></html>")

    app.mount("/console", StaticFiles(directory=CONSOLE_DIR, html=True, check_dir=False), name="console")


async def _tail(path: Path, since: int, request: Request, stopping: threading.Event):
    """One SSE event per journal line (``id: n``, ``data: <the line>``), from line ``since + 1`` on, as written."""
    n, pos, buf = 0, 0, b""
    while not stopping.is_set():
        with open(path, "rb") as f:
            f.seek(pos)
            chunk = f.read()
        pos += len(chunk)
        buf += chunk
        *lines, buf = buf.split(b"\n")
        out = []
        for line in lines:
            n += 1
            if n > since and line:
                out.append(f"id: {n}\ndata: {line.decode('ascii', 'replace')}\n\n")
        if out:
            yield "".join(out)
        elif await request.is_disconnected():
            return
        else:
            await asyncio.sleep(0.1)

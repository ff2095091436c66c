"""The aiohttp application inside the daemon: routes, security headers, error pages, and the
start/stop the app calls on its own event loop.

Every response carries a strict Content-Security-Policy (scripts, styles and connections
from this origin only, no inline script or style, no framing, forms post only here), and
`nosniff` / `no-referrer`. Domain errors become the HTTP status matching their gRPC code,
as JSON under /api/ and as an error page elsewhere; anything else is a bare 500 (logged,
never shown).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from coordd.core.errors import DomainError
from coordd.runtime import Runtime
from coordd.web import ceremonies, console, console_more, console_nodes, pages, session
from coordd.web.board import Board, Boards
from coordd.web.ceremonies import board_doc
from coordd.web.render import STATIC, Renderer
from coordd.web.responses import HTTP_STATUS, SECURITY_HEADERS, json_response

log = structlog.get_logger("coordd.web")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebServer:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.renderer = Renderer()
        self.boards = Boards(rt, self._finish_board)
        self.streams: set[asyncio.Task[Any]] = set()
        self.closing = asyncio.Event()
        self.app = web.Application(middlewares=[self._headers, self._errors], client_max_size=64 * 1024)
        self.app.router.add_get("/", self._home)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_static("/static/", STATIC, append_version=False)
        ceremonies.add_routes(self)
        pages.add_routes(self)
        console.add_routes(self)
        console_more.add_routes(self)
        console_nodes.add_routes(self)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _finish_board(self, board: Board) -> Board:
        html = self.renderer.render("_ceremony_live.html", b=board)
        return Board(board.ceremony, board.circuits, board.read_time, html, board_doc(board))

    def page(self, name: str, request: web.Request, status: int = 200, **context: Any) -> web.Response:
        context.setdefault("viewer", request.get(session.VIEWER))
        context.setdefault("csrf", request.get(session.CSRF, ""))
        html = self.renderer.render(name, request_path=request.path, **context)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    # -- middleware ------------------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not response.prepared:  # a stream set its own before preparing
            response.headers.update(SECURITY_HEADERS)
            response.headers["Server"] = "coordd"  # not aiohttp's name and version
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return self._error(request, exc.status, exc.reason, "HTTP_ERROR", headers=dict(exc.headers))
        except DomainError as exc:
            status = HTTP_STATUS.get(exc.code, 500)
            return self._error(request, status, exc.message, exc.reason)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("web handler failed", path=request.path)
            return self._error(request, 500, "internal error", "INTERNAL")

    def _error(
        self, request: web.Request, status: int, message: str, reason: str, headers: Any = None
    ) -> web.Response:
        headers = {k: v for k, v in (headers or {}).items() if k.lower() in ("allow", "location")}
        if request.path.startswith("/api/"):
            return json_response({"error": {"code": status, "message": message, "reason": reason}}, status)
        response = self.page("error.html", request, status=status, status_code=status, message=message)
        response.headers.update(headers)
        return response

    # -- a few plain routes ----------------------------------------------------------------

    async def _home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ceremonies")

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ok", "version": self.rt.version})

    # -- life cycle ------------------------------------------------------------------------

    def track(self, task: asyncio.Task[Any]) -> None:
        """A live stream's task: cancelled at stop so shutdown never waits on it."""
        self.streams.add(task)
        task.add_done_callback(self.streams.discard)

    async def start(self, listen: str) -> int:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, int(port), reuse_address=True)
        await site.start()  # OSError when the address is taken: the app reports it
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        log.info("http serving", listen=f"{host}:{self.port}", port=self.port)
        return self.port

    async def stop(self) -> None:
        self.closing.set()
        for task in list(self.streams):
            task.cancel()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None

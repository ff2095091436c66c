"""Public ceremony pages: the list, a ceremony's page (live by server-sent events), their JSON
under /api/, and the transcript download. No login: what these show is what GetTranscript
(public) shows, plus queue lengths and whose turn it is (participants by resource name only,
never an email).
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

from aiohttp import web

from coordd.core.errors import NotFound, ResourceExhausted
from coordd.core.paging import PageRequest
from coordd.domain import ceremony
from coordd.web.board import Board, sse_message
from coordd.web.render import iso
from coordd.web.responses import SECURITY_HEADERS, json_response

ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
STATES = ("SCHEDULED", "OPENED", "PAUSED", "CLOSED", "FINALIZED")
PAGE_SIZE = 50


def ceremony_id(request: web.Request) -> str:
    cid = request.match_info["ceremony"]
    if not ID.match(cid):
        raise NotFound(f"ceremonies/{cid[:64]} not found")
    return cid


def _b64(data: bytes | None) -> str:
    return base64.b64encode(bytes(data or b"")).decode()


def contribution_doc(cid: str, kid: str, x: ceremony.Contribution) -> dict[str, Any]:
    return {
        "name": ceremony.contribution_name(cid, kid, x.id),
        "index": x.index,
        "contributor": x.contributor,
        "hash": x.hash,
        "previous_hash": x.previous_hash,
        "size_bytes": x.size,
        "state": x.state,
        "final": x.is_final,
        "upload_time": iso(x.upload_time),
        "verify_time": iso(x.verify_time),
        "receipt": {
            "payload": _b64(x.receipt_payload),
            "signature": _b64(x.receipt_signature),
            "key_id": x.receipt_key_id,
        },
    }


def ceremony_summary(c: ceremony.Ceremony) -> dict[str, Any]:
    return {
        "name": ceremony.ceremony_name(c.id),
        "id": c.id,
        "title": c.title,
        "description": c.description,
        "prefix": c.prefix,
        "state": c.state,
        "start_time": iso(c.start_time),
        "end_time": iso(c.end_time),
    }


def board_doc(board: Board) -> dict[str, Any]:
    cid = board.ceremony.id
    return {
        **ceremony_summary(board.ceremony),
        "queue_length": board.queue_length,
        "contribution_count": board.contribution_count,
        "read_time": iso(board.read_time),
        "circuits": [
            {
                "name": ceremony.circuit_name(cid, k.circuit.id),
                "display_name": k.circuit.display_name,
                "sequence": k.circuit.sequence,
                "queue_length": k.queue_length,
                "current_contributor": k.current,
                "current_status": k.current_status,
                "current_since": iso(k.current_since),
                "estimated_wait_seconds": k.estimated_wait_s,
                "finalized": k.circuit.finalized,
                "last_valid_hash": k.circuit.last_valid_hash,
                "contributions": [contribution_doc(cid, k.circuit.id, x) for x in k.contributions],
            }
            for k in board.circuits
        ],
    }


def add_routes(ws: Any) -> None:
    pages = CeremonyPages(ws)
    r = ws.app.router
    r.add_get("/ceremonies", pages.list_page)
    r.add_get("/api/ceremonies", pages.list_json)
    r.add_get("/ceremonies/{ceremony}", pages.ceremony_page)
    r.add_get("/api/ceremonies/{ceremony}", pages.ceremony_json)
    r.add_get("/ceremonies/{ceremony}/events", pages.events)
    r.add_get("/ceremonies/{ceremony}/transcript.json", pages.transcript)


class CeremonyPages:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.rt = ws.rt
        self.viewers = 0
        self.per_peer: dict[str, int] = {}

    async def _page(self, request: web.Request) -> tuple[list[ceremony.Ceremony], str, str]:
        state = request.query.get("state", "")
        if state and state not in STATES:
            state = ""
        page = await self.rt.run(
            ceremony.list_ceremonies, PageRequest.of(PAGE_SIZE, request.query.get("page_token", "")), state
        )
        return page.items, page.next_token, state

    async def list_page(self, request: web.Request) -> web.StreamResponse:
        items, next_token, state = await self._page(request)
        return self.ws.page(
            "ceremonies.html", request, ceremonies=items, next_token=next_token, state=state, states=STATES
        )

    async def list_json(self, request: web.Request) -> web.StreamResponse:
        items, next_token, _ = await self._page(request)
        return json_response(
            {"ceremonies": [ceremony_summary(c) for c in items], "next_page_token": next_token}
        )

    async def ceremony_page(self, request: web.Request) -> web.StreamResponse:
        board = await self.ws.boards.get(ceremony_id(request))
        return self.ws.page("ceremony.html", request, b=board, key_id=self.rt.signer.key_id)

    async def ceremony_json(self, request: web.Request) -> web.StreamResponse:
        board = await self.ws.boards.get(ceremony_id(request))
        return json_response(board.doc, headers={"Cache-Control": "no-cache"})

    async def transcript(self, request: web.Request) -> web.StreamResponse:
        board = await self.ws.boards.get(ceremony_id(request))
        signer = self.rt.signer
        doc = {
            **board.doc,
            "coordinator_key": {
                "algorithm": "Ed25519",
                "key_id": signer.key_id,
                "public_key": _b64(signer.public_key),
            },
        }
        filename = f"{board.ceremony.prefix or board.ceremony.id}-transcript.json"
        return json_response(doc, headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The live part of the ceremony page: an `update` event with the fragment to show
        whenever it changes; woken by the same event keys WatchQueue waits on, re-read every
        http_refresh_s without events (a comment line keeps proxies from closing it)."""
        cid = ceremony_id(request)
        boards = self.ws.boards
        seen = boards.generation(cid)
        board = await boards.get(cid)
        peer = request.remote or ""
        cap = self.rt.settings.http_max_streams_per_peer
        if cap and self.per_peer.get(peer, 0) >= cap:
            raise ResourceExhausted(f"at most {cap} live pages per client address", retry_after_s=10)
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                "Server": "coordd",
            }
        )
        await response.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self.ws.track(task)
        refresh = self.rt.settings.http_refresh_s
        last = ""
        self.viewers += 1
        self.per_peer[peer] = self.per_peer.get(peer, 0) + 1
        try:
            await response.write(b"retry: 2000\n\n")
            while not self.ws.closing.is_set():
                if board.html != last:
                    await response.write(sse_message("update", board.html))
                    last = board.html
                else:
                    await response.write(b": keepalive\n\n")
                # An event that came while this page read or wrote woke nobody: read again
                # at once instead of waiting (no await between this check and the wait).
                if boards.generation(cid) == seen:
                    await self.rt.notifier.wait(board.watch_keys(), refresh)
                seen = boards.generation(cid)
                board = await boards.get(cid)
        except (asyncio.CancelledError, ConnectionResetError):
            pass
        finally:
            self.viewers -= 1
            left = self.per_peer.pop(peer, 1) - 1
            if left:
                self.per_peer[peer] = left
        return response

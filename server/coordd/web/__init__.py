"""The web pages: server-rendered HTML and a JSON API under /api/, served by aiohttp on the
daemon's own event loop (beside grpc.aio, its own port, off unless `http_listen` is set).

    server      the aiohttp application: routes, security headers (a strict CSP), errors
    board       the public read model of a ceremony, shared by every live page (one read
                per change), and the server-sent event streams built on it
    ceremonies  public ceremony list and page, their JSON, the live stream, transcript download
    pages       public project status and competition pages
    session     console login: the session cookie, CSRF tokens, the gRPC policies
    console     the operator console: jobs by state, retry / cancel / requeue
    render      templates (Jinja2, autoescaped) and the filters they share

Every page reads through the same domain functions the gRPC API calls, with the same rules:
the web never touches the store.
"""

from coordd.web.server import WebServer

__all__ = ["WebServer"]

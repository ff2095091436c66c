"""coordd: a gRPC coordination daemon for ceremonies, competitions, nodes and jobs."""

__version__ = "0.1.0"

"""coordd's Python client: `connect()`, generated stubs under `coordd_client.v1`, typed
errors, and offline verifiers.

    import coordd_client
    from coordd_client.v1 import auth_pb2

    with coordd_client.connect("127.0.0.1:50051", token=token) as client:
        me = client.auth.WhoAmI(auth_pb2.WhoAmIRequest())

`coordd_client.aio.connect()` is the asyncio flavour.
"""

from coordd_client.client import Client, connect
from coordd_client.errors import CoorddError

__all__ = ["Client", "CoorddError", "connect"]
__version__ = "0.1.0"

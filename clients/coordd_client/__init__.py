"""coordd's Python client: generated stubs under `coordd_client.v1` and offline verifiers.

    import grpc
    from coordd_client.v1 import auth_pb2, auth_pb2_grpc

    channel = grpc.insecure_channel("127.0.0.1:50051")
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    me = auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {token}")])
"""

__version__ = "0.1.0"

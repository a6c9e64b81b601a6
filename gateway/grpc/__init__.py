"""gRPC for meshgate: the gateway's gRPC port (``server``) and the v2-grpc upstream client (``client``).

``gateway.grpc.server.start_grpc_gateway(plane, host, port)`` serves
``inference.GRPCInferenceService`` on the data plane (``meshgate up|gateway --grpc-port 8001``);
``gateway.grpc.client.GrpcPool().endpoint(url, ssl=, verify_peer=)`` calls gRPC upstreams over
HTTP/2, plaintext or with a mesh TLS context and an identity check. Both are our own HTTP/2
on the gateway's event loop (``_h2``: framing, HPACK through the ``hpack`` package, flow
control); neither imports grpcio.
"""

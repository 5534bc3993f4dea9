"""The official grpcio Python client, with no generated code, against every daemon's socket.

Usage: grpc_client.py CALLS_JSON, where CALLS_JSON maps each socket path to the call to make
there: {"/run/synos/memory.sock": {"method": "synos.memory.v1.Memory/Stats", "request": {}}}.

For each socket it checks what README and the man pages promise a user of a stock client:

- with default options the call fails with RST_STREAM PROTOCOL_ERROR (HTTP/2 error code 1;
  grpcio sends the socket path as :authority, which hyper's h2 refuses), so the documentation
  stays true;
- with the one option documented, grpc.default_authority=localhost: health answers SERVING
  for the server and for the daemon's own service, reflection lists the services and gives
  their descriptors, and the call, built from those descriptors alone, succeeds.

Prints one JSON object (socket → what it saw, the call's reply as protobuf JSON); the Rust
test (tests/tests/apis.rs) checks it. Exits non-zero on the first surprise.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

# What README.md and the man pages tell users of stock clients to set.
DOCUMENTED_OPTIONS = [("grpc.default_authority", "localhost")]
TIMEOUT_S = 10


def default_options_fail(target: str, service: str) -> str:
    """The documented limitation: an unmodified channel is refused by the server."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            details = error.details() or ""
            # HTTP/2 error code 1 is PROTOCOL_ERROR; grpcio words it either way.
            if "RST_STREAM" not in details or not (
                "PROTOCOL_ERROR" in details or "error code 1)" in details
            ):
                raise SystemExit(f"{target}: expected RST_STREAM PROTOCOL_ERROR, got {details!r}")
            return details
    raise SystemExit(
        f"{target}: a stock client with default options now works; "
        "drop the grpc.default_authority advice from README.md and the man pages"
    )


def check(socket: str, method: str, request: dict) -> dict:
    target = f"unix:{socket}"
    service, method_name = method.split("/")
    seen = {"default_options_error": default_options_fail(target, service)}
    with grpc.insecure_channel(target, options=DOCUMENTED_OPTIONS) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        seen["health"] = {
            name or "(server)": health_pb2.HealthCheckResponse.ServingStatus.Name(
                health.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT_S).status
            )
            for name in ("", service)
        }

        reflection = ProtoReflectionDescriptorDatabase(channel)
        seen["services"] = sorted(reflection.get_services())
        pool = descriptor_pool.DescriptorPool(reflection)
        method_descriptor = pool.FindServiceByName(service).FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(method_descriptor.input_type)
        response_class = message_factory.GetMessageClass(method_descriptor.output_type)

        call = channel.unary_unary(
            f"/{method}",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        reply = call(json_format.ParseDict(request, request_class()), timeout=TIMEOUT_S)
        seen["reply"] = json_format.MessageToDict(
            reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    return seen


def main() -> None:
    calls = json.loads(sys.argv[1])
    print(json.dumps({socket: check(socket, **call) for socket, call in calls.items()}))


if __name__ == "__main__":
    main()

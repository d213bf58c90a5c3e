"""Paddle Serving's gRPC service, `PipelineService/inference`, served and called (grpc.aio).

What Paddle Serving's own client (`paddle_serving_server.pipeline.PipelineClient`) speaks: a
unary call of `baidu.paddle_serving.pipeline_serving.PipelineService/inference`, a `Request`
(`key`/`value` string lists, `tensors`, `name`, `method`, `logid`, `clientip`) answered by a
`Response` (`err_no`, `err_msg`, `key`, `value`, `tensors`).

The message classes are built here from Paddle Serving 0.9.0's descriptor, in a descriptor pool
of their own: the router imports nothing of Paddle Serving (which needs Paddle), and a process
that also loads Paddle Serving's own generated module gets no clash of names.

`PipelineRpcServer` serves the method with a handler given as a coroutine (it knows nothing of
experiments); `RpcChannels` keeps one keep-alive channel per backend endpoint and makes calls
with a deadline. grpcio is the version Paddle Serving pins (<= 1.33.2), whose `grpc.aio` works
on asyncio's loop and on uvloop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Callable, NamedTuple, Optional

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "baidu.paddle_serving.pipeline_serving.PipelineService"
METHOD = f"/{SERVICE}/inference"

# pipeline_service.proto of Paddle Serving 0.9.0 (paddle_serving_server/pipeline/proto/
# pipeline_service_pb2.py, `serialized_pb`), under a file name of the router's own.
_DESCRIPTOR = (
    b'\n\x1drouter/pipeline_service.proto\x12%baidu.paddle_serving.pipeline_serving"\x93\x02\n'
    b"\x06Tensor\x12\x12\n\nint64_data\x18\x01 \x03(\x03\x12\x12\n\nfloat_data\x18\x02 \x03(\x02"
    b"\x12\x10\n\x08int_data\x18\x03 \x03(\x05\x12\x14\n\x0cfloat64_data\x18\x04 \x03(\x01\x12\x13"
    b"\n\x0buint32_data\x18\x05 \x03(\r\x12\x11\n\tbool_data\x18\x06 \x03(\x08\x12\x16\n\x0e"
    b"complex64_data\x18\x07 \x03(\x02\x12\x17\n\x0fcomplex128_data\x18\x08 \x03(\x01\x12\x10\n"
    b"\x08str_data\x18\t \x03(\t\x12\x11\n\tbyte_data\x18\n \x01(\x0c\x12\x11\n\telem_type\x18"
    b"\x14 \x01(\x05\x12\r\n\x05shape\x18\x15 \x03(\x05\x12\x0b\n\x03lod\x18\x16 \x03(\x05\x12"
    b'\x0c\n\x04name\x18\x17 \x01(\t"\xa4\x01\n\x07Request\x12\x0b\n\x03key\x18\x01 \x03(\t\x12'
    b"\r\n\x05value\x18\x02 \x03(\t\x12>\n\x07tensors\x18\x03 \x03(\x0b\x32-.baidu.paddle_serving"
    b".pipeline_serving.Tensor\x12\x0c\n\x04name\x18\x04 \x01(\t\x12\x0e\n\x06method\x18\x05 \x01"
    b'(\t\x12\r\n\x05logid\x18\x06 \x01(\x03\x12\x10\n\x08clientip\x18\x07 \x01(\t"\x87\x01\n\x08'
    b"Response\x12\x0e\n\x06err_no\x18\x01 \x01(\x05\x12\x0f\n\x07err_msg\x18\x02 \x01(\t\x12\x0b"
    b"\n\x03key\x18\x03 \x03(\t\x12\r\n\x05value\x18\x04 \x03(\t\x12>\n\x07tensors\x18\x05 \x03("
    b"\x0b\x32-.baidu.paddle_serving.pipeline_serving.Tensor2\x81\x01\n\x0fPipelineService\x12n\n"
    b"\tinference\x12..baidu.paddle_serving.pipeline_serving.Request\x1a/.baidu.paddle_serving"
    b'.pipeline_serving.Response"\x00\x62\x06proto3'
)


def _message_classes() -> tuple[Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(_DESCRIPTOR))
    factory = message_factory.MessageFactory(pool)
    package = "baidu.paddle_serving.pipeline_serving"
    return (
        factory.GetPrototype(pool.FindMessageTypeByName(f"{package}.Request")),
        factory.GetPrototype(pool.FindMessageTypeByName(f"{package}.Response")),
    )


# Protobuf message classes: `PipelineRequest.FromString(data)`, `PipelineResponse(err_no=...)`.
PipelineRequest, PipelineResponse = _message_classes()

Metadata = Sequence[tuple[str, str]]


class RpcRefusal(Exception):
    """The router's own refusal of a call: ends it with `code` and `details`."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = trailing


class RpcAnswer(NamedTuple):
    response: Any  # a PipelineResponse
    trailing: Metadata


# The request path: (request, its invocation metadata by lower-case name) -> the answer;
# raises RpcRefusal to end the call with a status other than OK.
RpcHandler = Callable[[Any, dict[str, str]], Awaitable[RpcAnswer]]


class PipelineRpcServer:
    """`PipelineService/inference` on `host:port`, answered by `handler`."""

    def __init__(
        self,
        handler: RpcHandler,
        host: str,
        port: int,
        *,
        max_message_bytes: int,
        max_concurrent_streams: int,
    ) -> None:
        self._handler = handler
        self._address = f"{host}:{port}"
        # A message over the limit is refused by gRPC itself (RESOURCE_EXHAUSTED) before it
        # is read whole; streams past the limit wait for the client's HTTP/2 flow control.
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_concurrent_streams", max_concurrent_streams),
                ("grpc.so_reuseport", 1),
            ]
        )
        handlers = {
            "inference": grpc.unary_unary_rpc_method_handler(
                self._inference,
                request_deserializer=PipelineRequest.FromString,
                response_serializer=PipelineResponse.SerializeToString,
            )
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = 0

    async def start(self) -> int:
        """Listen and serve; the port (raises OSError when it cannot be bound)."""
        self.port = self._server.add_insecure_port(self._address)
        if not self.port:
            raise OSError(f"cannot listen for gRPC on {self._address}")
        await self._server.start()
        return self.port

    async def stop(self, grace_s: float) -> None:
        """No new calls; calls in flight get `grace_s` to finish."""
        await self._server.stop(grace_s)

    async def _inference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = {key.lower(): value for key, value in context.invocation_metadata() or ()}
        try:
            answer = await self._handler(request, metadata)
        except RpcRefusal as refusal:
            if refusal.trailing:
                context.set_trailing_metadata(tuple(refusal.trailing))
            await context.abort(refusal.code, refusal.details)
            raise  # abort raises; never reached
        if answer.trailing:
            context.set_trailing_metadata(tuple(answer.trailing))
        return answer.response


class RpcCallFailed(Exception):
    """A backend call without a reply: `timeout` (its deadline passed) or not."""

    def __init__(self, detail: str, timeout: bool) -> None:
        super().__init__(detail)
        self.timeout = timeout


class RpcChannels:
    """One keep-alive channel per backend endpoint (`HOST:PORT`), made on first use."""

    def __init__(self, max_message_bytes: int = 64 << 20) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[str, Any] = {}
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Idle channels stay connected: pings every 30 s keep NATs and the backend's
            # idle timers from cutting them.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def _call_of(self, target: str) -> Any:
        call = self._calls.get(target)
        if call is None:
            channel = grpc.aio.insecure_channel(target, options=self._options)
            self._channels[target] = channel
            call = channel.unary_unary(
                METHOD,
                request_serializer=PipelineRequest.SerializeToString,
                response_deserializer=PipelineResponse.FromString,
            )
            self._calls[target] = call
        return call

    async def call(self, target: str, request: Any, timeout_s: float) -> Any:
        """The backend's PipelineResponse; raises RpcCallFailed."""
        try:
            return await self._call_of(target)(request, timeout=timeout_s, wait_for_ready=False)
        except grpc.RpcError as exc:
            code: Optional[grpc.StatusCode] = exc.code() if hasattr(exc, "code") else None
            timeout = code is grpc.StatusCode.DEADLINE_EXCEEDED
            name = code.name if code is not None else "error"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise RpcCallFailed(f"gRPC {name}: {details}", timeout) from None

    async def close(self) -> None:
        channels, self._channels, self._calls = self._channels, {}, {}
        for channel in channels.values():
            await channel.close()

"""The fleet's shared state in Redis: rollout states with a version, the decider's lease, each
replica's measurements. Every key and channel starts with the fleet's `name`.

- `{name}:state:{experiment}`: a hash `{version, doc}`; `doc` is the state file's JSON
  (router.guard.state). `write_state` is a compare-and-set in one Lua script: it writes only if
  the version is still the one the writer read, bumps it and publishes the experiment's name on
  `{name}:changes`, so two replicas can never overwrite each other's decision.
- `{name}:leader`: the replica id holding the lease to decide (SET NX PX; renewed, and given up
  only by its holder, in a script).
- `{name}:windows:{replica}`: that replica's calls (router.guard.slo `SlidingWindow.export`),
  expiring unless refreshed; `{name}:replicas` scores each replica by when it last published.

Every call may raise redis' ConnectionError or TimeoutError: the caller decides what being
cut off means (router.fleet.runtime).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, NamedTuple, Optional

import orjson
import redis.asyncio as redis

# How long a call to Redis may take before the fleet counts as unreachable.
SOCKET_TIMEOUT_S = 1.0
# A replica's measurements older than this are left out of the fleet's checks.
WINDOWS_TTL_S = 5.0

_WRITE_STATE = """
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[1]) then
  return {0, version}
end
redis.call('HSET', KEYS[1], 'version', version + 1, 'doc', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return {1, version + 1}
"""

_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Versioned(NamedTuple):
    version: int  # 0: no state yet
    doc: Optional[dict[str, Any]]


class FleetStore:
    def __init__(self, url: str, name: str) -> None:
        self._client = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
        )
        self._name = name
        self.changes_channel = f"{name}:changes"
        self._write_state = self._client.register_script(_WRITE_STATE)
        self._renew_lease = self._client.register_script(_RENEW_LEASE)
        self._release_lease = self._client.register_script(_RELEASE_LEASE)

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> None:
        await self._client.ping()

    # --- rollout states ------------------------------------------------------------------------

    def _state_key(self, experiment: str) -> str:
        return f"{self._name}:state:{experiment}"

    async def read_states(self, experiments: Iterable[str]) -> dict[str, Versioned]:
        names = list(experiments)
        async with self._client.pipeline(transaction=False) as pipe:
            for experiment in names:
                pipe.hmget(self._state_key(experiment), "version", "doc")
            replies = await pipe.execute()
        found = {}
        for experiment, (version, doc) in zip(names, replies):
            found[experiment] = (
                Versioned(int(version), orjson.loads(doc))
                if version is not None and doc is not None
                else Versioned(0, None)
            )
        return found

    async def write_state(
        self, experiment: str, doc: dict[str, Any], expected_version: int
    ) -> tuple[bool, int]:
        """(written, version now): written only if the version was `expected_version`."""
        written, version = await self._write_state(
            keys=[self._state_key(experiment), self.changes_channel],
            args=[expected_version, orjson.dumps(doc), experiment],
        )
        return bool(written), int(version)

    async def changes(self) -> AsyncIterator[str]:
        """The names of experiments whose state changed, as they are published."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.changes_channel)
            while True:
                message = await pubsub.get_message(timeout=SOCKET_TIMEOUT_S)
                if message is not None and message["type"] == "message":
                    yield bytes(message["data"]).decode()
        finally:
            await pubsub.aclose()

    # --- the lease to decide -------------------------------------------------------------------

    async def hold_lease(self, replica: str, ttl_s: float) -> bool:
        """Take the lease if free, renew it if `replica` holds it; True if it holds it now."""
        held = await self._renew_lease(
            keys=[f"{self._name}:leader"], args=[replica, int(ttl_s * 1000)]
        )
        return bool(held)

    async def release_lease(self, replica: str) -> None:
        await self._release_lease(keys=[f"{self._name}:leader"], args=[replica])

    async def leader(self) -> Optional[str]:
        holder = await self._client.get(f"{self._name}:leader")
        return None if holder is None else bytes(holder).decode()

    # --- measurements --------------------------------------------------------------------------

    async def publish_windows(self, replica: str, windows: dict[str, Any]) -> None:
        now = time.time()
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(
                f"{self._name}:windows:{replica}",
                orjson.dumps(windows),
                px=int(WINDOWS_TTL_S * 1000),
            )
            pipe.zadd(f"{self._name}:replicas", {replica: now})
            pipe.zremrangebyscore(f"{self._name}:replicas", "-inf", now - 3600)
            await pipe.execute()

    async def read_windows(self, except_replica: str) -> list[dict[str, Any]]:
        """The measurements the other replicas published within WINDOWS_TTL_S."""
        recent = await self._client.zrangebyscore(
            f"{self._name}:replicas", time.time() - WINDOWS_TTL_S, "+inf"
        )
        others = [bytes(r).decode() for r in recent if bytes(r).decode() != except_replica]
        if not others:
            return []
        payloads = await self._client.mget([f"{self._name}:windows:{r}" for r in others])
        return [orjson.loads(p) for p in payloads if p is not None]

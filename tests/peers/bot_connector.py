"""A local Bot Connector (the Teams side of the Bot Framework REST API) over real HTTP.

It answers the calls the SDK makes for proactive messages and card updates, records each
one, and can be told to answer the next calls with an error (429 with Retry-After, 5xx,
413) or slowly. It also serves an OAuth client-credentials token endpoint, so outgoing
calls carry a real bearer token that the connector checks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_TOKEN = "connector-test-access-token"


@dataclass
class Call:
    method: str
    path: str
    body: Any
    authorization: str | None
    at: float
    conversation_id: str | None = None
    status: int = 200


@dataclass
class Failure:
    status: int
    retry_after: float | None = None
    code: str = "Error"


@dataclass
class FakeConnector:
    calls: list[Call] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    delay: float = 0.0
    token_requests: int = 0
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # user id -> TeamsChannelAccount JSON
    # Answer the member API for anyone not in `members` ("29:x" -> x@example.com), as for
    # benchmarks with many reviewers; tests name their members instead.
    invent_members: bool = False
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth2/v2.0/token", self.token)
        app.router.add_post("/v3/conversations", self.create_conversation)
        app.router.add_post("/v3/conversations/{cid}/activities", self.send)
        app.router.add_post("/v3/conversations/{cid}/activities/{aid}", self.send)
        app.router.add_put("/v3/conversations/{cid}/activities/{aid}", self.update)
        app.router.add_get("/v3/conversations/{cid}/members/{uid}", self.member)
        return app

    def fail_next(self, *failures: Failure) -> None:
        self.failures.extend(failures)

    def of(self, method: str, prefix: str = "/v3/") -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(prefix) and c.status < 300]

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.token_requests += 1
        if form.get("grant_type") != "client_credentials" or not form.get("client_secret"):
            return web.json_response({"error": "invalid_client"}, status=401)
        return web.json_response({"token_type": "Bearer", "expires_in": 3600, "access_token": BOT_TOKEN})

    async def _enter(self, request: web.Request, conversation_id: str | None) -> tuple[Call, web.Response | None]:
        body = await request.json() if request.can_read_body else None
        call = Call(request.method, request.path, body, request.headers.get("Authorization"), time.monotonic(),
                    conversation_id)
        self.calls.append(call)
        if self.delay:
            await asyncio.sleep(self.delay)
        if call.authorization != f"Bearer {BOT_TOKEN}":
            call.status = 401
            return call, web.json_response({"error": {"code": "Unauthorized", "message": "bad token"}}, status=401)
        if self.failures:
            failure = self.failures.pop(0)
            call.status = failure.status
            headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else None
            return call, web.json_response({"error": {"code": failure.code, "message": "injected"}},
                                           status=failure.status, headers=headers)
        return call, None

    async def create_conversation(self, request: web.Request) -> web.Response:
        call, error = await self._enter(request, None)
        if error:
            return error
        n = next(self._ids)
        channel = ((call.body or {}).get("channelData") or {}).get("channel") or {}
        conversation_id = f"{channel['id']};messageid={n}" if channel.get("id") else f"a:personal-{n}"
        call.conversation_id = conversation_id
        answer: dict[str, Any] = {"id": conversation_id}
        if (call.body or {}).get("activity"):
            answer["activityId"] = f"activity-{n}"
        return web.json_response(answer)

    async def send(self, request: web.Request) -> web.Response:
        call, error = await self._enter(request, request.match_info["cid"])
        return error or web.json_response({"id": f"activity-{next(self._ids)}"})

    async def update(self, request: web.Request) -> web.Response:
        call, error = await self._enter(request, request.match_info["cid"])
        return error or web.json_response({"id": request.match_info["aid"]})

    async def member(self, request: web.Request) -> web.Response:
        call, error = await self._enter(request, request.match_info["cid"])
        if error:
            return error
        uid = request.match_info["uid"]
        member = self.members.get(uid)
        if member is None and self.invent_members:
            name = uid.removeprefix("29:")
            member = {"id": uid, "name": name, "aadObjectId": f"aad-{name}", "email": f"{name}@example.com",
                      "userPrincipalName": f"{name}@example.com"}
        if member is None:
            return web.json_response({"error": {"code": "MemberNotFoundInConversation"}}, status=404)
        return web.json_response(member)

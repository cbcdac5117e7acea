#!/usr/bin/env python3
"""Interoperability checks: the official MCP Python SDK against the query_database example.

Usage: interop_client.py URL READER_TOKEN WRITER_TOKEN

URL is the server's Streamable HTTP endpoint (http://127.0.0.1:PORT/mcp). READER_TOKEN
carries the scope `db:read`, WRITER_TOKEN `db:read db:write`; each should have a subject of
its own (rate limits are per subject and tool). Prints one PASS line per check and exits 1
with a FAIL line at the first check that does not hold.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import urlsplit

from importlib.metadata import version

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

TAG = f"[python mcp {version('mcp')}]"
ALL_TOOLS = {"query_database", "update_order_status", "restock_product"}
READ_TOOLS = {"query_database"}
# Bound on every network step, so a server that never answers fails the run instead of hanging it.
STEP_TIMEOUT_S = 30.0


class CheckFailed(Exception):
    pass


def passed(msg: str) -> None:
    print(f"PASS {TAG} {msg}", flush=True)


def check(cond: Any, msg: str, detail: Any = None) -> None:
    if not cond:
        extra = "" if detail is None else f"\n       got: {detail}"
        raise CheckFailed(f"{msg}{extra}")
    passed(msg)


def dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def errors_in(exc: BaseException) -> list[BaseException]:
    """The exception and everything grouped or chained under it, depth first."""
    seen: list[BaseException] = []
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        stack.extend([e.__cause__, e.__context__])
    return seen


def http_client(token: str | None, statuses: list[int] | None = None) -> httpx2.AsyncClient:
    """The HTTP client the SDK transport uses: a bearer header, and optionally a status recorder."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    hooks: dict[str, list[Any]] = {}
    if statuses is not None:

        async def record(response: httpx2.Response) -> None:
            statuses.append(response.status_code)

        hooks["response"] = [record]
    return httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(STEP_TIMEOUT_S),
        event_hooks=hooks,
    )


def connect(url: str, http: httpx2.AsyncClient, mode: str = "auto") -> Client:
    # The response cache is off: every listing below must come from the server.
    return Client(
        streamable_http_client(url, http_client=http),
        mode=mode,
        cache=None,
        read_timeout_seconds=STEP_TIMEOUT_S,
    )


async def list_tool_names(client: Client) -> tuple[set[str], dict[str, Any]]:
    listing = await client.list_tools()
    tools = {t.name: t for t in listing.tools}
    return set(tools), tools


def structured_error(result: Any) -> dict[str, Any]:
    sc = result.structured_content
    if not isinstance(sc, dict) or not isinstance(sc.get("error"), dict):
        raise CheckFailed(f"expected structuredContent {{'error': {{...}}}}, got {dump(sc)}")
    return sc["error"]


async def check_reader(url: str, token: str) -> None:
    async with http_client(token) as http, connect(url, http) as client:
        passed(f"reader connected (negotiated protocol {client.protocol_version})")
        names, tools = await list_tool_names(client)
        check("query_database" in names, "reader: tools/list lists query_database", sorted(names))
        check(
            not names & {"update_order_status", "restock_product"},
            "reader: tools/list hides update_order_status and restock_product (need db:write)",
            sorted(names),
        )
        check(names == READ_TOOLS, "reader: tools/list is exactly {query_database}", sorted(names))

        schema = tools["query_database"].input_schema
        check(schema.get("type") == "object", 'query_database inputSchema has "type": "object"', dump(schema))
        limit = (schema.get("properties") or {}).get("limit")
        check(isinstance(limit, dict), "query_database inputSchema has a `limit` property", dump(schema))
        check(limit.get("maximum") == 100, "query_database `limit` has maximum 100", dump(limit))

        result = await client.call_tool("query_database", {"table": "users", "limit": 2})
        sc = result.structured_content
        print(f"     query_database structuredContent: {dump(sc)}", flush=True)
        check(not result.is_error, "query_database {table: users, limit: 2} is not an error", dump(sc))
        check(isinstance(sc, dict), "query_database structuredContent is an object", dump(sc))
        rows = sc.get("rows")
        check(isinstance(rows, list) and 1 <= len(rows) <= 2, "structuredContent.rows is an array of 1..2 rows", dump(rows))
        check(len(rows) == 2, "the seeded users table yields exactly 2 rows for limit 2", len(rows))
        check(sc.get("count") == len(rows), "structuredContent.count equals the number of rows", dump(sc))
        check(sc.get("table") == "users", "structuredContent.table is `users`", sc.get("table"))
        check(
            all(isinstance(r, dict) and {"id", "name", "email"} <= set(r) for r in rows),
            "every row is an object with id, name and email",
            dump(rows),
        )
        check([r["id"] for r in rows] == [1, 2], "rows are ordered by id starting at 1", [r.get("id") for r in rows])

        result = await client.call_tool("update_order_status", {"order_id": 1, "status": "shipped"})
        sc = result.structured_content
        print(f"     update_order_status (reader) structuredContent: {dump(sc)}", flush=True)
        check(result.is_error, "reader: update_order_status returns isError: true", dump(sc))
        err = structured_error(result)
        check(err.get("code") == "FORBIDDEN", "reader: update_order_status error code is FORBIDDEN", dump(err))
        check(err.get("retryable") is False, "reader: FORBIDDEN has retryable: false", dump(err))
        check(isinstance(err.get("message"), str) and err["message"], "reader: FORBIDDEN has a message", dump(err))

    # The initialize handshake explicitly (the default above may negotiate without one).
    async with http_client(token) as http, connect(url, http, mode="legacy") as client:
        names, _ = await list_tool_names(client)
        check(
            names == READ_TOOLS,
            f"reader over an initialize handshake (protocol {client.protocol_version}): tools/list is exactly {{query_database}}",
            sorted(names),
        )


async def check_writer(url: str, token: str) -> None:
    async with http_client(token) as http, connect(url, http) as client:
        names, _ = await list_tool_names(client)
        check(names == ALL_TOOLS, "writer: tools/list lists all three tools", sorted(names))

        limited = None
        for i in range(1, 9):
            result = await client.call_tool("restock_product", {"product_id": 1, "quantity": 1})
            sc = result.structured_content
            print(f"     restock_product call {i}: isError={result.is_error} {dump(sc)}", flush=True)
            if not result.is_error:
                check(
                    isinstance(sc, dict) and sc.get("product_id") == 1 and isinstance(sc.get("stock"), int),
                    f"writer: restock_product call {i} succeeds with product_id and stock",
                    dump(sc),
                )
                continue
            check(i > 1, "writer: the first restock_product call succeeds", dump(sc))
            limited = (i, structured_error(result))
            break
        check(limited is not None, "writer: restock_product is rate limited within 8 calls")
        i, err = limited
        check(err.get("code") == "RATE_LIMITED", f"writer: call {i} error code is RATE_LIMITED", dump(err))
        check(err.get("retryable") is True, "writer: RATE_LIMITED has retryable: true", dump(err))
        ms = err.get("retry_after_ms")
        check(
            isinstance(ms, int) and not isinstance(ms, bool) and ms > 0,
            "writer: RATE_LIMITED has an integer retry_after_ms > 0",
            dump(err),
        )


async def check_no_token(url: str) -> None:
    # 1. The SDK without credentials must fail to connect, because of a 401.
    statuses: list[int] = []
    error: BaseException | None = None
    try:
        async with http_client(None, statuses) as http, connect(url, http) as client:
            await client.list_tools()
    except Exception as e:  # whatever the SDK raises (possibly an exception group)
        error = e
    check(error is not None, "no token: the SDK fails to connect", f"connected; HTTP statuses {statuses}")
    text = " | ".join(f"{type(e).__name__}: {e}" for e in errors_in(error))
    print(f"     SDK error: {text}", flush=True)
    print(f"     HTTP statuses seen by the SDK's client: {statuses}", flush=True)
    mentions = "401" in text or "unauthorized" in text.lower()
    check(
        mentions or (statuses and all(s == 401 for s in statuses)),
        "no token: the failure is a 401 (in the SDK's error, or every HTTP answer it got)",
        f"{text}; statuses {statuses}",
    )

    # 2. Raw HTTP: 401 with a Bearer challenge naming the resource metadata.
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    metadata_url = f"{origin}/.well-known/oauth-protected-resource{parts.path}"
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "interop-raw", "version": "0"},
        },
    }
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=STEP_TIMEOUT_S) as http:
        r = await http.post(url, content=json.dumps(initialize), headers=headers)
        challenge = r.headers.get("www-authenticate", "")
        print(f"     raw POST without Authorization: {r.status_code}, WWW-Authenticate: {challenge!r}", flush=True)
        check(r.status_code == 401, "no token: raw POST initialize gets 401", r.status_code)
        check(challenge.startswith("Bearer"), "no token: WWW-Authenticate starts with Bearer", challenge)
        check(
            f'resource_metadata="{metadata_url}"' in challenge,
            f'no token: WWW-Authenticate has resource_metadata="{metadata_url}"',
            challenge,
        )

        r = await http.post(url, content=json.dumps(initialize), headers={**headers, "Authorization": "Bearer not-a-jwt"})
        print(f"     raw POST with a malformed bearer token: {r.status_code}", flush=True)
        check(r.status_code == 401, "bad token: raw POST initialize with `Bearer not-a-jwt` gets 401", r.status_code)
        check(
            r.headers.get("www-authenticate", "").startswith("Bearer"),
            "bad token: the 401 carries a Bearer challenge",
            r.headers.get("www-authenticate"),
        )

        r = await http.get(metadata_url)
        print(f"     GET {metadata_url}: {r.status_code} {r.text[:500]}", flush=True)
        check(r.status_code == 200, "resource metadata: GET answers 200", r.status_code)
        try:
            meta = r.json()
        except ValueError:
            meta = None
        check(isinstance(meta, dict), "resource metadata: the body is a JSON object", r.text[:500])
        check(meta.get("resource") == url, f"resource metadata: resource == {url}", meta.get("resource"))
        scopes = meta.get("scopes_supported")
        check(
            isinstance(scopes, list) and {"db:read", "db:write"} <= set(scopes),
            "resource metadata: scopes_supported has db:read and db:write",
            scopes,
        )
        methods = meta.get("bearer_methods_supported")
        check(
            isinstance(methods, list) and "header" in methods,
            "resource metadata: bearer_methods_supported has header",
            methods,
        )


async def main(url: str, reader: str, writer: str) -> None:
    for name, step in (
        ("reader", lambda: check_reader(url, reader)),
        ("writer", lambda: check_writer(url, writer)),
        ("no token", lambda: check_no_token(url)),
    ):
        try:
            await asyncio.wait_for(step(), timeout=120)
        except asyncio.TimeoutError:
            raise CheckFailed(f"{name} checks did not finish within 120 s") from None


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(main(*sys.argv[1:]))
    except CheckFailed as e:
        print(f"FAIL {TAG} {e}", flush=True)
        sys.exit(1)
    except BaseException as e:  # an SDK error where a check expected success
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        detail = " | ".join(f"{type(x).__name__}: {x}" for x in errors_in(e))
        print(f"FAIL {TAG} unexpected error: {detail}", flush=True)
        sys.exit(1)
    print(f"PASS {TAG} all checks passed", flush=True)

"""The Python MCP SDK (`mcp` 2.3) as a client of Tollgate, for tests/tests/interop_python.rs.

    python client.py PLAN_JSON

PLAN_JSON: {"url", "token", "mode": "legacy"|"auto", "sampling": bool,
            "calls": [{"name", "arguments", "progress": bool}]}

Connects with `streamable_http_client` + `ClientSession`, sending the grant token as a bearer
header. `mode` picks the era the way the SDK does: "legacy" runs the `initialize` handshake
(`ClientSession.initialize`); "auto" runs the SDK's own connect-time policy (`negotiate_auto`,
what `mcp.client.Client(mode="auto")` does): probe `server/discover` at 2026-07-28 and fall back
to `initialize` on anything that is not positive modern evidence.

Then lists every tool (all pages) and makes each call in order, and prints ONE JSON line:
{"era", "protocol_version", "server_name", "tools": [names],
 "calls": [{"name", "is_error", "text", "meta", "structured", "progress": [[p, total, msg]...]}
           | {"name", "error": {"code", "message"}}],
 "sampling_requests": n}
The Rust test asserts on it. Nothing here decides pass or fail.
"""

import json
import sys

import anyio
import httpx2
import mcp_types as types
from mcp.client._probe import negotiate_auto
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


async def run(plan: dict) -> dict:
    sampling_requests = 0

    async def answer_sampling(_context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        nonlocal sampling_requests
        sampling_requests += 1
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="sampled by the tollgate interop client"),
            model="tollgate-interop",
            stop_reason="endTurn",
        )

    session_args = {}
    if plan.get("sampling"):
        session_args["sampling_callback"] = answer_sampling

    headers = {"Authorization": f"Bearer {plan['token']}"}
    timeout = httpx2.Timeout(30.0, read=120.0)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with streamable_http_client(plan["url"], http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write, read_timeout_seconds=60, **session_args) as session:
                if plan["mode"] == "legacy":
                    await session.initialize()
                else:
                    await negotiate_auto(session)
                era = "modern" if session.discover_result is not None else "legacy"
                server_info = session.server_info
                out = {
                    "era": era,
                    "protocol_version": session.protocol_version,
                    "server_name": server_info.name if server_info is not None else None,
                    "tools": [],
                    "calls": [],
                }

                cursor = None
                while True:
                    params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    listed = await session.list_tools(params=params)
                    out["tools"].extend(t.name for t in listed.tools)
                    cursor = listed.next_cursor
                    if not cursor:
                        break

                for call in plan.get("calls", []):
                    out["calls"].append(await make_call(session, call))
                out["sampling_requests"] = sampling_requests
                return out


async def make_call(session: ClientSession, call: dict) -> dict:
    progress = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append([value, total, message])

    try:
        result = await session.call_tool(
            call["name"],
            call.get("arguments") or {},
            progress_callback=on_progress if call.get("progress") else None,
        )
    except MCPError as e:
        return {"name": call["name"], "error": {"code": e.error.code, "message": e.error.message}}
    dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    texts = [c.get("text", "") for c in dumped.get("content", []) if c.get("type") == "text"]
    return {
        "name": call["name"],
        "is_error": bool(dumped.get("isError", False)),
        "text": "\n".join(texts),
        "meta": dumped.get("_meta"),
        "structured": dumped.get("structuredContent"),
        "progress": progress,
    }


def main() -> None:
    plan = json.loads(sys.argv[1])
    out = anyio.run(run, plan)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

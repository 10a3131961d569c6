"""A tiny dual-era MCP server on the Python SDK's `MCPServer` (formerly FastMCP), for
tests/tests/interop_python.rs.

    python mcpserver_app.py

Binds 127.0.0.1 on a port the kernel picks (no port race: the socket is bound here and handed
to uvicorn), prints `listening http://127.0.0.1:PORT/mcp` on stdout once it accepts, and serves
Streamable HTTP until killed. The SDK serves both eras on that endpoint: `initialize` opens a
legacy session, a request with `_meta` protocol version 2026-07-28 is served statelessly.

Tools:
- `run-rerun` (run_id): reports two progress steps, then answers `rerun of <run_id> queued`.
- `delete-branch` (branch): the destructive one a policy denies.
- `debug-dump`: the one a policy hides.
"""

import socket
import sys

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("tollgate-interop-mcpserver")


@server.tool(name="run-rerun", description="Re-run a CI run")
async def run_rerun(run_id: str, ctx: Context) -> str:
    await ctx.report_progress(1, 2, "queued")
    await ctx.report_progress(2, 2, "started")
    return f"rerun of {run_id} queued"


@server.tool(name="delete-branch", description="Delete a git branch")
def delete_branch(branch: str) -> str:
    return f"deleted {branch}"


@server.tool(name="debug-dump", description="Dump internal state")
def debug_dump() -> str:
    return "internal state"


class AnnouncingServer(uvicorn.Server):
    """Prints the URL once uvicorn accepts connections, so the test waits on a line, not a timer."""

    def __init__(self, config: uvicorn.Config, port: int) -> None:
        super().__init__(config)
        self.port = port

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        print(f"listening http://127.0.0.1:{self.port}/mcp", flush=True)


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = server.streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    await AnnouncingServer(config, port).serve(sockets=[sock])


if __name__ == "__main__":
    anyio.run(main)
    sys.exit(0)

"""The official Python SDK client (`mcp` on PyPI, in the project's .venv) doing what every MCP
client does, against server-everything: initialize, tools/list, tools/call, resources/list + read,
prompts/list + get, ping, a long-running tool with progress notifications; then ends the session
(DELETE). Prints one JSON transcript on stdout, in the same shape as ts-client.mjs.

usage: .venv/bin/python py_client.py URL [TOKEN]
"""

import asyncio
import json
import re
import sys

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def dump(result):
    """A result as the JSON the server sent (aliases, no unset fields)."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


async def main(url, token):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    out = {}
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                out["server"] = init.server_info.name
                out["protocolVersion"] = init.protocol_version

                tools = await session.list_tools()
                out["tools"] = sorted(t.name for t in tools.tools)
                out["echo"] = dump(await session.call_tool("echo", {"message": "hello through the gateway"}))
                out["sum"] = dump(await session.call_tool("get-sum", {"a": 2, "b": 40}))
                out["image"] = dump(await session.call_tool("get-tiny-image", {}))

                resources = await session.list_resources()
                uris = sorted(str(r.uri) for r in resources.resources)
                out["resources"] = uris
                static = next(u for u in uris if u.startswith("demo://resource/static/"))
                out["read"] = dump(await session.read_resource(static))
                dynamic = json.dumps(dump(await session.read_resource("demo://resource/dynamic/text/1")))
                # A dynamic resource says when it was made: the one part that differs per run.
                out["readDynamic"] = json.loads(re.sub(r"\d{1,2}:\d{2}:\d{2}( [AP]M)?", "TIME", dynamic))
                templates = await session.list_resource_templates()
                out["templates"] = sorted(t.uri_template for t in templates.resource_templates)

                prompts = await session.list_prompts()
                out["prompts"] = sorted(p.name for p in prompts.prompts)
                out["simplePrompt"] = dump(await session.get_prompt("simple-prompt"))
                out["argsPrompt"] = dump(await session.get_prompt("args-prompt", {"city": "Lyon", "state": "Rhône"}))

                out["ping"] = dump(await session.send_ping())

                progress = []

                async def on_progress(value, total, message):
                    progress.append({"progress": value, "total": total})

                out["longRunning"] = dump(
                    await session.call_tool(
                        "trigger-long-running-operation",
                        {"duration": 2, "steps": 4},
                        read_timeout_seconds=30,
                        progress_callback=on_progress,
                    )
                )
                out["progress"] = progress
    # Leaving streamable_http_client sent the DELETE that ends the session.
    out["sessionEnded"] = True
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: py_client.py URL [TOKEN]")
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))

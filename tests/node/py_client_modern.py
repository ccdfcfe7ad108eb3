"""The official Python SDK client (`mcp` on PyPI, in the project's .venv) speaking MCP 2026-07-28:
stateless, no initialize, every request carries its `_meta` and the Mcp-Method / Mcp-Name /
Mcp-Param-* headers. Prints one JSON transcript on stdout, in the style of py_client.py.

The revision is chosen explicitly with `Client(..., mode="2026-07-28")` (the SDK's version pin:
no `initialize`, no auto-probe fallback to the legacy handshake); the tour then sends
`server/discover` itself and adopts its answer, so the transcript records what the server
advertised.

Scenarios:
  tour (default)  against the demo payments server: server/discover, tools/list (with the
                  list's ttlMs/cacheScope), get_customer, list_payments_by_region (the SDK mirrors
                  `region` into Mcp-Param-Region), export_statement answered through the SDK's
                  elicitation callback (multi round-trip request: input_required, then a retry
                  with inputResponses + requestState), resources/list + read, prompts/list + get,
                  slow_stream with progress and (opted-in) log notifications, and
                  subscriptions/listen: open, refund a payment, record the
                  notifications/resources/updated, close. A step that fails (say, a gateway
                  refuses it) is recorded as {"error": ...} under its key and named in "failed";
                  the tour goes on and the transcript is still printed.
  approve         `--tool NAME --args JSON`: call that one tool. Every elicitation the call meets
                  (a gateway holding the call answers input_required with a URL-mode elicitation
                  pointing at an approval) is printed as one JSON line on STDERR,
                  {"elicitation": {"mode", "url", "message", ...}}, then one line is read from
                  STDIN: URL mode answers `accept` if the line is `accept`, else `decline`; form
                  mode accepts a line holding a JSON object as the form content, `accept` as the
                  schema defaults, anything else declines. The SDK then retries the call.

Every transcript has "wire": per POST, the MCP headers the SDK sent (and, for a tools/call retry,
the inputResponses it carried and whether it echoed a requestState; the state itself differs per
run).

usage: .venv/bin/python py_client_modern.py URL [TOKEN] [--scenario tour|approve]
           [--tool NAME] [--args JSON] [--max-rounds N]
"""

import argparse
import json
import re
import sys

import anyio
import httpx2
import mcp_types as types
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT
from mcp.shared.exceptions import MCPError

VERSION = "2026-07-28"
MCP_HEADERS = ("mcp-protocol-version", "mcp-method", "mcp-name")
CALL_TIMEOUT = 60.0
# A customer and a payment that exist in the payments server's data.rs.
CUSTOMER = "cus_1"
PAYMENT = "pay_1001"
FORM_MONTH = "2026-11"


def dump(result):
    """A result as the JSON the server sent (aliases, no unset fields)."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


def error_json(exc):
    """An exception as transcript JSON: JSON-RPC errors keep their code and data."""
    if isinstance(exc, MCPError):
        return dump(exc.error)
    return {"type": type(exc).__name__, "message": str(exc)}


class Wire:
    """Records the MCP request headers of every POST the SDK makes (an httpx request hook)."""

    def __init__(self):
        self.posts = []

    async def hook(self, request):
        if request.method != "POST":
            return
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in MCP_HEADERS or name.lower().startswith("mcp-param-")
        }
        entry = {"headers": dict(sorted((k.lower(), v) for k, v in headers.items()))}
        try:
            body = json.loads(request.content)
        except ValueError:
            body = {}
        params = body.get("params") or {}
        if "inputResponses" in params:
            entry["inputResponses"] = params["inputResponses"]
        if "requestState" in params:
            entry["requestStateEchoed"] = True
        meta = params.get("_meta") or {}
        if "io.modelcontextprotocol/logLevel" in meta:
            entry["logLevel"] = meta["io.modelcontextprotocol/logLevel"]
        self.posts.append(entry)


async def read_stdin_line():
    """One line from STDIN without blocking the event loop ("" at end of input)."""
    return await anyio.to_thread.run_sync(sys.stdin.readline)


def form_defaults(params):
    schema = params.requested_schema
    properties = (schema.get("properties") if isinstance(schema, dict) else None) or {}
    return {name: prop["default"] for name, prop in properties.items() if "default" in prop}


def elicitation_json(params):
    if isinstance(params, types.ElicitRequestURLParams):
        return {"mode": "url", "url": params.url, "message": params.message}
    return {"mode": "form", "message": params.message, "requestedSchema": params.requested_schema}


async def run(url, token, scenario, options):
    wire = Wire()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    out = {"scenario": scenario}
    elicitations = []
    progress = []
    logs = []

    async def tour_elicitation(context, params):
        elicitations.append(elicitation_json(params))
        if isinstance(params, types.ElicitRequestURLParams):
            return types.ElicitResult(action="decline")
        return types.ElicitResult(action="accept", content={"month": FORM_MONTH})

    async def approve_elicitation(context, params):
        seen = elicitation_json(params)
        elicitations.append(seen)
        print(json.dumps({"elicitation": seen}), file=sys.stderr, flush=True)
        line = (await read_stdin_line()).strip()
        if isinstance(params, types.ElicitRequestURLParams):
            return types.ElicitResult(action="accept" if line == "accept" else "decline")
        if line == "accept":
            return types.ElicitResult(action="accept", content=form_defaults(params))
        try:
            content = json.loads(line)
        except ValueError:
            content = None
        if isinstance(content, dict):
            return types.ElicitResult(action="accept", content=content)
        return types.ElicitResult(action="decline")

    async def on_log(params):
        logs.append({"level": params.level, "logger": params.logger, "data": params.data})

    http = httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
        event_hooks={"request": [wire.hook]},
    )
    async with http:
        client = Client(
            streamable_http_client(url, http_client=http),
            mode=VERSION,
            client_info=types.Implementation(name="tollgate-e2e-py-modern", version="1.0.0"),
            read_timeout_seconds=CALL_TIMEOUT,
            # Passing a callback makes the SDK declare elicitation {form, url} in every request's
            # _meta clientCapabilities.
            elicitation_callback=approve_elicitation if scenario == "approve" else tour_elicitation,
            logging_callback=on_log,
            input_required_max_rounds=options.max_rounds,
        )
        async with client:
            if scenario == "approve":
                out["tool"] = options.tool
                try:
                    # Listing first lets the SDK mirror x-mcp-header parameters into headers.
                    await client.list_tools()
                    out["result"] = dump(
                        await client.call_tool(options.tool, json.loads(options.args or "{}"))
                    )
                except Exception as exc:  # every failure is part of the transcript
                    out["error"] = error_json(exc)
                out["elicitationCount"] = len(elicitations)
                out["elicitations"] = elicitations
            else:
                await tour(client, out, elicitations, progress, logs)
    out["wire"] = wire.posts
    print(json.dumps(out))


async def step(out, key, action):
    """Runs one tour step into out[key]; a failure is recorded there (and listed in out["failed"])
    instead of ending the tour, so a gateway refusing one feature still yields a transcript."""
    try:
        out[key] = await action()
    except Exception as exc:  # every failure is part of the transcript
        out[key] = {"error": error_json(exc)}
        out.setdefault("failed", []).append(key)


async def tour(client, out, elicitations, progress, logs):
    session = client.session

    async def discover():
        # server/discover, sent explicitly and adopted: the pinned mode synthesized a placeholder.
        raw = await session.send_discover(VERSION)
        session.adopt(types.DiscoverResult.model_validate(raw))
        out["server"] = client.server_info.name if client.server_info else None
        out["protocolVersion"] = client.protocol_version
        return {
            "supportedVersions": raw.get("supportedVersions"),
            "capabilities": raw.get("capabilities"),
            "ttlMs": raw.get("ttlMs"),
            "cacheScope": raw.get("cacheScope"),
        }

    await step(out, "discover", discover)

    async def list_tools():
        tools = await client.list_tools()
        listed = dump(tools)
        # The SDK's list results expose the 2026-07-28 cache hints (ttl_ms / cache_scope).
        out["toolsCache"] = {"ttlMs": listed.get("ttlMs"), "cacheScope": listed.get("cacheScope")}
        region = next((t for t in tools.tools if t.name == "list_payments_by_region"), None)
        if region is not None:
            out["regionHeader"] = region.input_schema["properties"]["region"].get("x-mcp-header")
        return sorted(t.name for t in tools.tools)

    await step(out, "tools", list_tools)

    async def get_customer():
        return dump(await client.call_tool("get_customer", {"customer_id": CUSTOMER}))

    await step(out, "getCustomer", get_customer)

    async def by_region():
        # Listed above, so the SDK sends the region as Mcp-Param-Region too.
        return dump(await client.call_tool("list_payments_by_region", {"region": "us-east1", "limit": 2}))

    await step(out, "byRegion", by_region)

    async def export_statement():
        # A multi round-trip request: the SDK answers the form elicitation through the callback
        # and retries with inputResponses + the echoed requestState.
        record = {}
        try:
            record["result"] = dump(await client.call_tool("export_statement", {"customer_id": CUSTOMER}))
        except Exception as exc:
            record["error"] = error_json(exc)
        record["elicitations"] = list(elicitations)
        record["elicitationMessage"] = elicitations[0]["message"] if elicitations else None
        return record

    await step(out, "exportStatement", export_statement)

    async def list_resources():
        resources = await client.list_resources()
        listed = dump(resources)
        out["resourcesCache"] = {"ttlMs": listed.get("ttlMs"), "cacheScope": listed.get("cacheScope")}
        return sorted(str(r.uri) for r in resources.resources)

    await step(out, "resources", list_resources)

    async def read_policy():
        return dump(await client.read_resource("payments://policy"))

    async def read_merchant():
        return dump(await client.read_resource("payments://merchants/m_1"))

    await step(out, "readPolicy", read_policy)
    await step(out, "readMerchant", read_merchant)

    async def list_prompts():
        prompts = await client.list_prompts()
        listed = dump(prompts)
        out["promptsCache"] = {"ttlMs": listed.get("ttlMs"), "cacheScope": listed.get("cacheScope")}
        return sorted(p.name for p in prompts.prompts)

    async def get_prompt():
        return dump(await client.get_prompt("summarize_customer", {"customer_id": CUSTOMER}))

    await step(out, "prompts", list_prompts)
    await step(out, "prompt", get_prompt)

    messages = []

    async def on_progress(value, total, message):
        # Numbers apart from the messages: the messages name cards a gateway masks.
        progress.append({"progress": value, "total": total})
        messages.append(message)

    async def slow_stream():
        # Logging is opt-in per request from 2026-07-28: this one call asks for info-level logs.
        return dump(
            await client.call_tool(
                "slow_stream",
                {"count": 3, "interval_ms": 50},
                progress_callback=on_progress,
                meta={"io.modelcontextprotocol/logLevel": "info"},
            )
        )

    await step(out, "slowStream", slow_stream)
    out["progress"] = progress
    out["progressMessages"] = messages
    out["logs"] = logs

    await step(out, "listen", lambda: listen_for_refund(client))


async def listen_for_refund(client):
    """subscriptions/listen on one payment, refund it, wait for the update, close the stream."""
    uri = f"payments://payments/{PAYMENT}"
    record = {"requested": [uri]}
    async with client.listen(resource_subscriptions=[uri]) as subscription:
        record["honored"] = subscription.honored.model_dump(mode="json", by_alias=True, exclude_none=True)
        refund = await client.call_tool("refund_payment", {"payment_id": PAYMENT, "amount": 1.5})
        # Refund ids count refunds since the server started: the one part that differs per run.
        record["refund"] = json.loads(re.sub(r"\bre_\d+\b", "re_N", json.dumps(dump(refund))))
        events = []
        with anyio.move_on_after(10):
            async for event in subscription:
                events.append({"event": type(event).__name__, **vars(event)})
                break
        record["events"] = events
    record["closed"] = True
    # The refund is visible on the resource the notification named (its refund list grows with
    # every run, so only whether it is there goes into the transcript).
    after = dump(await client.read_resource(uri))
    record["readAfter"] = {
        "ttlMs": after.get("ttlMs"),
        "cacheScope": after.get("cacheScope"),
        "refundListed": '"amount": 1.5' in after["contents"][0].get("text", ""),
    }
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("token", nargs="?")
    parser.add_argument("--scenario", default="tour", choices=["tour", "approve"])
    parser.add_argument("--tool", help="approve: the tool to call")
    parser.add_argument("--args", help="approve: the tool arguments, a JSON object")
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=10,
        help="input_required rounds before the SDK gives up (each held retry is one)",
    )
    options = parser.parse_args()
    if options.scenario == "approve" and not options.tool:
        parser.error("--scenario approve needs --tool")
    anyio.run(run, options.url, options.token, options.scenario, options)


if __name__ == "__main__":
    main()

// A client of the legacy HTTP+SSE transport (protocol 2024-11-05: GET opens an SSE stream whose
// `endpoint` event names where to POST), the TypeScript SDK's SSEClientTransport. Prints what
// happened as one JSON object: {"connected": bool, "error": "...", "tools": n}.
//
// usage: node legacy-client.mjs URL [TOKEN]
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";

const [url, token] = process.argv.slice(2);
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const transport = new SSEClientTransport(new URL(url), {
  requestInit: { headers },
  eventSourceInit: {
    fetch: (input, init) => fetch(input, { ...init, headers: { ...(init?.headers ?? {}), ...headers } }),
  },
});
const client = new Client({ name: "tollgate-legacy-client", version: "1.0.0" });
const out = { connected: false };
const timer = setTimeout(() => {
  out.error = "no answer in 10 s";
  console.log(JSON.stringify(out));
  process.exit(0);
}, 10000);
try {
  await client.connect(transport);
  out.connected = true;
  out.tools = (await client.listTools()).tools.length;
} catch (error) {
  out.error = String(error?.message ?? error);
  out.code = error?.code;
}
clearTimeout(timer);
console.log(JSON.stringify(out));
process.exit(0);

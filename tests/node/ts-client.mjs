// The official TypeScript SDK client (@modelcontextprotocol/sdk) doing what every MCP client
// does, against server-everything: initialize, tools/list, tools/call, resources/list + read,
// prompts/list + get, ping, a long-running tool with progress notifications; then ends the
// session (DELETE). Prints one JSON transcript on stdout.
//
// usage: node ts-client.mjs URL [TOKEN]
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token] = process.argv.slice(2);
if (!url) {
  console.error("usage: node ts-client.mjs URL [TOKEN]");
  process.exit(2);
}

const requestInit = token ? { headers: { Authorization: `Bearer ${token}` } } : undefined;
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit });
const client = new Client({ name: "tollgate-ts-client", version: "1.0.0" });
const out = {};

await client.connect(transport);
out.server = client.getServerVersion()?.name;
out.protocolVersion = transport.protocolVersion;
out.hasSessionId = typeof transport.sessionId === "string" && transport.sessionId.length > 0;

const tools = await client.listTools();
out.tools = tools.tools.map((t) => t.name).sort();
out.echo = await client.callTool({ name: "echo", arguments: { message: "hello through the gateway" } });
out.sum = await client.callTool({ name: "get-sum", arguments: { a: 2, b: 40 } });
out.image = await client.callTool({ name: "get-tiny-image", arguments: {} });

const resources = await client.listResources();
out.resources = resources.resources.map((r) => r.uri).sort();
const staticDoc = resources.resources.find((r) => r.uri.startsWith("demo://resource/static/"));
out.read = await client.readResource({ uri: staticDoc.uri });
// A dynamic resource says when it was made: that time is the one part that differs per run.
const dynamic = await client.readResource({ uri: "demo://resource/dynamic/text/1" });
out.readDynamic = JSON.parse(JSON.stringify(dynamic).replace(/\d{1,2}:\d{2}:\d{2}( [AP]M)?/g, "TIME"));
out.templates = (await client.listResourceTemplates()).resourceTemplates.map((t) => t.uriTemplate).sort();

const prompts = await client.listPrompts();
out.prompts = prompts.prompts.map((p) => p.name).sort();
out.simplePrompt = await client.getPrompt({ name: "simple-prompt" });
out.argsPrompt = await client.getPrompt({ name: "args-prompt", arguments: { city: "Lyon", state: "Rhône" } });

out.ping = await client.ping();

const progress = [];
out.longRunning = await client.callTool(
  { name: "trigger-long-running-operation", arguments: { duration: 2, steps: 4 } },
  undefined,
  { onprogress: (p) => progress.push({ progress: p.progress, total: p.total }), timeout: 30000 },
);
out.progress = progress;

await transport.terminateSession();
out.sessionEnded = transport.sessionId === undefined;
await client.close();
console.log(JSON.stringify(out));

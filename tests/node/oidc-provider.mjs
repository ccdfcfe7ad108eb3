// A real OpenID Connect provider (the `oidc-provider` package) for the end-to-end tests and the
// `make run` demo. Tokens come out of its token endpoint, signed by its own keys, as JWT access
// tokens for the resource (RFC 8707 resource indicator) the caller names:
//
// - people sign in with the password grant (RFC 6749 4.3, registered here as a custom grant,
//   for the CLI and the tests' helpers) and get `sub`, `email`, `groups`;
// - or in a browser, with the authorization code flow and PKCE (the operator console): a tiny
//   login page of this file's own at /interaction/UID (fields `email` and `password`, button
//   "Sign in"; the email is an account's `sub` or its `email` claim), and consent is granted
//   without a screen. With `resource=<indicator>` on the authorization request, the code
//   exchanges for the same JWT access token the password grant gives, plus an id_token (scope
//   `openid`) carrying the request's `nonce`;
// - CI workloads use client_credentials and get the claims of their client entry, shaped like a
//   GitHub Actions OIDC token (`repository`, `workflow`, `ref`, `actor`, `run_id`);
// - a workload that acts for a person exchanges its own token, with the person's token as the
//   actor token, for one carrying `act: {sub: <person>}` (RFC 8693 token exchange, a custom
//   grant here too).
//
// usage: node oidc-provider.mjs CONFIG.json
//
// CONFIG: { "port": 0, "issuer": optional (default http://127.0.0.1:PORT), "keysDir": DIR,
//           "signingKeys": ["k1", ...]   every key published in the JWKS; the first one signs,
//           "resources": { "<resource indicator>": { "audience": "...", "ttl": seconds } },
//           "accounts": { "<sub>": { "password": "...", "claims": { ... }, "ttl": seconds } },
//           "clients": [ { "client_id", "client_secret", "grant_types": [...], "claims": {...},
//                          "ttl": seconds },
//                        { "client_id", "redirect_uris": ["http://..."],
//                          "grant_types": ["authorization_code"],
//                          "token_endpoint_auth_method": "none" } ] }
//
// A client with `redirect_uris` is a browser client (authorization code, response_type `code`).
// Without a `client_secret` it is public ("none" is then the default method) and must send a
// PKCE S256 challenge; with one it authenticates at the token endpoint by
// `token_endpoint_auth_method` ("client_secret_basic" unless it says "client_secret_post").
// Other clients authenticate with client_secret_post and default to client_credentials and
// token exchange. Scopes beside `openid`: `email` and `groups` put those claims in the id_token;
// `mcp` (every resource's scope) puts `scope: "mcp"` in the access token, like the password grant.
//
// A key named in signingKeys is generated (RSA 2048) into keysDir the first time and reused
// after, so that two providers sharing keysDir sign with the same key (a wrong-issuer test), and
// a reload keeps the keys it still names. SIGHUP reads CONFIG again and swaps in a provider built
// from it on the same port: that is how a test rotates keys (publish the next, sign with it,
// retire the old) while the gateway keeps running. Prints "listening on ISSUER" when ready and
// "reloaded signing keys K1,K2" after each reload.

import { createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';

import Provider, { errors } from 'oidc-provider';

const PASSWORD_GRANT = 'password';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

// The actor of each token exchange request, for extraTokenClaims.
const actors = new WeakMap();

function loadConfig(path) {
  const config = JSON.parse(readFileSync(path, 'utf8'));
  for (const field of ['keysDir', 'signingKeys', 'resources']) {
    if (!config[field]) throw new Error(`${path}: "${field}" is required`);
  }
  if (!Array.isArray(config.signingKeys) || config.signingKeys.length === 0) {
    throw new Error(`${path}: "signingKeys" must name at least one key`);
  }
  return config;
}

/** The private JWK named `kid` in `dir`, generated the first time it is asked for. */
function signingKey(dir, kid) {
  if (!/^[A-Za-z0-9_-]+$/.test(kid)) throw new Error(`key id ${JSON.stringify(kid)}: letters, digits, - and _ only`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${kid}.json`);
  if (!existsSync(file)) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
    writeFileSync(file, JSON.stringify(jwk), { mode: 0o600 });
  }
  return JSON.parse(readFileSync(file, 'utf8'));
}

/** What the provider knows about each resource it issues tokens for (RFC 8707). */
function resourceServerInfo(resources) {
  return (ctx, indicator) => {
    const resource = resources[indicator];
    if (!resource) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
    return {
      audience: resource.audience,
      scope: 'mcp',
      accessTokenFormat: 'jwt',
      accessTokenTTL: resource.ttl ?? 3600,
      jwt: { sign: { alg: 'RS256' } },
    };
  };
}

function build(config, issuer) {
  const accounts = config.accounts ?? {};
  const clients = config.clients ?? [];
  const clientClaims = new Map(clients.map((c) => [c.client_id, c]));
  const resourceInfo = resourceServerInfo(config.resources);

  const keys = config.signingKeys.map((kid) => signingKey(config.keysDir, kid));
  const provider = new Provider(issuer, {
    jwks: { keys: keys.map((key) => ({ ...key })) },
    clients: clients.map(clientMetadata),
    claims: { openid: ['sub'], email: ['email'], groups: ['groups'] },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        useGrantedResource: () => true,
        getResourceServerInfo: resourceInfo,
      },
    },
    ttl: {
      AccessToken: (ctx, token) => accounts[token.accountId]?.ttl ?? token.resourceServer?.accessTokenTTL ?? 3600,
      ClientCredentials: (ctx, token) => clientClaims.get(token.clientId)?.ttl ?? token.resourceServer?.accessTokenTTL ?? 3600,
    },
    async extraTokenClaims(ctx, token) {
      if (token.gty === TOKEN_EXCHANGE) {
        return { ...clientClaims.get(token.clientId)?.claims, act: actors.get(ctx) };
      }
      if (token.accountId) return accounts[token.accountId]?.claims;
      return clientClaims.get(token.clientId)?.claims;
    },
    async findAccount(ctx, sub) {
      if (!accounts[sub]) return undefined;
      return { accountId: sub, claims: async () => ({ sub, ...accounts[sub].claims }) };
    },
  });
  provider.registerGrantType(PASSWORD_GRANT, passwordGrant(provider, accounts, resourceInfo), ['username', 'password', 'scope', 'resource']);
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    tokenExchangeGrant(provider, (token) => verifiedClaims(token, keys, issuer), resourceInfo),
    ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'resource'],
  );
  return provider;
}

/** A CONFIG client as oidc-provider registers it. */
function clientMetadata({ client_id, client_secret, grant_types, redirect_uris, token_endpoint_auth_method }) {
  if (redirect_uris) {
    return {
      client_id,
      ...(client_secret ? { client_secret } : {}),
      grant_types: grant_types ?? ['authorization_code'],
      redirect_uris,
      response_types: ['code'],
      token_endpoint_auth_method: token_endpoint_auth_method ?? (client_secret ? 'client_secret_basic' : 'none'),
    };
  }
  return {
    client_id,
    client_secret,
    grant_types: grant_types ?? ['client_credentials', TOKEN_EXCHANGE],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
  };
}

/** The account `login` names (its `sub`, else its `email` claim) if `password` is its own. */
function signIn(accounts, login, password) {
  const sub = Object.hasOwn(accounts, login)
    ? login
    : Object.keys(accounts).find((key) => accounts[key].claims?.email === login);
  if (sub === undefined || typeof password !== 'string' || accounts[sub].password !== password) return undefined;
  return sub;
}

const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, email, error) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in</title></head>
<body><main>
<h1>Sign in</h1>
${error ? `<p role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}">
<p><label for="email">Email</label> <input id="email" name="email" type="text" autocomplete="username" value="${escapeHtml(email)}" required autofocus></p>
<p><label for="password">Password</label> <input id="password" name="password" type="password" autocomplete="current-password" required></p>
<p><button type="submit">Sign in</button></p>
</form>
</main></body></html>
`;
}

function send(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    // No form-action: Chromium applies it to the redirects after the POST, which leave for the
    // client's redirect_uri.
    'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
  });
  res.end(html);
}

/** The request's urlencoded form, at most 64 KiB. */
async function formBody(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 65536) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

/**
 * The login page (prompt `login`) and automatic consent (prompt `consent`): the grant covers
 * what the authorization request asked for, OpenID scopes and claims and the resource's scopes.
 */
async function interaction(provider, accounts, req, res) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (error) {
    send(res, 400, `<!doctype html><title>Sign in</title><p>${escapeHtml(error.error_description ?? error.message)}</p>`);
    return;
  }
  const { uid, prompt, params, session } = details;
  if (prompt.name === 'login') {
    if (req.method !== 'POST') {
      send(res, 200, loginPage(uid, params.login_hint ?? '', null));
      return;
    }
    const form = await formBody(req);
    const accountId = signIn(accounts, form.get('email') ?? '', form.get('password'));
    if (!accountId) {
      send(res, 200, loginPage(uid, form.get('email') ?? '', 'Wrong email or password.'));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  send(res, 400, `<!doctype html><title>Sign in</title><p>unsupported prompt ${escapeHtml(prompt.name)}</p>`);
}

/** The provider's endpoints, with the login page in front. */
function app(config, issuer) {
  const provider = build(config, issuer);
  const accounts = config.accounts ?? {};
  const callback = provider.callback();
  return (req, res) => {
    if (!req.url.startsWith('/interaction/')) return callback(req, res);
    return interaction(provider, accounts, req, res).catch((error) => {
      if (!res.headersSent) send(res, 500, `<!doctype html><title>Sign in</title><p>${escapeHtml(error.message)}</p>`);
      else res.destroy();
    });
  };
}

/** The resource owner password grant: the account's own access token for one resource. */
function passwordGrant(provider, accounts, resourceInfo) {
  return async function handler(ctx) {
    const { client, params } = ctx.oidc;
    const account = accounts[params.username];
    if (!account || account.password !== params.password) {
      throw new errors.InvalidGrant('wrong username or password');
    }
    if (typeof params.resource !== 'string' || !params.resource) {
      throw new errors.InvalidTarget('name exactly one resource');
    }
    const info = resourceInfo(ctx, params.resource);
    const token = new provider.AccessToken({
      accountId: params.username,
      client,
      gty: PASSWORD_GRANT,
      grantId: `password-${params.username}`,
      scope: 'mcp',
    });
    token.resourceServer = new provider.ResourceServer(params.resource, info);
    ctx.oidc.entity('AccessToken', token);
    const value = await token.save();
    ctx.body = {
      access_token: value,
      expires_in: token.expiration,
      token_type: token.tokenType,
      scope: token.scope,
    };
  };
}

/** The claims of a JWT this provider signed with one of `keys`, still valid; else null. */
function verifiedClaims(token, keys, issuer) {
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 3) return null;
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    const jwk = keys.find((k) => k.kid === header.kid);
    if (!jwk || header.alg !== 'RS256') return null;
    const { d, p, q, dp, dq, qi, ...publicJwk } = jwk;
    const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
    if (!verify('RSA-SHA256', signed, createPublicKey({ key: publicJwk, format: 'jwk' }), Buffer.from(parts[2], 'base64url'))) {
      return null;
    }
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
    if (claims.iss !== issuer || !(claims.exp > Date.now() / 1000)) return null;
    return claims;
  } catch {
    return null;
  }
}

/**
 * RFC 8693 token exchange, delegation: a client exchanges its own access token (subject) and a
 * person's (actor) for a token whose `sub` is the client and whose `act` names the person.
 */
function tokenExchangeGrant(provider, verifyToken, resourceInfo) {
  return async function handler(ctx) {
    const { client, params } = ctx.oidc;
    if (params.subject_token_type !== ACCESS_TOKEN_TYPE || params.actor_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest(`subject_token_type and actor_token_type must be ${ACCESS_TOKEN_TYPE}`);
    }
    const subject = verifyToken(params.subject_token);
    const actor = verifyToken(params.actor_token);
    if (!subject || !actor) throw new errors.InvalidGrant('subject_token and actor_token must be valid tokens of this provider');
    if (subject.client_id !== client.clientId || subject.sub !== client.clientId) {
      throw new errors.InvalidGrant('the subject_token must be the client\'s own token');
    }
    if (typeof params.resource !== 'string' || !params.resource) {
      throw new errors.InvalidTarget('name exactly one resource');
    }
    const info = resourceInfo(ctx, params.resource);
    const token = new provider.AccessToken({
      accountId: subject.sub,
      client,
      gty: TOKEN_EXCHANGE,
      grantId: `exchange-${subject.jti}`,
      scope: 'mcp',
    });
    token.resourceServer = new provider.ResourceServer(params.resource, info);
    // Nested act: a token that was itself exchanged keeps its chain of actors.
    actors.set(ctx, actor.act ? { sub: actor.sub, act: actor.act } : { sub: actor.sub });
    ctx.oidc.entity('AccessToken', token);
    const value = await token.save();
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      expires_in: token.expiration,
      token_type: token.tokenType,
      scope: token.scope,
    };
  };
}

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node oidc-provider.mjs CONFIG.json');
  process.exit(2);
}

let config = loadConfig(configPath);
let handler = null;
const server = createServer((req, res) => handler(req, res));
server.listen(config.port ?? 0, '127.0.0.1', () => {
  const issuer = config.issuer ?? `http://127.0.0.1:${server.address().port}`;
  const install = () => {
    handler = app(config, issuer);
  };
  install();
  process.on('SIGHUP', () => {
    try {
      config = loadConfig(configPath);
      install();
      console.log(`reloaded signing keys ${config.signingKeys.join(',')}`);
    } catch (error) {
      // Keep serving with the keys we had; the test sees no "reloaded" line.
      console.error(`reload failed: ${error.message}`);
    }
  });
  console.log(`listening on ${issuer}`);
});

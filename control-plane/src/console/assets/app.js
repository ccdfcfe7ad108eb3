// The Tollgate operator console. Every piece of data is put into the page as text (never as
// HTML), every change is a POST carrying the session's CSRF token, and the server decides:
// hiding a button here grants or refuses nothing.

const main = document.getElementById('main');
const announcer = document.getElementById('announce');
let me = null;
let cleanup = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function announce(text) {
  announcer.textContent = '';
  setTimeout(() => { announcer.textContent = text; }, 50);
}

async function api(path, options = {}) {
  const init = { credentials: 'same-origin', headers: { accept: 'application/json' }, ...options };
  if (options.body !== undefined) {
    init.method = options.method || 'POST';
    init.headers = { ...init.headers, 'content-type': 'application/json', 'x-csrf-token': me ? me.csrf : '' };
    init.body = JSON.stringify(options.body);
  } else if (options.method && options.method !== 'GET') {
    init.headers = { ...init.headers, 'x-csrf-token': me ? me.csrf : '' };
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    location.assign('/auth/login?return=' + encodeURIComponent(location.pathname + location.search));
    throw new Error('signed out');
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function errorBox(error) {
  return el('p', { class: 'alert error', role: 'alert' }, error.message || String(error));
}

function badge(word) {
  return el('span', { class: `badge ${word}` }, word);
}

// Times as the chain records them, in UTC, to the second.
function shortTime(text) {
  return text ? `${text.replace('T', ' ').slice(0, 19)} UTC` : '–';
}

function timeLeft(expiresAt, now = Date.now()) {
  const ms = Date.parse(expiresAt) - now;
  if (!(ms > 0)) return 'expired';
  const s = Math.floor(ms / 1000);
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

function argumentsText(args) {
  return typeof args === 'string' ? args : JSON.stringify(args, null, 2);
}

function requesterCell(a) {
  return [a.requester, a.actingFor && a.actingFor.length ? el('div', { class: 'muted' }, `for ${a.actingFor.join(', ')}`) : null];
}

// ---------- approvals ----------

// Live changes; the server ends the stream (a `problem` event) when the operator's token
// expires or the operator is revoked, and then the page stops reconnecting.
function watchApprovals(onChange, onProblem = () => {}) {
  const source = new EventSource('/api/approvals/events');
  source.addEventListener('approval', (event) => onChange(JSON.parse(event.data)));
  source.addEventListener('problem', (event) => {
    source.close();
    onProblem(JSON.parse(event.data).error);
  });
  cleanup.push(() => source.close());
  return source;
}

async function approvalsPage() {
  main.replaceChildren(el('h1', {}, 'Approvals'));
  const live = el('p', { class: 'live', id: 'live-status' }, 'Connecting…');
  const pendingBody = el('tbody');
  const decidedBody = el('tbody');
  const problem = el('div');
  main.append(live, problem,
    el('h2', { id: 'pending-heading' }, 'Pending'),
    el('table', { 'aria-labelledby': 'pending-heading' },
      el('thead', {}, el('tr', {}, ['Requested', 'Requester', 'Tool', 'Arguments (masked)', 'Rule', 'Time left', ''].map((h) => el('th', { scope: 'col' }, h)))),
      pendingBody),
    el('h2', { id: 'decided-heading' }, 'Recent decisions'),
    el('table', { 'aria-labelledby': 'decided-heading' },
      el('thead', {}, el('tr', {}, ['Requested', 'Requester', 'Tool', 'State', 'Decided by', 'Reason'].map((h) => el('th', { scope: 'col' }, h)))),
      decidedBody));
  const approvals = new Map();
  const render = () => {
    const all = [...approvals.values()].sort((a, b) => b.requestedAt.localeCompare(a.requestedAt));
    const pending = all.filter((a) => a.state === 'pending');
    pendingBody.replaceChildren(...(pending.length ? pending.map((a) => el('tr', { 'data-approval': a.approvalId },
      el('td', {}, shortTime(a.requestedAt)),
      el('td', {}, requesterCell(a)),
      el('td', {}, el('code', {}, a.tool)),
      el('td', {}, el('pre', {}, argumentsText(a.arguments))),
      el('td', {}, a.rule, el('div', { class: 'muted' }, a.reason)),
      el('td', { 'data-expires': a.expiresAt }, timeLeft(a.expiresAt)),
      el('td', {}, el('a', { href: `/approvals/${encodeURIComponent(a.approvalId)}`, 'data-nav': true, 'aria-label': `Review ${a.approvalId}: ${a.tool} for ${a.requester}` }, 'Review'))))
      : [el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'No pending requests. New ones appear here as they are made.'))]));
    const decided = all.filter((a) => a.state !== 'pending').slice(0, 25);
    decidedBody.replaceChildren(...decided.map((a) => el('tr', {},
      el('td', {}, shortTime(a.requestedAt)),
      el('td', {}, requesterCell(a)),
      el('td', {}, el('a', { href: `/approvals/${encodeURIComponent(a.approvalId)}`, 'data-nav': true }, a.tool)),
      el('td', {}, badge(a.state)),
      el('td', {}, (a.approvedBy && a.approvedBy.length ? a.approvedBy.join(', ') : a.decidedBy) || '–'),
      el('td', {}, a.decisionReason || '–'))));
  };
  const source = watchApprovals((a) => {
    const known = approvals.has(a.approvalId);
    approvals.set(a.approvalId, a);
    if (!known && a.state === 'pending') announce(`New approval request from ${a.requester}: ${a.tool}`);
    render();
  }, (error) => {
    live.textContent = `Live updates stopped: ${error}. Reload the page to sign in again.`;
  });
  source.onopen = () => { live.textContent = 'Live: new requests and decisions appear as they happen.'; };
  source.onerror = () => { live.textContent = 'Live updates interrupted; reconnecting…'; };
  try {
    const data = await api('/api/approvals');
    for (const a of data.approvals) if (!approvals.has(a.approvalId)) approvals.set(a.approvalId, a);
    render();
  } catch (error) {
    problem.replaceChildren(errorBox(error));
  }
  const timer = setInterval(() => {
    for (const cell of pendingBody.querySelectorAll('td[data-expires]')) cell.textContent = timeLeft(cell.dataset.expires);
  }, 1000);
  cleanup.push(() => clearInterval(timer));
}

async function approvalPage(id) {
  main.replaceChildren(el('h1', {}, `Approval ${id}`));
  let approval;
  try {
    approval = (await api(`/api/approvals/${encodeURIComponent(id)}`)).approval;
  } catch (error) {
    main.append(errorBox(error), el('p', {}, el('a', { href: '/approvals', 'data-nav': true }, 'All approvals')));
    return;
  }
  const facts = el('dl', { class: 'facts' });
  const status = el('div', { role: 'status' });
  const form = el('form', { class: 'decision-form', 'aria-labelledby': 'decide-heading' });
  const renderFacts = (a) => {
    const rows = [
      ['State', badge(a.state)],
      ['Requester', a.requester],
      ['Acting for', a.actingFor && a.actingFor.length ? a.actingFor.join(', ') : '–'],
      ['Tool', el('code', {}, a.tool)],
      ['Call', `${a.method} on ${a.upstream}`],
      ['Arguments (masked)', el('pre', { id: 'arguments' }, argumentsText(a.arguments))],
      ['Rule', `${a.rule}: ${a.reason}`],
      ['Approver group', `${a.approverGroup} (${a.approversNeeded} approver${a.approversNeeded === 1 ? '' : 's'} needed)`],
      ['Approved by', a.approvedBy && a.approvedBy.length ? a.approvedBy.join(', ') : '–'],
      ['Requested', shortTime(a.requestedAt)],
      ['Time left', el('span', { id: 'time-left', 'data-expires': a.expiresAt }, a.state === 'pending' ? timeLeft(a.expiresAt) : '–')],
      ['Decided', a.decidedBy ? `${a.decidedBy} at ${shortTime(a.decidedAt)}: ${a.decisionReason || ''}` : '–'],
      ['Session', a.session ? el('a', { href: `/sessions/${encodeURIComponent(a.session)}`, 'data-nav': true }, a.session) : '–'],
    ];
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
    form.hidden = a.state !== 'pending';
  };
  const reason = el('textarea', { id: 'reason', name: 'reason', required: true, 'aria-describedby': 'reason-help' });
  const decide = async (approve) => {
    status.replaceChildren();
    if (!reason.value.trim()) {
      status.replaceChildren(el('p', { class: 'alert error', role: 'alert' }, 'Give a reason: it is recorded with your decision.'));
      reason.focus();
      return;
    }
    for (const b of form.querySelectorAll('button')) b.disabled = true;
    try {
      const data = await api(`/api/approvals/${encodeURIComponent(id)}/decision`, { body: { approve, reason: reason.value } });
      approval = data.approval;
      renderFacts(approval);
      status.replaceChildren(el('p', { class: 'alert ok', role: 'alert' }, approve
        ? (approval.state === 'approved' ? 'Approved. The held call can now go through.' : `Approval recorded; ${approval.approversNeeded - approval.approvedBy.length} more needed.`)
        : 'Denied.'));
    } catch (error) {
      status.replaceChildren(el('p', { class: 'alert error', role: 'alert' }, `Refused: ${error.message}`));
    } finally {
      for (const b of form.querySelectorAll('button')) b.disabled = false;
    }
  };
  form.append(
    el('h2', { id: 'decide-heading' }, 'Decide'),
    el('label', { for: 'reason' }, 'Reason (recorded with your decision)'),
    reason,
    el('p', { id: 'reason-help', class: 'muted' }, 'You cannot approve your own request, or one made on your behalf.'),
    el('div', { class: 'buttons' },
      el('button', { type: 'button', onclick: () => decide(true) }, 'Approve'),
      el('button', { type: 'button', class: 'danger', onclick: () => decide(false) }, 'Deny')));
  main.append(facts, form, status, el('p', {}, el('a', { href: '/approvals', 'data-nav': true }, 'All approvals')));
  renderFacts(approval);
  watchApprovals((a) => {
    if (a.approvalId !== id) return;
    approval = a;
    renderFacts(a);
    if (a.state !== 'pending') announce(`Approval ${id} is now ${a.state}`);
  });
  const timer = setInterval(() => {
    const left = document.getElementById('time-left');
    if (left && approval.state === 'pending') left.textContent = timeLeft(left.dataset.expires);
  }, 1000);
  cleanup.push(() => clearInterval(timer));
}

// ---------- sessions ----------

function field(id, label, attrs = {}) {
  return el('div', {}, el('label', { for: id }, label), el('input', { id, name: id, ...attrs }));
}

async function sessionsPage() {
  const params = new URLSearchParams(location.search);
  main.replaceChildren(el('h1', {}, 'Sessions'));
  const decision = el('select', { id: 'decision', name: 'decision' },
    ['', 'allow', 'deny', 'approve', 'approval_pending'].map((d) => el('option', { value: d, selected: params.get('decision') === d }, d || 'any')));
  const form = el('form', { class: 'filters', role: 'search', 'aria-label': 'Search sessions' },
    field('sub', 'Person (sub)', { value: params.get('sub') || '' }),
    field('tool', 'Tool', { value: params.get('tool') || '' }),
    el('div', {}, el('label', { for: 'decision' }, 'Decision'), decision),
    field('from', 'From (time or age, e.g. 2h)', { value: params.get('from') || '' }),
    field('to', 'To', { value: params.get('to') || '' }),
    el('button', { type: 'submit' }, 'Search'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const name of ['sub', 'tool', 'decision', 'from', 'to']) {
      const value = form.elements[name].value.trim();
      if (value) query.set(name, value);
    }
    navigate(`/sessions${query.toString() ? '?' + query : ''}`);
  });
  const results = el('div', { 'aria-live': 'polite' }, el('p', { class: 'muted' }, 'Searching…'));
  main.append(form, results);
  try {
    const data = await api(`/api/sessions?${params}`);
    if (!data.sessions.length) {
      results.replaceChildren(el('p', {}, 'No sessions match.'));
      return;
    }
    results.replaceChildren(el('table', { 'aria-label': 'Sessions' },
      el('thead', {}, el('tr', {}, ['Session', 'First', 'Last', 'People', 'Calls', 'Denied', 'Tools'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, data.sessions.map((s) => el('tr', {},
        el('td', {}, el('a', { href: `/sessions/${encodeURIComponent(s.session)}`, 'data-nav': true }, s.session)),
        el('td', {}, shortTime(s.first)),
        el('td', {}, shortTime(s.last)),
        el('td', {}, [...s.subs, ...s.onBehalfOf].join(', ') || '–'),
        el('td', {}, s.calls),
        el('td', {}, s.denied),
        el('td', {}, s.tools.join(', ')))))));
  } catch (error) {
    results.replaceChildren(errorBox(error));
  }
}

function timelineClass(item) {
  const event = item.event || '';
  if (event.startsWith('approval')) return 'approval';
  return item.decision === 'deny' ? 'deny' : item.decision === 'allow' ? 'allow' : '';
}

async function sessionPage(id) {
  main.replaceChildren(el('h1', {}, 'Session replay'), el('p', {}, el('code', {}, id)));
  try {
    const data = await api(`/api/sessions/${encodeURIComponent(id)}`);
    main.append(
      el('h2', {}, 'Who'),
      el('ul', {}, data.who.map((w) => el('li', {}, w))),
      el('h2', { id: 'timeline-heading' }, `Timeline (${data.items.length} records)`),
      el('ol', { class: 'timeline', 'aria-labelledby': 'timeline-heading' }, data.items.map((item) => el('li', { class: timelineClass(item) },
        el('div', {}, el('strong', {}, shortTime(item.time)), ' ', el('code', {}, item.event || 'record'), ' ',
          item.decision ? badge(item.decision) : null, ' ', el('span', { class: 'muted' }, `#${item.seq}`)),
        el('pre', {}, item.lines.join('\n')),
        el('details', {}, el('summary', {}, `Record #${item.seq} as stored (chain hash ${item.chainHash.slice(0, 16)}…)`),
          el('pre', {}, JSON.stringify(item.record, null, 2)))))));
  } catch (error) {
    main.append(errorBox(error));
  }
  main.append(el('p', {}, el('a', { href: '/sessions', 'data-nav': true }, 'All sessions')));
}

// ---------- evidence ----------

async function evidencePage() {
  main.replaceChildren(el('h1', {}, 'Evidence'));
  const body = el('div', {}, el('p', { class: 'muted' }, 'Loading…'));
  main.append(body);
  let data;
  try {
    data = await api('/api/evidence');
  } catch (error) {
    body.replaceChildren(errorBox(error));
    return;
  }
  const verifyStatus = el('div', { 'aria-live': 'polite' });
  const showVerification = (v) => v
    ? el('div', {}, el('p', { id: 'last-verification' }, badge(v.intact ? 'intact' : 'broken'), ` ${v.records} records checked by ${v.by} at ${shortTime(v.at)}`),
      el('details', {}, el('summary', {}, 'Report'), el('pre', {}, JSON.stringify(v.report, null, 2))))
    : el('p', { class: 'muted' }, 'Not verified from the console since the control plane started.');
  verifyStatus.append(showVerification(data.lastVerification));
  const verifyButton = el('button', { type: 'button', onclick: async () => {
    verifyButton.disabled = true;
    verifyStatus.replaceChildren(el('p', {}, 'Verifying every record, checkpoint and signature…'));
    try {
      const outcome = await api('/api/verify', { method: 'POST' });
      // Verifying signs a fresh checkpoint first: show the head and checkpoints it covered.
      await evidencePage();
      announce(`Verification: ${outcome.intact ? 'intact' : 'broken'}, ${outcome.records} records`);
      return;
    } catch (error) {
      verifyStatus.replaceChildren(errorBox(error));
    } finally {
      verifyButton.disabled = false;
    }
  } }, 'Verify now');
  const latest = data.latestCheckpoint;
  const published = data.published;
  const exportForm = el('form', { class: 'filters', 'aria-label': 'Export a bundle' },
    field('export-from', 'From (time or age)', { name: 'from' }),
    field('export-to', 'To', { name: 'to' }),
    field('export-sub', 'Person (sub)', { name: 'sub' }),
    field('export-session', 'Session', { name: 'session' }),
    el('button', { type: 'submit' }, 'Download bundle'));
  const downloadLink = el('a', { id: 'download', hidden: true, download: true }, 'download');
  exportForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const name of ['from', 'to', 'sub', 'session']) {
      const value = exportForm.elements[name].value.trim();
      if (value) query.set(name, value);
    }
    downloadLink.href = `/api/export?${query}`;
    downloadLink.click();
  });
  body.replaceChildren(
    el('h2', {}, 'Chain head'),
    el('dl', { class: 'facts' },
      el('dt', {}, 'Log'), el('dd', {}, el('code', {}, data.origin)),
      el('dt', {}, 'Records'), el('dd', { id: 'log-size' }, data.size),
      el('dt', {}, 'Archived before'), el('dd', {}, data.archivedBefore ? `record ${data.archivedBefore}` : 'nothing archived'),
      el('dt', {}, 'Log keys'), el('dd', {}, data.verifierKeys.map((k) => el('div', {}, el('code', {}, k)))),
      el('dt', {}, 'Checkpoints'), el('dd', {}, data.checkpoints)),
    el('h2', {}, 'Latest checkpoint'),
    latest ? el('div', {}, el('p', {}, `#${latest.number}, tree size ${latest.size}, signed by ${latest.signers.join(', ')}`), el('pre', { id: 'latest-checkpoint' }, latest.note)) : el('p', {}, 'None yet.'),
    el('h2', {}, 'Published checkpoint and witnesses'),
    published ? el('div', {}, el('p', {}, published.witnesses.length ? `Cosigned by ${published.witnesses.join(', ')}` : 'No witness cosignatures (no witness policy, or the quorum is not reached yet).'), el('pre', {}, published.note)) : el('p', {}, 'No checkpoint published yet.'),
    el('h2', {}, 'Verification'),
    verifyStatus, verifyButton,
    el('h2', {}, 'Export for an assessor'),
    el('p', { class: 'muted' }, 'A bundle holds the records of the range with the proofs that tie them to a signed checkpoint; check it offline with tollgate-verify and the log keys above.'),
    exportForm, downloadLink);
}

// ---------- identities ----------

async function identitiesPage() {
  const params = new URLSearchParams(location.search);
  main.replaceChildren(el('h1', {}, 'Identities'));
  const form = el('form', { class: 'filters', role: 'search', 'aria-label': 'Filter identities' },
    field('inactive', 'Inactive for at least (e.g. 90d)', { value: params.get('inactive') || '' }),
    el('button', { type: 'submit' }, 'Apply'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const value = form.elements.inactive.value.trim();
    navigate(`/identities${value ? '?inactive=' + encodeURIComponent(value) : ''}`);
  });
  const results = el('div', {}, el('p', { class: 'muted' }, 'Loading…'));
  const status = el('div', { 'aria-live': 'polite' });
  main.append(form, status, results);
  let data;
  try {
    data = await api(`/api/identities?${params}`);
  } catch (error) {
    results.replaceChildren(errorBox(error));
    return;
  }
  if (!data.identities.length) {
    results.replaceChildren(el('p', {}, params.get('inactive') ? 'No inactive identities.' : 'Nobody has called the gateway yet.'));
    return;
  }
  const revokeForm = (row, cell) => {
    const reasonId = `revoke-reason-${row.issuer}-${row.sub}`.replace(/[^A-Za-z0-9_-]/g, '_');
    const reason = el('textarea', { id: reasonId, required: true });
    const form = el('form', { class: 'revoke' },
      el('label', { for: reasonId }, `Reason for revoking ${row.sub}`), reason,
      el('button', { type: 'submit', class: 'danger' }, `Confirm revoke ${row.sub}`));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        const done = await api('/api/revocations', { body: { claim: 'sub', value: row.sub, reason: reason.value } });
        status.replaceChildren(el('p', { class: 'alert ok', role: 'alert' }, `Revoked ${row.sub} (${done.revocationId}).`));
        cell.replaceChildren(done.revocationId);
      } catch (error) {
        status.replaceChildren(el('p', { class: 'alert error', role: 'alert' }, `Refused: ${error.message}`));
      }
    });
    cell.replaceChildren(form);
    reason.focus();
  };
  results.replaceChildren(el('table', { 'aria-label': 'Identities' },
    el('thead', {}, el('tr', {}, ['Person', 'Issuer', 'Last seen', 'Days since', 'First seen', 'Calls', 'Clients', 'Acting for', 'Revoked'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, data.identities.map((row) => {
      const cell = el('td');
      if (row.revoked) cell.append(row.revoked);
      else cell.append(el('button', { type: 'button', class: 'secondary', onclick: () => revokeForm(row, cell), 'aria-label': `Revoke ${row.sub}` }, 'Revoke…'));
      return el('tr', {},
        el('td', {}, row.sub), el('td', {}, row.issuer), el('td', {}, shortTime(row.lastSeen)),
        el('td', {}, row.daysSinceLastSeen ?? '–'), el('td', {}, shortTime(row.firstSeen)), el('td', {}, row.calls),
        el('td', {}, row.clients.join(', ') || '–'), el('td', {}, row.actingFor.join(', ') || '–'), cell);
    }))));
}

// ---------- routing ----------

const routes = [
  [/^\/approvals\/?$/, () => approvalsPage(), 'Approvals'],
  [/^\/approvals\/([^/]+)$/, (m) => approvalPage(decodeURIComponent(m[1])), 'Approval'],
  [/^\/sessions\/?$/, () => sessionsPage(), 'Sessions'],
  [/^\/sessions\/([^/]+)$/, (m) => sessionPage(decodeURIComponent(m[1])), 'Session'],
  [/^\/evidence\/?$/, () => evidencePage(), 'Evidence'],
  [/^\/identities\/?$/, () => identitiesPage(), 'Identities'],
];

function render() {
  for (const stop of cleanup) stop();
  cleanup = [];
  const path = location.pathname;
  for (const link of document.querySelectorAll('nav a')) {
    const section = link.getAttribute('href');
    if (path === section || path.startsWith(section + '/')) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  for (const [pattern, show, title] of routes) {
    const match = path.match(pattern);
    if (match) {
      document.title = `${title} · Tollgate`;
      show(match).then(() => {
        const heading = main.querySelector('h1');
        if (heading) { heading.tabIndex = -1; heading.focus(); }
      });
      return;
    }
  }
  main.replaceChildren(el('h1', {}, 'Not found'));
}

function navigate(url) {
  history.pushState(null, '', url);
  render();
}

document.addEventListener('click', (event) => {
  const link = event.target.closest('a[data-nav]');
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(link.getAttribute('href'));
});
window.addEventListener('popstate', render);

async function start() {
  try {
    me = await api('/api/me');
  } catch (error) {
    main.replaceChildren(errorBox(error));
    return;
  }
  const csrf = el('input', { type: 'hidden', name: 'csrf', value: me.csrf });
  document.getElementById('whoami').replaceChildren(
    el('span', { id: 'signed-in-as' }, `${me.sub}`, el('span', { class: 'muted' }, me.groups.length ? ` (${me.groups.join(', ')})` : '')),
    el('form', { method: 'post', action: '/auth/logout' }, csrf, el('button', { type: 'submit' }, 'Sign out')));
  render();
}

start();

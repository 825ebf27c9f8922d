// rlhfkit annotator page. Prompts and responses are untrusted model output: the raw view writes them
// with textContent; the rendered view takes the HTML the server made from their markdown and
// sanitised (render.py) -- showHTML below is the one place that sets HTML.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const $ = (id) => document.getElementById(id);
const letter = (i) => String.fromCharCode(65 + i);
const SKIP_REASONS = ["I can't judge this", "The prompt is broken or unclear", "A response is unreadable"];
const STRENGTH_NAMES = { 2: ["slightly", "much"], 3: ["slightly", "clearly", "much"] };

let project = null;   // {name, mode, strength_scale, guidelines}
let current = null;   // the assignment on screen: {id, prompt, responses}
let state = null;     // what the annotator has chosen for it so far
let busy = false;     // one request at a time: a double key press sends once
let skipChoice = 0;
let raw = false;      // show the text as sent instead of rendered markdown
let together = false; // the response cards scroll together

function newKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + token };
  if (body) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  let data = null;
  try { data = await res.json(); } catch (e) { /* not JSON */ }
  if (!res.ok) throw new Error((data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}

function showHTML(node, html) {  // html: sanitised on the server (markdown-it without raw HTML, then nh3)
  node.innerHTML = html;
}

// a string, or a conversation: a list of {role, content} messages (with {role, html} when rendered)
function renderText(node, value, html) {
  node.replaceChildren();
  node.classList.toggle("raw", raw);
  node.classList.toggle("md", !raw);
  if (typeof value === "string") {
    if (raw) node.textContent = value; else showHTML(node, html);
    return;
  }
  value.forEach((m, i) => {
    const msg = el("div", `msg role-${/^[a-z]+$/.test(m.role) ? m.role : "other"}`);
    const body = el("div", "content");
    if (raw) body.textContent = m.content; else showHTML(body, html[i].html);
    msg.append(el("div", "role", m.role), body);
    node.append(msg);
  });
}

function renderTexts() {
  if (!current) return;
  renderText($("prompt-text"), current.prompt, current.html.prompt);
  document.querySelectorAll(".response .text").forEach((node, i) =>
    renderText(node, current.responses[i], current.html.responses[i]));
  $("btn-raw").classList.toggle("on", raw);
  $("btn-together").classList.toggle("on", together);
}

function toggleRaw() { raw = !raw; renderTexts(); }
function toggleTogether() { together = !together; renderTexts(); }

function scrolled(e) {  // with "scroll together": the other cards follow, at the same share of their length
  if (!together || scrolled.busy) return;
  const src = e.currentTarget, room = src.scrollHeight - src.clientHeight;
  const share = room > 0 ? src.scrollTop / room : 0;
  scrolled.busy = true;
  document.querySelectorAll(".response .text").forEach((other) => {
    if (other !== src) other.scrollTop = share * (other.scrollHeight - other.clientHeight);
  });
  requestAnimationFrame(() => { scrolled.busy = false; });
}

function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 1600);
}

function showError(text) { $("error").textContent = text || ""; }

function setProgress(p) {
  const seen = p.done + p.skipped;
  $("counts").textContent = `${p.done} done · ${p.skipped} skipped · ${p.left} left`;
  $("bar").style.width = `${seen + p.left ? (100 * seen) / (seen + p.left) : 100}%`;
  $("finished-counts").textContent = `You labeled ${p.done} item(s) and skipped ${p.skipped}.`;
}

// ---------------------------------------------------------------- ranking state: groups best first

function rankingOf(groups) { return groups.map((g) => (g.length > 1 ? g.slice().sort((a, b) => a - b) : g[0])); }
function groupsOf(ranking) { return ranking.map((g) => (Array.isArray(g) ? g.slice() : [g])); }
function groupIndex(i) { return state.groups.findIndex((g) => g.includes(i)); }

function move(delta) {  // delta -1: better, +1: worse; a tied response first leaves its tie
  const gs = state.groups, g = groupIndex(state.sel);
  if (gs[g].length > 1) {
    gs[g].splice(gs[g].indexOf(state.sel), 1);
    gs.splice(delta < 0 ? g : g + 1, 0, [state.sel]);
  } else if (gs[g + delta]) {
    [gs[g], gs[g + delta]] = [gs[g + delta], gs[g]];
  }
  state.touched = true;
}

function toggleTie() {  // tie the selected response with the one before it, or untie it
  const gs = state.groups, g = groupIndex(state.sel);
  if (gs[g].length > 1) {
    gs[g].splice(gs[g].indexOf(state.sel), 1);
    gs.splice(g + 1, 0, [state.sel]);
  } else if (g > 0) {
    gs[g - 1].push(state.sel);
    gs.splice(g, 1);
  }
  state.touched = true;
}

function stepSelection(delta) {
  const flat = state.groups.flat();
  const at = flat.indexOf(state.sel) + delta;
  if (at >= 0 && at < flat.length) state.sel = flat[at];
}

// ---------------------------------------------------------------- rendering

function show(assignment, previous) {
  current = assignment;
  $("item").hidden = !assignment;
  $("finished").hidden = !!assignment;
  if (!assignment) return;
  const k = assignment.responses.length, scale = project.strength_scale;
  state = { key: newKey(), choice: null, strength: Math.ceil(scale / 2) || null,
            groups: [...Array(k).keys()].map((i) => [i]), sel: 0, touched: false, confirm: false };
  if (previous && previous.ranking) {  // after an undo: start from what was submitted
    const r = JSON.stringify(previous.ranking);
    state.choice = r === "[0,1]" ? "A" : r === "[1,0]" ? "B" : r === "[[0,1]]" ? "tie" : null;
    state.strength = previous.strength || state.strength;
    state.groups = groupsOf(previous.ranking);
    state.touched = true;
  }
  const columns = $("responses");
  columns.replaceChildren();
  assignment.responses.forEach((response, i) => {
    const card = el("div", "card response");
    card.dataset.index = i;
    const text = el("div", "text");
    text.addEventListener("scroll", scrolled);
    card.append(el("div", "label", `Response ${letter(i)}`), el("span", "rank"), text);
    card.addEventListener("click", (e) => {  // touch: tap a card to select it for ranking
      if (project.mode !== "ranking" || e.target.closest("a")) return;
      state.sel = i; state.confirm = false; render();
    });
    columns.append(card);
  });
  renderTexts();
  render();
  window.scrollTo(0, 0);
}

function button(text, key, on, action) {
  const b = el("button", on ? "on" : "");
  if (key) b.append(el("kbd", "", key), " ");
  b.append(text);
  b.addEventListener("click", () => { b.blur(); action(); });
  return b;
}

function render() {
  const controls = $("controls"), pairwise = project.mode === "pairwise";
  controls.replaceChildren();
  const cards = [...document.querySelectorAll(".response")];
  if (pairwise) {
    cards.forEach((c, i) => {
      c.classList.toggle("picked", state.choice === letter(i));
      c.classList.toggle("tied", state.choice === "tie");
      c.querySelector(".rank").textContent = state.choice === letter(i) ? "better" : "";
    });
    const choices = el("div", "choices");
    choices.append(
      button("A is better", "1", state.choice === "A", () => pick("A")),
      button("Tie", "t", state.choice === "tie", () => pick("tie")),
      button("B is better", "2", state.choice === "B", () => pick("B")));
    controls.append(choices);
    const scale = project.strength_scale;
    if (scale && state.choice !== "tie") {
      const row = el("div", "scale");
      row.append(el("span", "hint", "by"));
      for (let s = 1; s <= scale; s++) {
        const name = (STRENGTH_NAMES[scale] || [])[s - 1] || String(s);
        row.append(button(name, "", state.strength === s, () => { state.strength = s; render(); }));
      }
      row.append(el("span", "hint", "↑ ↓"));
      controls.append(row);
    }
  } else {
    const position = {};
    let start = 1;
    for (const g of state.groups) { for (const i of g) position[i] = g.length > 1 ? `#${start}=` : `#${start}`; start += g.length; }
    cards.forEach((c, i) => {
      c.querySelector(".rank").textContent = position[i];
      c.classList.toggle("picked", i === state.sel);
    });
    const row = el("div", "ranking");
    row.append(el("span", "hint", "best"));
    state.groups.forEach((g, gi) => {
      if (gi) row.append(el("span", "sep", ">"));
      g.forEach((i, j) => {
        if (j) row.append(el("span", "sep", "="));
        const chip = el("span", i === state.sel ? "chip sel" : "chip", letter(i));
        row.append(chip);
      });
    });
    row.append(el("span", "hint", "worst"));
    const moves = el("div", "choices");  // the same moves for touch: tap a card, then these
    moves.append(
      button("Better", "↑", false, () => { move(-1); state.confirm = false; render(); }),
      button("Worse", "↓", false, () => { move(1); state.confirm = false; render(); }),
      button("Tie / untie", "=", false, () => { toggleTie(); state.confirm = false; render(); }));
    controls.append(row, moves, el("span", "keys", `1–${state.groups.flat().length} or tap a card to select`));
  }
  const submit = el("button", "primary");
  submit.append(el("kbd", "", "Enter"), " Submit");
  submit.addEventListener("click", () => { submit.blur(); send(); });
  controls.append(submit);
  if (state.confirm) controls.append(el("span", "hint", "Ranking unchanged: press Enter again to submit it as shown."));
}

function pick(choice) { state.choice = choice; render(); }

function keysHelp() {
  const lines = project.mode === "pairwise"
    ? ["1 · A is better", "2 · B is better", "t · tie"].concat(project.strength_scale ? ["↑ / ↓ · stronger / weaker"] : [])
    : ["1–9 · select a response", "← / → · select the previous / next in the ranking",
       "↑ / ↓ (or [ / ]) · move the selected response up (better) / down (worse)",
       "= · tie it with the one before it (again: untie)"];
  return lines.concat(["Enter · submit", "u · undo your last submission", "s · skip with a reason",
    "r · raw text / rendered markdown", "g or ? · guidelines"]);
}

// ---------------------------------------------------------------- actions

async function loadNext(previous) {
  const r = await api("GET", "/api/next");
  setProgress(r.progress);
  show(r.assignment, previous && r.assignment && r.assignment.id === previous.assignment_id ? previous : null);
}

async function run(action) {  // one request at a time; errors go to the banner
  if (busy) return;
  busy = true;
  try { showError(""); await action(); } catch (err) { showError(err.message); } finally { busy = false; }
}

function send() {
  if (!current) return;
  let body;
  if (project.mode === "pairwise") {
    if (!state.choice) { toast("Pick 1 (A), 2 (B) or t (tie) first"); return; }
    body = { idempotency_key: state.key, choice: state.choice };
    if (project.strength_scale && state.choice !== "tie") body.strength = state.strength;
  } else {
    if (!state.touched && !state.confirm) { state.confirm = true; render(); return; }
    body = { idempotency_key: state.key, ranking: rankingOf(state.groups) };
  }
  run(async () => {  // a retry after an error reuses state.key, so it counts once
    const r = await api("POST", `/api/assignments/${current.id}/label`, body);
    toast(r.duplicate ? "Already saved" : "Saved");
    await loadNext();
  });
}

function undo() {
  run(async () => {
    const r = await api("POST", "/api/undo", { idempotency_key: newKey() });
    toast("Took back your last submission");
    await loadNext(r.undone);
  });
}

function openSkip() {
  skipChoice = 0;
  state.skipKey = newKey();
  $("skip-other").value = "";
  renderSkip();
  $("skip").hidden = false;
}

function renderSkip() {
  const list = $("skip-reasons");
  list.replaceChildren();
  SKIP_REASONS.forEach((reason, i) => list.append(
    button(reason, String(i + 1), skipChoice === i + 1, () => { skipChoice = i + 1; renderSkip(); })));
}

function sendSkip() {
  const reason = skipChoice ? SKIP_REASONS[skipChoice - 1] : $("skip-other").value.trim();
  if (!reason) { toast("Choose a reason (1–4)"); return; }
  $("skip").hidden = true;
  const key = state.skipKey;
  run(async () => {
    await api("POST", `/api/assignments/${current.id}/skip`, { idempotency_key: key, reason });
    toast("Skipped");
    await loadNext();
  });
}

function toggleGuide(open) { $("guide").hidden = !open; }

// ---------------------------------------------------------------- keys

function onSkipKey(e) {
  const typing = e.target === $("skip-other");
  if (e.key === "Escape") { $("skip").hidden = true; $("skip-other").blur(); }
  else if (e.key === "Enter") sendSkip();
  else if (!typing && ["1", "2", "3"].includes(e.key)) { skipChoice = Number(e.key); renderSkip(); }
  else if (!typing && e.key === "4") { skipChoice = 0; renderSkip(); $("skip-other").focus(); }
  else return;
  e.preventDefault();
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (!$("skip").hidden) return onSkipKey(e);
  const k = e.key;
  if (!$("guide").hidden) {
    if (k === "Escape" || k === "g" || k === "?") { toggleGuide(false); e.preventDefault(); }
    return;
  }
  if (k === "g" || k === "?") toggleGuide(true);
  else if (k === "u") undo();
  else if (k === "r") toggleRaw();
  else if (!current || busy) return;
  else if (k === "Enter") send();
  else if (k === "s") openSkip();
  else if (project.mode === "pairwise") {
    const scale = project.strength_scale;
    if (k === "1") pick("A");
    else if (k === "2") pick("B");
    else if (k === "t") pick("tie");
    else if (scale && (k === "ArrowUp" || k === "+")) { state.strength = Math.min(scale, state.strength + 1); render(); }
    else if (scale && (k === "ArrowDown" || k === "-")) { state.strength = Math.max(1, state.strength - 1); render(); }
    else return;
  } else {
    const n = current.responses.length;
    if (/^[1-9]$/.test(k) && Number(k) <= n) state.sel = Number(k) - 1;
    else if (k === "ArrowLeft" || k === "h") stepSelection(-1);
    else if (k === "ArrowRight" || k === "l") stepSelection(1);
    else if (k === "ArrowUp" || k === "[" || k === "k") move(-1);
    else if (k === "ArrowDown" || k === "]" || k === "j") move(1);
    else if (k === "=") toggleTie();
    else return;
    state.confirm = false;
    render();
  }
  e.preventDefault();
}

// ---------------------------------------------------------------- start

async function start() {
  if (!token) { showError("This page needs your personal link: …/label#token=…"); return; }
  const me = await api("GET", "/api/me");
  project = me.project;
  $("project").textContent = project.name;
  $("who").textContent = `${me.annotator} · ${project.mode === "pairwise" ? "which response is better?" : "rank the responses"}`;
  if (project.guidelines) { $("guide-text").classList.add("md"); showHTML($("guide-text"), project.guidelines_html); }
  else $("guide-text").textContent = "No guidelines were given for this project.";
  $("keys-help").replaceChildren(...keysHelp().map((line) => el("div", "", line)));
  $("btn-guide").addEventListener("click", (e) => { e.currentTarget.blur(); toggleGuide(true); });
  $("btn-undo").addEventListener("click", (e) => { e.currentTarget.blur(); undo(); });
  $("btn-skip").addEventListener("click", (e) => { e.currentTarget.blur(); if (current) openSkip(); });
  $("btn-raw").addEventListener("click", (e) => { e.currentTarget.blur(); toggleRaw(); });
  $("btn-together").addEventListener("click", (e) => { e.currentTarget.blur(); toggleTogether(); });
  $("guide-close").addEventListener("click", () => toggleGuide(false));
  $("skip-send").addEventListener("click", sendSkip);
  $("skip-cancel").addEventListener("click", () => { $("skip").hidden = true; });
  document.addEventListener("keydown", onKey);
  await loadNext();
}

window.addEventListener("hashchange", () => location.reload());  // another token: start over
start().catch((err) => showError(err.message));

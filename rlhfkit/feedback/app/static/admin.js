// rlhfkit admin page: projects, annotators and their links, progress, agreement, export.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const $ = (id) => document.getElementById(id);
let selected = null;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function row(cells) {
  const tr = el("tr");
  for (const c of cells) { const td = el("td"); td.append(c instanceof Node ? c : String(c ?? "—")); tr.append(td); }
  return tr;
}

async function api(method, path, body, raw) {
  const headers = { Authorization: "Bearer " + token };
  if (body) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try { message = (await res.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return raw ? res.text() : res.json();
}

const fmt = (x) => (x === null || x === undefined ? "—" : typeof x === "number" ? x.toFixed(3) : x);
const fmt1 = (x) => (x === null || x === undefined ? "—" : x.toFixed(1));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "—");

async function loadProjects() {
  const { projects } = await api("GET", "/api/admin/projects");
  $("projects").replaceChildren(...projects.map((p) => {
    const tr = row([p.id, p.name, p.mode, p.items, p.gold_items, p.overlap]);
    if (p.id === selected) tr.className = "sel";
    tr.addEventListener("click", () => { selected = p.id; refresh(); });
    return tr;
  }));
  if (selected === null && projects.length) { selected = projects[0].id; await loadDetail(); }
}

async function loadDetail() {
  if (selected === null) return;
  const { project, annotators, stats } = await api("GET", `/api/admin/projects/${selected}`);
  $("detail").hidden = false;
  $("detail-title").textContent = `${project.name} · ${project.mode} · overlap ${project.overlap}`;
  const figures = [["labels", stats.labels], ["items labeled", `${stats.items_labeled} / ${project.items}`],
    ["Krippendorff α (ordinal)", fmt(stats.alpha_ordinal)], ["α (nominal)", fmt(stats.alpha_nominal)],
    ["gold accuracy", fmt(stats.gold_accuracy)], ["labels per hour", fmt1(stats.budget.labels_per_hour)],
    ["median s per item", fmt1(stats.budget.median_seconds)]];
  $("figures").replaceChildren(...figures.map(([name, value]) => {
    const box = el("div");
    box.append(el("div", "figure", value), el("div", "hint", name));
    return box;
  }));
  const links = Object.fromEntries(annotators.map((a) => [a.name, location.origin + a.link]));
  $("annotators").replaceChildren(...stats.annotators.map((a) => row([a.name, a.done, a.skipped, a.pending,
    `${fmt(a.consensus_agreement)} (${a.consensus_units})`, `${fmt(a.gold_accuracy)} (${a.gold_units})`,
    when(a.last_active), el("span", "mono", links[a.name])])));
  $("budget").replaceChildren(...stats.annotators.map((a) => row([a.name, a.timed_labels, fmt(a.hours),
    fmt1(a.labels_per_hour), fmt1(a.median_seconds)])));
  $("daily").replaceChildren(...stats.annotators.flatMap((a) => a.daily.map((d) => row([a.name, d.day,
    `${fmt(d.consensus_agreement)} (${d.consensus_units})`, `${fmt(d.gold_accuracy)} (${d.gold_units})`]))));
  $("kappa").replaceChildren(...stats.kappa.map((k) => row([k.annotators.join(" · "), k.units, fmt(k.kappa)])));
}

async function refresh() {
  try { $("error").textContent = ""; await loadProjects(); await loadDetail(); }
  catch (err) { $("error").textContent = err.message; }
}

const readFile = (file) => (file ? file.text() : Promise.resolve(null));

$("new-project").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target.elements;
  try {
    const candidates = await readFile(f.candidates.files[0]);
    const body = { name: f.name.value, mode: f.mode.value, overlap: Number(f.overlap.value),
                   strength_scale: Number(f.strength_scale.value), guidelines: f.guidelines.value };
    if (candidates !== null) Object.assign(body, { candidates_jsonl: candidates, filename: f.candidates.files[0].name });
    else Object.assign(body, { policy_dir: f.policy_dir.value, k: Number(f.k.value),
                               prompts_jsonl: await readFile(f.prompts.files[0]),
                               filename: f.prompts.files[0] ? f.prompts.files[0].name : "prompts.jsonl" });
    const project = await api("POST", "/api/admin/projects", body);
    selected = project.id;
    e.target.reset();
    await refresh();
  } catch (err) { $("error").textContent = err.message; }
});

$("add-annotator").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await api("POST", `/api/admin/projects/${selected}/annotators`, { name: e.target.elements.name.value });
    e.target.reset();
    await loadDetail();
  } catch (err) { $("error").textContent = err.message; }
});

async function download(format) {
  try {
    const text = await api("GET", `/api/admin/projects/${selected}/export?format=${format}`, null, true);
    const a = el("a");
    a.href = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
    a.download = `project-${selected}.${format}.jsonl`;
    a.click();
    URL.revokeObjectURL(a.href);
  } catch (err) { $("error").textContent = err.message; }
}

$("export-pairwise").addEventListener("click", () => download("pairwise"));
$("export-ranking").addEventListener("click", () => download("ranking"));
$("refresh").addEventListener("click", refresh);

window.addEventListener("hashchange", () => location.reload());  // another token: start over
if (!token) $("error").textContent = "This page needs the admin link: …/admin#token=…";
else { refresh(); setInterval(refresh, 15000); }

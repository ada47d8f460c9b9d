// affectstream dashboard: protocol v1 over one websocket; reconnects with backoff and resumes.
"use strict";

const COLORS = ["#ff5b5b", "#ffd24f", "#7ed957", "#b98cff", "#4fa3ff", "#ff9f43", "#9aa4b2"];  // the 7th: neutral
const SENTIMENT_COLOR = "#e6e9ee";
const TIMELINE_MS = 60000;  // the longest span shown; a younger stream fills the width
const MIN_TIMELINE_MS = 10000;
const MAX_POINTS = 2000;
const MAX_EVENTS = 100;

const state = {
  labels: ["anger", "happiness", "disgust", "fear", "sadness", "surprise"],
  lastSeq: {},      // stream -> highest seq received: what a reconnect resumes after
  cards: {},        // stream -> card state
  socket: null,
  attempts: 0,
  dirty: new Set(),
};

function socketUrl() {
  const params = new URLSearchParams(location.search);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = new URLSearchParams();
  const token = params.get("token");
  if (token) query.set("token", token);
  // A reconnection resumes in the URL, so that the server replays what was missed before it sends
  // anything live: a `resume` message sent after opening could cross live events already on the wire.
  if (Object.keys(state.lastSeq).length) query.set("resume", JSON.stringify(state.lastSeq));
  const search = query.toString();
  return `${scheme}://${location.host}/ws` + (search ? `?${search}` : "");
}

function setConnection(text, kind) {
  const el = document.getElementById("connection");
  el.textContent = text;
  el.dataset.state = kind;
}

function connect() {
  const socket = new WebSocket(socketUrl());
  state.socket = socket;
  setConnection("connecting…", "connecting");
  socket.onopen = () => {
    state.attempts = 0;
    setConnection("live", "open");
  };
  socket.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch (error) { return; }
    handle(message);
  };
  socket.onclose = () => {
    state.socket = null;
    const streams = Object.values(state.cards);
    if (streams.length && streams.every((entry) => entry.node.dataset.ended)) {
      // Every stream ended and then the server left: the run is over, not broken. Nothing to retry.
      setConnection("finished", "finished");
      return;
    }
    // Exponential backoff with jitter, capped at 10 s, so that a restarting server is not stampeded.
    const delay = Math.min(10000, 500 * 2 ** state.attempts) * (0.5 + Math.random() / 2);
    state.attempts += 1;
    setConnection(`reconnecting in ${(delay / 1000).toFixed(1)} s`, "closed");
    setTimeout(connect, delay);
  };
}

function handle(message) {
  if (typeof message.stream === "string" && Number.isInteger(message.seq)) {
    const last = state.lastSeq[message.stream];
    state.lastSeq[message.stream] = last === undefined ? message.seq : Math.max(last, message.seq);
  }
  switch (message.type) {
    case "hello": onHello(message); break;
    case "estimate": onEstimate(message); break;
    case "summary": onSummary(message); break;
    case "event": onEvent(message); break;
    case "stats": onStats(message); break;
    case "lagged": onLagged(message); break;
    case "server_status": onServerStatus(message); break;
    default: break;  // unknown types and fields are ignored (protocol v1)
  }
}

function onHello(message) {
  if (Array.isArray(message.labels) && message.labels.length) state.labels = message.labels;
  const model = message.model || {};
  document.getElementById("model").textContent = [model.backbone, model.head].filter(Boolean).join(" · ");
  (message.streams || []).forEach(card);
  // On the first connection, show the events and summaries the server's log still keeps (live ones
  // sent meanwhile come again: onEvent shows each seq once); a reconnection resumed in its URL.
  const fresh = (message.streams || []).filter((stream) => state.lastSeq[stream] === undefined);
  if (fresh.length && state.socket) {
    const after = {};
    fresh.forEach((stream) => { after[stream] = -1; });
    state.socket.send(JSON.stringify({ type: "resume", streams: after }));
  }
}

function onLagged(message) {
  // We fell behind: ask for exactly what was missed, from the server's event log.
  const after = {};
  for (const [stream, info] of Object.entries(message.streams || {})) after[stream] = info.resume_after;
  if (state.socket) state.socket.send(JSON.stringify({ type: "resume", streams: after }));
}

function onServerStatus(message) {
  // The event log cannot write (a full disk): live data goes on, but a later replay may miss some.
  const node = document.getElementById("eventlog");
  node.hidden = message.event_log === "ok" && !message.lost;  // losses stay shown: they are not replayable
  node.textContent = `event log ${message.event_log}: ${message.backlog} waiting, ${message.lost} lost`;
  node.title = message.detail || "";
}

function card(stream) {
  if (state.cards[stream]) return state.cards[stream];
  document.getElementById("empty")?.remove();
  const node = document.getElementById("stream-card").content.firstElementChild.cloneNode(true);
  node.dataset.stream = stream;
  node.querySelector(".name").textContent = stream;
  const bars = node.querySelector(".bars");
  const legend = node.querySelector(".legend");
  const fills = {};
  const values = {};
  const series = [...state.labels, "sentiment"];
  series.forEach((label, index) => {
    const color = label === "sentiment" ? SENTIMENT_COLOR : COLORS[index % COLORS.length];
    const row = document.createElement("div");
    row.className = "bar" + (label === "sentiment" ? " sentiment" : "");
    row.dataset.label = label;
    row.innerHTML = `<span class="label"></span><span class="track"><span class="fill"></span></span><span class="value">–</span>`;
    row.querySelector(".label").textContent = label;
    row.style.setProperty("--color", color);
    bars.appendChild(row);
    fills[label] = row.querySelector(".fill");
    values[label] = row.querySelector(".value");
    const key = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = color;  // CSSOM, not an inline style attribute: allowed by the page's CSP
    key.append(swatch, label);
    legend.appendChild(key);
  });
  document.getElementById("streams").appendChild(node);
  const entry = { node, fills, values, series, points: [], canvas: node.querySelector(".timeline") };
  state.cards[stream] = entry;
  return entry;
}

function onEstimate(message) {
  const entry = card(message.stream);
  const scores = message.scores || {};
  showState(entry, message);
  showFaces(entry, message.faces);
  for (const label of state.labels) {
    const value = Number(scores[label] ?? 0);
    entry.fills[label].style.width = `${(Math.max(0, Math.min(1, value)) * 100).toFixed(1)}%`;
    entry.values[label].textContent = value.toFixed(2);
  }
  const sentiment = Number(message.sentiment ?? 0);
  const fill = entry.fills.sentiment;
  const width = Math.min(1, Math.abs(sentiment)) * 50;
  fill.style.width = `${width.toFixed(1)}%`;
  fill.style.left = sentiment < 0 ? `${50 - width}%` : "50%";
  entry.values.sentiment.textContent = sentiment.toFixed(2);
  entry.points.push({ wall: message.wall, scores, sentiment });
  if (entry.points.length > MAX_POINTS) entry.points.splice(0, entry.points.length - MAX_POINTS);
  entry.canvas.dataset.points = String(entry.points.length);
  entry.canvas.dataset.lastWall = String(message.wall);
  state.dirty.add(message.stream);
}

function showState(entry, message) {
  // With the face stage every estimate says whether it can be trusted; without it, no badge.
  const badge = entry.node.querySelector(".state");
  if (entry.node.dataset.ended) return;  // an estimate delivered after the end must not hide it
  if (typeof message.state !== "string") { badge.hidden = true; return; }
  badge.hidden = false;
  badge.dataset.state = message.state;
  badge.textContent = message.state === "no_face" ? "no face" : message.state;
}

function showFaces(entry, faces) {
  // One row per tracked face: its id, state, dominant label, a small bar per label, its box.
  const table = entry.node.querySelector(".faces");
  if (!Array.isArray(faces)) { table.hidden = true; return; }
  table.hidden = false;
  const body = table.querySelector("tbody");
  const rows = faces.map((face) => {
    const row = document.createElement("tr");
    row.dataset.face = String(face.id);
    const cells = [`#${face.id}`, face.state ?? "", face.dominant ?? "", "", ""];
    cells.forEach((text) => { const cell = document.createElement("td"); cell.textContent = text; row.appendChild(cell); });
    const mini = document.createElement("span");
    mini.className = "mini";
    state.labels.forEach((label, index) => {
      const bar = document.createElement("i");
      const value = Math.max(0, Math.min(1, Number((face.scores || {})[label] ?? 0)));
      bar.style.height = `${Math.max(1, Math.round(value * 14))}px`;
      bar.style.setProperty("--color", COLORS[index % COLORS.length]);
      bar.title = `${label} ${value.toFixed(2)}`;
      mini.appendChild(bar);
    });
    row.children[3].appendChild(mini);
    row.children[4].textContent = (face.box || []).map((v) => Math.round(v)).join(", ");
    return row;
  });
  body.replaceChildren(...rows);
  if (!rows.length) {
    const row = document.createElement("tr");
    const cell = document.createElement("td");
    cell.colSpan = 5;
    cell.className = "muted";
    cell.textContent = "nobody in view";
    row.appendChild(cell);
    body.appendChild(row);
  }
}

function onSummary(message) {
  const entry = card(message.stream);
  const seq = Number.isInteger(message.seq) ? message.seq : -1;
  if (seq < (entry.summarySeq ?? -1)) return;  // a replayed summary older than the one shown
  entry.summarySeq = seq;
  const dominant = message.dominant ?? message.dominant_label;
  if (dominant) entry.node.querySelector(".dominant").textContent = `mostly ${dominant}`;
}

function onEvent(message) {
  const entry = card(message.stream);
  if (message.kind === "stream_ended" || message.kind === "stream_error") {
    entry.node.dataset.ended = message.kind === "stream_error" ? "error" : (message.outcome || "ended");
    const badge = entry.node.querySelector(".state");
    badge.hidden = false;
    badge.dataset.state = "ended";
    badge.textContent = message.kind === "stream_error" ? "failed" : `ended (${message.outcome || "ended"})`;
  }
  const list = entry.node.querySelector(".events");
  const seq = Number.isInteger(message.seq) ? message.seq : -1;
  if (seq >= 0 && list.querySelector(`li[data-seq="${seq}"]`)) return;  // already shown
  const item = document.createElement("li");
  item.dataset.kind = message.kind;
  item.dataset.seq = String(seq);
  const kind = document.createElement("span");
  kind.className = "kind";
  kind.textContent = message.kind;
  const when = Number(message.ts ?? 0).toFixed(1).padStart(7, " ");
  const value = typeof message.value === "number" ? ` ${message.value.toFixed(2)}` : "";
  const face = Number.isInteger(message.face) ? ` face #${message.face}` : "";
  item.append(`${when}s `, kind, ` ${message.label ?? ""}${value}${face}`);
  // Newest first, by seq: a replayed older event goes below the live ones that overtook it.
  const below = [...list.children].find((other) => Number(other.dataset.seq) < seq);
  list.insertBefore(item, below ?? null);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

function onStats(message) {
  const entry = card(message.stream);
  const latency = message.latency_ms || {};
  const parts = [
    `input ${Number(message.input_fps ?? 0).toFixed(1)} fps`,
    `sampled ${Number(message.sampled_fps ?? 0).toFixed(1)} fps`,
    `drops ${message.drops ?? 0}`,
    `latency p50 ${latency.p50 ?? "–"} ms, p99 ${latency.p99 ?? "–"} ms`,
  ];
  entry.node.querySelector(".stats").textContent = parts.join(" · ");
}

function draw(entry) {
  const canvas = entry.canvas;
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  context.strokeStyle = "#2a313b";
  context.beginPath();
  context.moveTo(0, height / 2);
  context.lineTo(width, height / 2);
  context.stroke();
  if (!entry.points.length) return;
  const end = entry.points[entry.points.length - 1].wall;
  const span = Math.max(MIN_TIMELINE_MS, Math.min(TIMELINE_MS, end - entry.points[0].wall));
  const x = (wall) => width - ((end - wall) / span) * width;
  const visible = entry.points.filter((point) => end - point.wall <= span);
  entry.series.forEach((label, index) => {
    const isSentiment = label === "sentiment";
    context.strokeStyle = isSentiment ? SENTIMENT_COLOR : COLORS[index % COLORS.length];
    context.setLineDash(isSentiment ? [4, 3] : []);
    context.beginPath();
    visible.forEach((point, i) => {
      const value = isSentiment ? (point.sentiment + 1) / 2 : Number(point.scores[label] ?? 0);
      const y = height - 4 - value * (height - 8);
      if (i === 0) context.moveTo(x(point.wall), y); else context.lineTo(x(point.wall), y);
    });
    context.stroke();
  });
  context.setLineDash([]);
}

function frame() {
  for (const stream of state.dirty) draw(state.cards[stream]);
  state.dirty.clear();
  requestAnimationFrame(frame);
}

connect();
requestAnimationFrame(frame);

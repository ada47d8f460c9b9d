// affectstream dashboard: protocol v1 over one websocket (docs/protocol.md); reconnects with backoff and
// resumes; per stream a card with its video and overlays (video.js), bars, faces, timeline and events.
"use strict";

import { drawTimeline } from "./chart.js";
import { DEFAULT_LABELS, colorOf, fps, mediaTime, millis, percent, signed, socketUrl, withToken } from "./common.js";
import { EstimateBuffer, bindToggles, loadToggles } from "./overlay.js";
import { VideoPanel } from "./video.js";
import { bindControl, onSinks, onStreamControl, stopButton } from "./control.js";

const MAX_POINTS = 4000;
const MAX_EVENTS = 100;

const state = {
  labels: DEFAULT_LABELS,
  lastSeq: {},      // stream -> highest seq received: what a reconnect resumes after
  cards: {},        // stream -> card state
  socket: null,
  attempts: 0,
  dirty: new Set(),
  toggles: loadToggles(),
};
window.affectstream = state;  // for people poking at the page from the console, and for tests

function setConnection(text, kind) {
  const el = document.getElementById("connection");
  el.textContent = text;
  el.dataset.state = kind;
}

function connect() {
  // A reconnection resumes in the URL, so that the server replays what was missed before it sends
  // anything live: a `resume` message sent after opening could cross live events already on the wire.
  const query = Object.keys(state.lastSeq).length ? { resume: JSON.stringify(state.lastSeq) } : {};
  const socket = new WebSocket(socketUrl(query));
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
    case "stream_control": onStreamControl(message); break;
    default: break;  // unknown types and fields are ignored (protocol v1)
  }
}

function onHello(message) {
  if (Array.isArray(message.labels) && message.labels.length) state.labels = message.labels;
  const model = message.model || {};
  document.getElementById("model").textContent = [model.backbone, model.head].filter(Boolean).join(" · ");
  // On the first connection, ask for everything the server's log still keeps of each stream (-1): the
  // events, summaries and recent estimates, so that a late viewer sees an ended stream's timeline too.
  // Live messages sent meanwhile come again in the replay: each seq is shown once. A reconnection
  // resumed in its URL.
  const fresh = (message.streams || []).filter((stream) => state.lastSeq[stream] === undefined);
  for (const stream of message.streams || []) {
    const known = state.cards[stream];
    // Back after the server was away: a video that failed meanwhile is tried again (WebRTC first).
    if (known && known.root?.dataset.state === "failed" && !known.node.dataset.ended && state.toggles.video) known.panel.start();
    card(stream);
  }
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
  onSinks(message.sinks);
}

function card(stream) {
  if (state.cards[stream]) return state.cards[stream];
  document.getElementById("empty")?.remove();
  const node = document.getElementById("stream-card").content.firstElementChild.cloneNode(true);
  node.dataset.stream = stream;
  node.querySelector(".name").textContent = stream;
  node.querySelector(".actions").appendChild(stopButton(stream));
  const bars = node.querySelector(".bars");
  const legend = node.querySelector(".legend");
  const fills = {};
  const values = {};
  const labels = state.labels;
  const series = [...labels, "sentiment"];
  series.forEach((label) => {
    const color = colorOf(label, labels);
    const row = document.createElement("div");
    row.className = "bar" + (label === "sentiment" ? " sentiment" : "");
    row.dataset.label = label;
    row.innerHTML = `<span class="label"></span><span class="track"><span class="fill"></span></span><span class="value">–</span>`;
    row.querySelector(".label").textContent = label;
    row.style.setProperty("--color", color);  // CSSOM, not an inline style attribute: allowed by the CSP
    bars.appendChild(row);
    fills[label] = row.querySelector(".fill");
    values[label] = row.querySelector(".value");
    const key = document.createElement("span");
    key.dataset.label = label;
    const swatch = document.createElement("i");
    if (label === "sentiment") swatch.className = "dashed";
    swatch.style.setProperty("--color", color);
    key.append(swatch, label === "sentiment" ? "sentiment (−1…+1, right axis)" : label);
    legend.appendChild(key);
  });
  document.getElementById("streams").appendChild(node);
  const estimates = new EstimateBuffer();
  const entry = {
    node, fills, values, series, labels, estimates, points: [], pointSeqs: new Set(), shownSeq: -Infinity,
    lifeSeq: -Infinity, canvas: node.querySelector(".timeline"), root: node.querySelector(".video"),
  };
  entry.panel = new VideoPanel(node.querySelector(".video"), stream, estimates,
                               () => ({ toggles: state.toggles, labels: entry.labels }));
  showVideo(entry);
  state.cards[stream] = entry;
  return entry;
}

function showVideo(entry) {
  const media = entry.node.querySelector(".media");
  media.hidden = !state.toggles.video;
  entry.node.classList.toggle("no-video", !state.toggles.video || entry.node.querySelector(".video").hidden);
  if (state.toggles.video) entry.panel.start();
  else entry.panel.stop("video off");
}

function onEstimate(message) {
  const entry = card(message.stream);
  const seq = Number.isInteger(message.seq) ? message.seq : null;
  if (seq !== null && entry.pointSeqs.has(seq)) return;  // a replayed estimate already shown
  ownLabels(entry, message.scores);
  addPoint(entry, { seq: seq ?? Infinity, ts: Number(message.ts ?? 0), scores: message.scores || {},
                    sentiment: Number(message.sentiment ?? 0) });
  entry.estimates.add(message);
  state.dirty.add(message.stream);
  if (seq !== null && seq < entry.shownSeq) return;  // older than what the bars show: timeline only
  entry.shownSeq = seq ?? entry.shownSeq;
  showScores(entry, message);
  entry.panel.onEstimate();
}

function ownLabels(entry, scores) {
  // A stream may score fewer labels than hello lists (faces off in a run with faces: no neutral): its
  // card keeps the labels its estimates carry, and hides the others' bars, legend keys and lines.
  const keys = Object.keys(scores || {});
  if (!keys.length || keys.length === entry.labels.length) return;
  entry.labels = state.labels.filter((label) => keys.includes(label));
  entry.series = [...entry.labels, "sentiment"];
  entry.node.querySelectorAll(".bar, .legend > span").forEach((node) => { node.hidden = !entry.series.includes(node.dataset.label); });
}

function addPoint(entry, point) {
  // Points stay in seq order: a replay of the log (a late viewer's first hello) arrives after the
  // newest live estimate and goes before it.
  const points = entry.points;
  let index = points.length;
  while (index > 0 && points[index - 1].seq > point.seq) index -= 1;
  points.splice(index, 0, point);
  if (Number.isFinite(point.seq)) entry.pointSeqs.add(point.seq);
  while (points.length > MAX_POINTS) entry.pointSeqs.delete(points.shift().seq);
  entry.canvas.dataset.points = String(points.length);
  entry.canvas.dataset.lastTs = String(points[points.length - 1].ts);
}

function showScores(entry, message) {
  const scores = message.scores || {};
  showState(entry, message);
  showFaces(entry, message.faces);
  for (const label of entry.labels) {
    const value = Number(scores[label] ?? 0);
    entry.fills[label].style.width = `${(Math.max(0, Math.min(1, value)) * 100).toFixed(1)}%`;
    entry.values[label].textContent = percent(value);
  }
  const sentiment = Math.max(-1, Math.min(1, Number(message.sentiment ?? 0)));
  const fill = entry.fills.sentiment;
  const width = Math.abs(sentiment) * 50;
  fill.style.width = `${width.toFixed(1)}%`;
  fill.style.left = sentiment < 0 ? `${50 - width}%` : "50%";
  entry.values.sentiment.textContent = signed(sentiment);
  entry.node.querySelector(".estimate-ts").textContent = `at ${mediaTime(message.ts)}`;
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
    const dominant = face.dominant ? `${face.dominant} ${percent((face.scores || {})[face.dominant])}` : "";
    const cells = [`#${face.id}`, face.state ?? "", dominant, "", ""];
    cells.forEach((text) => { const cell = document.createElement("td"); cell.textContent = text; row.appendChild(cell); });
    const mini = document.createElement("span");
    mini.className = "mini";
    entry.labels.forEach((label) => {
      const bar = document.createElement("i");
      const value = Math.max(0, Math.min(1, Number((face.scores || {})[label] ?? 0)));
      bar.style.height = `${Math.max(1, Math.round(value * 14))}px`;
      bar.style.setProperty("--color", colorOf(label, entry.labels));
      bar.title = `${label} ${percent(value)}`;
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
  // The newest summary of each window (the run's --windows, e.g. 5 s and 60 s): what dominated lately
  // and over the longer stretch.
  const entry = card(message.stream);
  const seq = Number.isInteger(message.seq) ? message.seq : -1;
  const window = Number(message.window_s ?? 0);
  entry.summaries ??= new Map();
  const shown = entry.summaries.get(window);
  if (shown && seq < shown.seq) return;  // a replayed summary older than the one shown
  entry.summaries.set(window, { seq, message });
  const parts = [...entry.summaries.entries()].sort((a, b) => a[0] - b[0]).slice(-2).map(([span, { message: m }]) => {
    const dominant = m.dominant ?? m.dominant_label;
    const share = dominant && m.share ? ` ${percent(m.share[dominant])} of the time` : "";
    const over = span ? `last ${Math.round(span)} s` : "window";
    return dominant ? `${over}: mostly ${dominant}${share}` : `${over}: no face`;
  });
  entry.node.querySelector(".dominant").textContent = parts.join(" · ");
}

function onEvent(message) {
  const entry = card(message.stream);
  const seq = Number.isInteger(message.seq) ? message.seq : -1;
  const lifecycle = ["stream_started", "stream_ended", "stream_error"].includes(message.kind);
  if (lifecycle && seq > entry.lifeSeq) {
    // Lifecycle events may come out of order (a replay after live ones): the highest seq decides.
    entry.lifeSeq = seq;
    if (message.kind === "stream_started") restarted(entry);
    else ended(entry, message);
  }
  const list = entry.node.querySelector(".events");
  if (seq >= 0 && list.querySelector(`li[data-seq="${seq}"]`)) return;  // already shown
  const item = document.createElement("li");
  item.dataset.kind = message.kind;
  item.dataset.seq = String(seq);
  const kind = document.createElement("span");
  kind.className = "kind";
  kind.textContent = message.kind.replaceAll("_", " ");
  const when = document.createElement("span");
  when.className = "when";
  when.textContent = mediaTime(message.ts);
  item.append(when, kind, describe(message));
  if (message.detail) item.title = message.detail;
  // Newest first, by seq: a replayed older event goes below the live ones that overtook it.
  const below = [...list.children].find((other) => Number(other.dataset.seq) < seq);
  list.insertBefore(item, below ?? null);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

function describe(message) {
  const face = Number.isInteger(message.face) ? ` · face #${message.face}` : "";
  const value = typeof message.value === "number" ? message.value : null;
  switch (message.kind) {
    case "onset": case "offset": case "peak":
      return `${message.label ?? ""}${value === null ? "" : ` ${percent(value)}`}${face}`;
    case "shift":
      return `${message.previous ? `${message.previous} → ` : ""}${message.label ?? ""}${face}`;
    case "face_appeared":
      return `face #${message.face}${value === null ? "" : ` (detector ${percent(value)})`}`;
    case "face_lost":
      return `face #${message.face}${typeof message.duration === "number" ? ` after ${mediaTime(message.duration)}` : ""}`;
    case "frames_dropped":
      return `${Math.round(message.total ?? value ?? 0)} dropped so far`;
    case "stream_ended": case "stream_error": case "stream_reconnecting":
      return [message.outcome, message.detail].filter(Boolean).join(": ");
    default:
      return `${message.label ?? ""}${value === null ? "" : ` ${value}`}${face}`;
  }
}

function ended(entry, message) {
  const outcome = message.outcome || "ended";
  entry.node.dataset.ended = message.kind === "stream_error" ? "error" : outcome;
  const badge = entry.node.querySelector(".state");
  badge.hidden = false;
  badge.dataset.state = "ended";
  badge.textContent = message.kind === "stream_error" ? "failed" : outcome === "ended" ? "ended" : `ended (${outcome})`;
  badge.title = message.detail || "";
  entry.panel.end(message.kind === "stream_error" ? "the stream failed" : "the stream ended");
  if (!entry.panel.hasPicture()) {
    // Nothing to look at (the stream ended before this page came): no black box, a line instead.
    entry.node.querySelector(".video").hidden = true;
    entry.node.classList.add("no-video");
    entry.node.querySelector(".video-info").textContent = "no video: the stream had ended when this page opened";
  }
  const stats = entry.node.querySelector(".stats");
  if (stats.dataset.final !== "1") {
    stats.textContent = stats.textContent === "no stats yet" ? "no stats received" : `last stats: ${stats.textContent}`;
  }
  stats.dataset.final = "1";
  state.dirty.add(entry.node.dataset.stream);
}

function restarted(entry) {
  // A stream that ended and started again under the same name (a capture page opened again).
  if (!entry.node.dataset.ended) return;
  delete entry.node.dataset.ended;
  entry.node.querySelector(".state").hidden = true;
  entry.node.querySelector(".stats").dataset.final = "";
  entry.node.querySelector(".video").hidden = false;
  entry.node.querySelector(".video-info").textContent = "";
  entry.panel.ended = false;
  showVideo(entry);
  state.dirty.add(entry.node.dataset.stream);
}

function onStats(message) {
  const entry = card(message.stream);
  if (entry.node.dataset.ended) return;  // what an ended stream last said stays
  const latency = message.latency_ms || {};
  const parts = [
    `input ${fps(message.input_fps ?? 0)}`,
    `sampled ${fps(message.sampled_fps ?? 0)}`,
    `drops ${Math.round(message.drops ?? 0)}`,
    `latency p50 ${millis(latency.p50)}, p99 ${millis(latency.p99)}`,
  ];
  if (Number.isFinite(message.queue_depth)) parts.push(`queue ${message.queue_depth}`);
  entry.node.querySelector(".stats").textContent = parts.join(" · ");
}

function frame() {
  for (const stream of state.dirty) {
    const entry = state.cards[stream];
    if (entry) drawTimeline(entry.canvas, entry.points, { series: entry.series, labels: entry.labels, ended: Boolean(entry.node.dataset.ended) });
  }
  state.dirty.clear();
  requestAnimationFrame(frame);
}

bindToggles(document.getElementById("toggles"), state.toggles, (name) => {
  for (const entry of Object.values(state.cards)) {
    if (name === "video") showVideo(entry);
    else entry.panel.redraw();
  }
});
// Charts follow the card's width (the grid is responsive): redraw them when it changes.
new ResizeObserver(() => Object.keys(state.cards).forEach((stream) => state.dirty.add(stream)))
  .observe(document.getElementById("streams"));
document.getElementById("capture-link").href = withToken("/capture");
bindControl((message) => {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return false;
  state.socket.send(JSON.stringify(message));
  return true;
});
connect();
requestAnimationFrame(frame);

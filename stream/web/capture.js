// The capture page: the browser's camera becomes a stream of the pipeline (POST /capture/NAME with a
// non-trickle WebRTC offer, sendonly VP8), and the page draws that stream's estimates (from the
// websocket, the newest one) over the local preview. With "time stamp" (?stamp=1) each camera frame is
// drawn into a canvas with Date.now() painted into its top row (48 squares of 8x8 px, most significant
// bit first, white = 1) and the canvas is sent instead; the server makes the stamp the frame's media
// time, so that an estimate's ts * 1000 is when its frame was drawn and the glass-to-glass latency of
// an overlay is Date.now() - ts * 1000 when it is drawn: collected in window.affectstreamLatency.
"use strict";

import { DEFAULT_LABELS, iceGathered, jsonOf, millis, param, socketUrl, withToken } from "./common.js";
import { EstimateBuffer, bindToggles, contentRect, drawOverlay, loadToggles } from "./overlay.js";

const NAME_RULE = /^[A-Za-z0-9_.-]{1,64}$/;
const STAMP_BITS = 48;
const STAMP_SIDE = 8;
const MIN_STAMP_WIDTH = STAMP_BITS * STAMP_SIDE;  // 384 px
const MAX_LATENCY_SAMPLES = 100000;

const form = document.getElementById("form");
const nameInput = document.getElementById("name");
const stampInput = document.getElementById("stamp");
const startButton = document.getElementById("start");
const stopButton = document.getElementById("stop");
const messageNode = document.getElementById("message");
const preview = document.getElementById("preview");
const video = preview.querySelector("video");
const overlay = preview.querySelector("canvas.overlay");
const badge = preview.querySelector(".transport");
const info = document.getElementById("info");

const latency = [];
window.affectstreamLatency = latency;

const session = {
  running: false,
  starting: false,
  name: null,
  stamp: false,
  camera: null,      // the getUserMedia stream
  sent: null,        // the track sent (the camera's, or the stamped canvas')
  pc: null,
  startedAt: 0,      // Date.now() when the offer was made: no stamp of this session is older
  staleSeq: -1,      // the highest seq of this name seen before the server answered: not ours
  run: 0,            // one per start; a start that finds it changed was stopped while it waited
  inPipeline: false,
  estimates: new EstimateBuffer(),
  labels: DEFAULT_LABELS,
  toggles: loadToggles(),
  socket: null,
  socketAttempts: 0,
  drawPending: false,
  faces: 0,
  estimatesSeen: 0,
};
window.affectstreamCapture = session;

nameInput.value = param("name") || "";
video.addEventListener("resize", () => {
  if (video.videoWidth) preview.style.setProperty("--aspect", `${video.videoWidth} / ${video.videoHeight}`);
});
stampInput.checked = ["1", "true", "yes"].includes(param("stamp") || "");
document.getElementById("dashboard").href = withToken("/");

function say(text, kind = "info") {
  messageNode.textContent = text;
  messageNode.dataset.kind = kind;
}

function setConnection(text, kind) {
  const node = document.getElementById("connection");
  node.textContent = text;
  node.dataset.state = kind;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  start();
});
stopButton.addEventListener("click", () => stop("stopped: the stream ends"));
// Leaving the page (closing the tab, reloading, navigating away) ends the stream at once.
window.addEventListener("pagehide", () => stop(null));
window.addEventListener("beforeunload", () => stop(null));

async function start() {
  if (session.running || session.starting) return;
  const name = nameInput.value.trim();
  if (!NAME_RULE.test(name)) {
    say("The name must be 1 to 64 characters: letters, digits, _ . or - (no spaces).", "error");
    nameInput.focus();
    return;
  }
  if (!navigator.mediaDevices?.getUserMedia) {
    say("This browser gives no camera to this page: browsers allow the camera only on https:// or on " +
        "localhost. Open the page as http://localhost:PORT/capture or serve it over https.", "error");
    return;
  }
  if (typeof window.RTCPeerConnection !== "function") {
    say("This browser has no WebRTC (RTCPeerConnection), which the page needs to send the camera.", "error");
    return;
  }
  session.starting = true;
  session.name = name;
  session.stamp = stampInput.checked;
  const run = ++session.run;  // Stop (or leaving) while this start waits makes it give up
  setButtons();
  say("Asking for the camera…");
  let camera;
  try {
    camera = await navigator.mediaDevices.getUserMedia({
      audio: false, video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } } });
  } catch (error) {
    if (run !== session.run) return;
    session.starting = false;
    setButtons();
    say(cameraError(error), "error");
    return;
  }
  if (run !== session.run) {
    camera.getTracks().forEach((track) => track.stop());
    return;
  }
  session.camera = camera;
  video.srcObject = camera;
  video.play().catch(() => {});
  preview.dataset.state = "playing";
  try {
    await waitForSize();
    if (run !== session.run) return;
    session.sent = session.stamp ? stampedTrack() : camera.getVideoTracks()[0];
    session.sent.contentHint = "detail";  // keep the resolution (boxes, and the stamp) under load
    await connectSocket();  // subscribed before the stream exists: its stream_started is seen
    if (run !== session.run) return;
    await offer(name, run);
  } catch (error) {
    if (run !== session.run) return;
    const text = error instanceof Refusal ? error.message : `Could not connect to the server: ${error.message || error}`;
    cleanup();
    say(text, "error");
    return;
  }
  if (run !== session.run) return;
  session.starting = false;
  session.running = true;
  setButtons();
  badge.textContent = session.stamp ? "WebRTC · stamped" : "WebRTC";
  say(`Sending your camera as “${name}”; waiting for the pipeline…`, "ok");
}

class Refusal extends Error {}

async function offer(name, run) {
  const pc = new RTCPeerConnection();
  session.pc = pc;
  const transceiver = pc.addTransceiver(session.sent, { direction: "sendonly", streams: [new MediaStream([session.sent])] });
  try {
    const parameters = transceiver.sender.getParameters();
    parameters.degradationPreference = "maintain-resolution";
    await transceiver.sender.setParameters(parameters);
  } catch (error) { /* not supported: the browser may scale the picture down under load */ }
  pc.onconnectionstatechange = () => {
    if (pc !== session.pc) return;
    if (pc.connectionState === "failed" || (pc.connectionState === "closed" && session.running)) {
      cleanup();
      say("The connection to the server was lost: the stream ended. Press Start to send again.", "error");
    }
  };
  session.startedAt = Date.now();
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc, 3000);
  let response;
  try {
    response = await fetch(withToken(`/capture/${encodeURIComponent(name)}`), {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, stamp: session.stamp }) });
  } catch (error) {
    throw new Refusal("The server could not be reached: is `affectstream run` still running?");
  }
  const body = await jsonOf(response);
  if (run !== session.run) return;  // stopped meanwhile: the server ends the stream when the peer goes
  if (!response.ok) throw new Refusal(refusalText(response.status, body.error, name));
  await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
}

function refusalText(status, error, name) {
  const detail = error ? ` (the server says: ${error})` : "";
  switch (status) {
    case 400: return `The server refused the name or the offer${detail}. A name is 1 to 64 letters, digits, _ . or -.`;
    case 401: return `The server needs its token: open this page as /capture?token=…${detail}`;
    case 403: return error && /allow-browser-sources/.test(error)
      ? `This server does not take browser cameras: ${error}`
      : `The server refused this page${detail}.`;
    case 409: return `The name “${name}” is already in use by another stream: choose another name${detail}.`;
    case 503: return `The server takes no more cameras right now${detail}. Try again later.`;
    default: return `The server answered ${status}${detail}.`;
  }
}

function cameraError(error) {
  switch (error?.name) {
    case "NotAllowedError": case "SecurityError": case "PermissionDeniedError":
      return "Camera access was denied. Allow the camera for this site (the camera icon in the address bar, or the " +
        "browser's site settings) and press Start again.";
    case "NotFoundError": case "DevicesNotFoundError": case "OverconstrainedError":
      return "No camera was found. Connect one and press Start again.";
    case "NotReadableError": case "TrackStartError": case "AbortError":
      return "The camera could not be started: another program may be using it.";
    default:
      return `The camera could not be opened: ${error?.message || error}`;
  }
}

function waitForSize() {
  if (video.videoWidth) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the camera gave no picture within 5 s")), 5000);
    video.addEventListener("loadedmetadata", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/** The camera drawn into a canvas with Date.now() stamped into its top row; the canvas' track. */
function stampedTrack() {
  const canvas = document.createElement("canvas");
  const scale = Math.max(1, MIN_STAMP_WIDTH / video.videoWidth);
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  const context = canvas.getContext("2d", { alpha: false });
  const camera = session.camera;  // this loop ends with its camera (Stop, or a new start)
  const draw = () => {
    if (session.camera !== camera) return;
    context.drawImage(video, 0, 0, canvas.width, canvas.height);
    const now = Date.now();
    for (let bit = 0; bit < STAMP_BITS; bit += 1) {
      const one = Math.floor(now / 2 ** (STAMP_BITS - 1 - bit)) % 2 === 1;
      context.fillStyle = one ? "#ffffff" : "#000000";
      context.fillRect(bit * STAMP_SIDE, 0, STAMP_SIDE, STAMP_SIDE);
    }
    session.stamped = (session.stamped || 0) + 1;
    schedule();
  };
  const schedule = () => {
    if (session.camera !== camera) return;
    if (typeof video.requestVideoFrameCallback === "function") video.requestVideoFrameCallback(draw);
    else setTimeout(draw, 33);
  };
  draw();
  session.canvas = canvas;
  return canvas.captureStream(30).getVideoTracks()[0];
}

function stop(text) {
  if (!session.running && !session.starting) return;
  cleanup();
  if (text) say(text);
}

function cleanup() {
  session.run += 1;
  const pc = session.pc;
  session.pc = null;
  if (pc) {
    try { pc.close(); } catch (error) { /* closed already */ }
  }
  session.camera?.getTracks().forEach((track) => track.stop());
  session.sent?.stop();
  session.camera = null;
  session.sent = null;
  session.running = false;
  session.starting = false;
  session.inPipeline = false;
  session.estimates.clear();
  video.srcObject = null;
  preview.dataset.state = "off";
  badge.textContent = "";
  drawOverlay(overlay, null, { rect: { x: 0, y: 0, w: 0, h: 0 }, sourceWidth: 0, toggles: session.toggles, labels: session.labels });
  setButtons();
}

function setButtons() {
  const busy = session.running || session.starting;
  startButton.disabled = busy;
  stopButton.disabled = !busy;
  nameInput.disabled = busy;
  stampInput.disabled = busy;
}

// -- the stream's estimates, from the websocket ------------------------------------------------------

/** Connects (or reuses) the websocket and subscribes to this stream; resolves once subscribed (or
 * after 3 s: the stream is sent anyway, the overlays come when the socket does). */
function connectSocket() {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 3000);
    session.onSubscribed = () => { clearTimeout(timer); resolve(); };
    if (session.socket) {
      subscribe();
      return;
    }
    openSocket();
  });
}

function openSocket() {
  const socket = new WebSocket(socketUrl());
  session.socket = socket;
  setConnection("connecting…", "connecting");
  socket.onopen = () => {
    session.socketAttempts = 0;
    setConnection("live", "open");
    subscribe();
  };
  socket.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch (error) { return; }
    onMessage(message);
  };
  socket.onclose = () => {
    session.socket = null;
    setConnection("not connected", "closed");
    if (!session.running) return;
    const delay = Math.min(10000, 500 * 2 ** session.socketAttempts);
    session.socketAttempts += 1;
    setTimeout(() => { if (session.running && !session.socket) openSocket(); }, delay);
  };
}

function subscribe() {
  if (session.socket?.readyState === WebSocket.OPEN && session.name) {
    session.socket.send(JSON.stringify({ type: "subscribe", streams: [session.name], types: ["estimate", "event"] }));
  }
}

function onMessage(message) {
  if (message.type === "hello" && Array.isArray(message.labels)) session.labels = message.labels;
  if (message.type === "subscribed") session.onSubscribed?.();
  if (message.stream !== session.name || !session.name) return;
  if (!session.running) {
    // Before the server answered the offer nothing of this session can exist: what comes is of an
    // earlier stream of this name (the newest estimate a new client is sent): never shown as ours.
    if (Number.isInteger(message.seq)) session.staleSeq = Math.max(session.staleSeq ?? -1, message.seq);
    return;
  }
  if (Number.isInteger(message.seq) && message.seq <= (session.staleSeq ?? -1)) return;
  if (message.type === "estimate") onEstimate(message);
  else if (message.type === "event") onEvent(message);
}

function onEstimate(message) {
  session.estimates.add(message);
  session.estimatesSeen += 1;
  session.faces = Array.isArray(message.faces) ? message.faces.length : 0;
  if (!session.inPipeline) markInPipeline();
  if (!session.drawPending) {
    session.drawPending = true;
    requestAnimationFrame(drawNewest);
  }
}

function drawNewest() {
  session.drawPending = false;
  const estimate = session.estimates.newest();
  if (!estimate || !session.camera) return;
  const rect = contentRect(overlay.clientWidth, overlay.clientHeight, video.videoWidth, video.videoHeight);
  const sourceWidth = estimate.source_size?.[0] || session.canvas?.width || video.videoWidth;
  drawOverlay(overlay, estimate, { rect, sourceWidth, toggles: session.toggles, labels: session.labels });
  if (session.stamp) {
    // Glass to glass: from when the frame was drawn (its stamp: the estimate's media time) to now.
    const sample = Date.now() - Number(estimate.ts) * 1000;
    const ours = Number(estimate.ts) * 1000 >= session.startedAt - 100;  // stamped in this session
    if (ours && estimate.seq !== session.lastSample && Number.isFinite(sample)) {
      session.lastSample = estimate.seq;
      if (latency.length < MAX_LATENCY_SAMPLES) latency.push(Math.round(sample));
    }
  }
  showInfo();
}

function showInfo() {
  const parts = [`${video.videoWidth}×${video.videoHeight}`, `${session.estimatesSeen} estimates`,
                 `${session.faces} face${session.faces === 1 ? "" : "s"} now`];
  if (latency.length) {
    const recent = latency.slice(-50).sort((a, b) => a - b);
    parts.push(`glass to glass ${millis(recent[Math.floor(recent.length / 2)])} (median of the last ${recent.length})`);
  }
  info.textContent = parts.join(" · ");
}

function markInPipeline() {
  session.inPipeline = true;
  say(`Your camera is the stream “${session.name}”: the overlays show its estimates. Closing this tab ends it.`, "ok");
}

function onEvent(message) {
  if (message.kind === "stream_started") markInPipeline();
  if (message.kind === "stream_ended" || message.kind === "stream_error") {
    const detail = message.detail ? `: ${message.detail}` : "";
    cleanup();
    say(`The server ended the stream${detail}. Press Start to send again.`, message.kind === "stream_error" ? "error" : "info");
  }
}

new ResizeObserver(() => { if (session.running) drawNewest(); }).observe(preview);
bindToggles(document.getElementById("toggles"), session.toggles, () => { if (session.running) drawNewest(); });
if (["1", "true", "yes"].includes(param("start") || "") && nameInput.value) start();

// Overlays over a stream's picture: per face a box, its id and dominant emotion, and small bars; the
// toggles that turn each on or off (kept in localStorage), and the buffer of recent estimates from
// which the one matching a displayed frame is picked.
"use strict";

import { BOX_COLOR, COLORS, clamp01, percent } from "./common.js";

export const TOGGLES = ["boxes", "labels", "bars"];
const STORAGE_KEY = "affectstream.overlay";
const MAX_AGE_S = 2;   // an estimate older than its frame by more than this is not drawn on it
const KEEP_S = 10;     // how much media time of estimates a buffer keeps
const KEEP_MAX = 400;

export function loadToggles() {
  const toggles = { boxes: true, labels: true, bars: true, video: true };
  try {
    Object.assign(toggles, JSON.parse(localStorage.getItem(STORAGE_KEY) || "{}"));
  } catch (error) { /* private mode or a damaged entry: the defaults */ }
  return toggles;
}

export function saveToggles(toggles) {
  try { localStorage.setItem(STORAGE_KEY, JSON.stringify(toggles)); } catch (error) { /* not persisted */ }
}

/** Checkboxes with data-toggle="NAME" under `root` show and change `toggles`; `onChange` after each. */
export function bindToggles(root, toggles, onChange) {
  for (const input of root.querySelectorAll("input[data-toggle]")) {
    const name = input.dataset.toggle;
    input.checked = Boolean(toggles[name]);
    input.addEventListener("change", () => {
      toggles[name] = input.checked;
      saveToggles(toggles);
      onChange(name);
    });
  }
}

/** A stream's recent estimates, sorted by media time, each seq once. */
export class EstimateBuffer {
  constructor() {
    this.items = [];
    this.seqs = new Set();
  }

  add(estimate) {
    const ts = Number(estimate.ts);
    if (!Number.isFinite(ts) || this.seqs.has(estimate.seq)) return;
    const items = this.items;
    const newest = items.length ? items[items.length - 1].ts : -Infinity;
    if (ts < newest - KEEP_S * 6 && items.length) {
      // Media time went far back (the source's clock restarted): what we hold is of another timeline.
      this.clear();
    }
    let index = items.length;
    while (index > 0 && items[index - 1].ts > ts) index -= 1;
    items.splice(index, 0, estimate);
    this.seqs.add(estimate.seq);
    const last = items[items.length - 1].ts;
    while (items.length > KEEP_MAX || (items.length > 1 && items[0].ts < last - KEEP_S)) {
      this.seqs.delete(items.shift().seq);
    }
  }

  clear() {
    this.items = [];
    this.seqs.clear();
  }

  newest() {
    return this.items.length ? this.items[this.items.length - 1] : null;
  }

  /** The estimate with the greatest ts <= frameTs, if it is at most 2 s older; never a newer one. */
  at(frameTs) {
    const items = this.items;
    for (let i = items.length - 1; i >= 0; i -= 1) {
      if (items[i].ts <= frameTs + 1e-6) return frameTs - items[i].ts <= MAX_AGE_S ? items[i] : null;
    }
    return null;
  }
}

/** Where a picture of intrinsic size (w, h) lies in a box of (width, height) with object-fit: contain. */
export function contentRect(width, height, w, h) {
  if (!w || !h || !width || !height) return { x: 0, y: 0, w: width, h: height };
  const scale = Math.min(width / w, height / h);
  return { x: (width - w * scale) / 2, y: (height - h * scale) / 2, w: w * scale, h: h * scale };
}

/**
 * Draws `estimate`'s faces on `canvas` (which covers its picture's element exactly). `rect` is where
 * the picture lies on the canvas (CSS pixels) and `sourceWidth` the width of the pixels the boxes are
 * in. Returns the boxes drawn, in CSS pixels of the canvas; sets data-boxes (JSON) and data-estimate-ts.
 */
export function drawOverlay(canvas, estimate, { rect, sourceWidth, toggles, labels }) {
  const ratio = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth;
  const cssHeight = canvas.clientHeight;
  const width = Math.round(cssWidth * ratio);
  const height = Math.round(cssHeight * ratio);
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const context = canvas.getContext("2d");
  context.setTransform(1, 0, 0, 1, 0, 0);
  context.clearRect(0, 0, width, height);
  const boxes = [];
  if (!estimate) {
    canvas.dataset.boxes = "[]";
    canvas.dataset.estimateTs = "";
    return boxes;
  }
  const scale = sourceWidth ? rect.w / sourceWidth : 1;
  const faces = Array.isArray(estimate.faces) ? estimate.faces : [];
  // Everything is drawn in device pixels, boxes on whole pixels: one exact color, no blended edges.
  context.font = `${Math.round(12 * ratio)}px system-ui, sans-serif`;
  context.textBaseline = "top";
  const line = Math.max(2, Math.round(2 * ratio));
  for (const face of faces) {
    if (!Array.isArray(face.box) || face.box.length !== 4) continue;
    const [bx, by, bw, bh] = face.box.map(Number);
    const css = [rect.x + bx * scale, rect.y + by * scale, bw * scale, bh * scale];
    const x = Math.round(css[0] * ratio);
    const y = Math.round(css[1] * ratio);
    const w = Math.max(line * 2, Math.round(css[2] * ratio));
    const h = Math.max(line * 2, Math.round(css[3] * ratio));
    if (toggles.boxes) {
      boxes.push({ id: face.id, box: [x / ratio, y / ratio, w / ratio, h / ratio].map((v) => Math.round(v * 10) / 10) });
      context.fillStyle = BOX_COLOR;
      context.fillRect(x, y, w, line);
      context.fillRect(x, y + h - line, w, line);
      context.fillRect(x, y, line, h);
      context.fillRect(x + w - line, y, line, h);
    }
    if (toggles.labels) drawLabel(context, face, x, y, ratio, line);
    if (toggles.bars) drawBars(context, face, x, y + h, ratio, labels, height);
  }
  if (toggles.labels && estimate.state === "no_face") {
    drawTag(context, "no face in view", Math.round(6 * ratio), Math.round(6 * ratio), ratio);
  }
  canvas.dataset.boxes = JSON.stringify(boxes.map((entry) => entry.box));
  canvas.dataset.faces = JSON.stringify(boxes.map((entry) => entry.id));
  canvas.dataset.estimateTs = String(estimate.ts);
  canvas.dataset.estimateSeq = String(estimate.seq);
  return boxes;
}

function drawLabel(context, face, x, y, ratio, line) {
  const dominant = face.dominant;
  const value = dominant ? (face.scores || {})[dominant] : undefined;
  let text = `#${face.id}`;
  if (dominant) text += ` ${dominant} ${percent(value)}`;
  if (face.state === "uncertain") text += " · uncertain";
  const tagHeight = Math.round(17 * ratio);
  const top = y - tagHeight >= 0 ? y - tagHeight : y + line;
  drawTag(context, text, x, top, ratio);
}

function drawTag(context, text, x, y, ratio) {
  const pad = Math.round(4 * ratio);
  const width = Math.ceil(context.measureText(text).width) + 2 * pad;
  context.fillStyle = "rgba(10, 12, 16, 0.78)";
  context.fillRect(x, y, width, Math.round(17 * ratio));
  context.fillStyle = "#ffffff";
  context.fillText(text, x + pad, y + Math.round(2 * ratio));
}

function drawBars(context, face, x, bottom, ratio, names, canvasHeight) {
  // One small bar per label under the box (above it when there is no room), in the labels' colors.
  const bar = Math.max(3, Math.round(6 * ratio));
  const gap = Math.max(1, Math.round(2 * ratio));
  const tall = Math.round(26 * ratio);
  const pad = Math.round(3 * ratio);
  const width = names.length * (bar + gap) - gap + 2 * pad;
  const top = bottom + pad + tall + 2 * pad <= canvasHeight ? bottom + pad : bottom - tall - 3 * pad;
  context.fillStyle = "rgba(10, 12, 16, 0.7)";
  context.fillRect(x, top, width, tall + 2 * pad);
  names.forEach((label, index) => {
    const value = clamp01((face.scores || {})[label]);
    const h = Math.max(1, Math.round(value * tall));
    context.fillStyle = COLORS[index % COLORS.length];
    context.fillRect(x + pad + index * (bar + gap), top + pad + tall - h, bar, h);
  });
}

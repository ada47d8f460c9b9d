// The timeline of one stream: every label's score (left axis, 0–100 %) and the sentiment (dashed, right
// axis, −1..+1) over media time (bottom axis, seconds of the stream), drawn on a canvas at the
// screen's pixel density.
"use strict";

import { colorOf, mediaTime } from "./common.js";

export const TIMELINE_S = 60;      // the span shown of a live stream; a younger stream fills the width
export const MIN_TIMELINE_S = 10;
export const ENDED_TIMELINE_S = 600;  // an ended stream shows all it kept, up to this
const STEPS = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
const MARGIN = { left: 44, right: 34, top: 16, bottom: 20 };
const GRID = "#2a313b";
const AXIS_TEXT = "#8b95a3";

/**
 * Draws `points` (sorted by seq: {seq, ts, scores, sentiment}) on `canvas`; `series` is the labels
 * and "sentiment". Sets data-drawn (points drawn), data-span-s and data-end-ts on the canvas.
 */
export function drawTimeline(canvas, points, { series, labels, ended = false }) {
  const context = canvas.getContext("2d");
  const ratio = window.devicePixelRatio || 1;
  const cssWidth = Math.max(100, Math.round(canvas.clientWidth || canvas.width));
  const cssHeight = Math.max(60, Math.round(canvas.clientHeight || canvas.height));
  if (canvas.width !== Math.round(cssWidth * ratio) || canvas.height !== Math.round(cssHeight * ratio)) {
    canvas.width = Math.round(cssWidth * ratio);
    canvas.height = Math.round(cssHeight * ratio);
  }
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, cssWidth, cssHeight);
  const plot = { x: MARGIN.left, y: MARGIN.top, w: cssWidth - MARGIN.left - MARGIN.right,
                 h: cssHeight - MARGIN.top - MARGIN.bottom };
  const yOf = (value) => plot.y + plot.h - Math.max(0, Math.min(1, value)) * plot.h;

  context.font = "11px system-ui, sans-serif";
  context.lineWidth = 1;
  // Horizontal grid: scores on the left, sentiment on the right (the same lines: 0 % = −1, 50 % = 0).
  context.textBaseline = "middle";
  const sentimentTicks = { 0: "−1", 0.5: "0", 1: "+1" };
  for (const value of [0, 0.25, 0.5, 0.75, 1]) {
    const y = Math.round(yOf(value)) + 0.5;
    context.strokeStyle = GRID;
    context.beginPath();
    context.moveTo(plot.x, y);
    context.lineTo(plot.x + plot.w, y);
    context.stroke();
    context.fillStyle = AXIS_TEXT;
    context.textAlign = "right";
    context.fillText(`${Math.round(value * 100)} %`, plot.x - 5, y);
    if (value in sentimentTicks) {
      context.textAlign = "left";
      context.fillText(sentimentTicks[value], plot.x + plot.w + 5, y);
    }
  }
  context.textBaseline = "top";
  context.textAlign = "left";
  context.fillText("score", 2, 1);
  context.textAlign = "right";
  context.fillText("sentiment", cssWidth - 2, 1);

  const shown = visiblePoints(points);
  if (!shown.length) {
    context.textAlign = "center";
    context.textBaseline = "middle";
    context.fillText("no estimates yet", plot.x + plot.w / 2, plot.y + plot.h / 2);
    canvas.dataset.drawn = "0";
    return;
  }
  const end = shown[shown.length - 1].ts;
  const range = end - shown[0].ts;
  // An ended stream's timeline fits what it kept (it no longer grows); a live one keeps a steady scale.
  const span = ended ? Math.max(1, Math.min(ENDED_TIMELINE_S, range))
    : Math.max(MIN_TIMELINE_S, Math.min(TIMELINE_S, range));
  // A young stream (its media time from 0) grows from the left edge instead of showing negative time.
  const start = end - span < 0 && shown[0].ts >= 0 ? 0 : end - span;
  const stop = start + span;
  const xOf = (ts) => plot.x + ((ts - start) / span) * plot.w;

  // Time axis: ticks at a round step, ~70 px apart at least, labelled in the stream's media time.
  const step = STEPS.find((candidate) => (span / candidate) * 70 <= plot.w) ?? STEPS[STEPS.length - 1];
  context.textAlign = "center";
  context.textBaseline = "top";
  const decimals = step < 1 ? 1 : 0;
  for (let tick = Math.ceil(start / step) * step; tick <= stop + 1e-9; tick += step) {
    const x = Math.round(xOf(tick)) + 0.5;
    context.strokeStyle = GRID;
    context.beginPath();
    context.moveTo(x, plot.y + plot.h);
    context.lineTo(x, plot.y + plot.h + 4);
    context.stroke();
    context.fillStyle = AXIS_TEXT;
    context.fillText(mediaTime(tick, decimals), Math.min(Math.max(x, plot.x + 12), plot.x + plot.w - 12),
                     plot.y + plot.h + 6);
  }

  const inside = shown.filter((point) => point.ts >= start - 1e-9);
  const gap = gapOf(inside);
  context.save();
  context.beginPath();
  context.rect(plot.x - 3, plot.y - 3, plot.w + 6, plot.h + 6);
  context.clip();
  context.lineWidth = 1.5;
  series.forEach((label) => {
    const isSentiment = label === "sentiment";
    context.strokeStyle = colorOf(label, labels);
    context.setLineDash(isSentiment ? [4, 3] : []);
    context.beginPath();
    const dots = [];
    inside.forEach((point, i) => {
      const value = isSentiment ? (Number(point.sentiment ?? 0) + 1) / 2 : Number(point.scores?.[label] ?? 0);
      const x = xOf(point.ts);
      const y = yOf(value);
      // A gap in the estimates (no face detected for long, a reconnect, history not kept) is left open;
      // a point with no neighbour on either side is drawn as a dot.
      const joined = i > 0 && point.ts - inside[i - 1].ts <= gap;
      const next = i + 1 < inside.length && inside[i + 1].ts - point.ts <= gap;
      if (joined) context.lineTo(x, y); else context.moveTo(x, y);
      if (!joined && !next) dots.push([x, y]);
    });
    context.stroke();
    context.fillStyle = context.strokeStyle;
    for (const [x, y] of dots) {
      context.beginPath();
      context.arc(x, y, 2.5, 0, 2 * Math.PI);
      context.fill();
    }
  });
  context.restore();
  context.setLineDash([]);
  canvas.dataset.drawn = String(inside.length);
  canvas.dataset.spanS = span.toFixed(1);
  canvas.dataset.endTs = String(end);
}

/** The points after the last jump back of media time (a source whose clock restarted), in order. */
function visiblePoints(points) {
  let first = 0;
  for (let i = 1; i < points.length; i += 1) {
    if (points[i].ts < points[i - 1].ts - 0.5) first = i;
  }
  return first ? points.slice(first) : points;
}

/** Seconds between two points beyond which the line is broken: 4 typical intervals, at least 3 s. */
function gapOf(points) {
  const steps = [];
  for (let i = Math.max(1, points.length - 50); i < points.length; i += 1) steps.push(points[i].ts - points[i - 1].ts);
  if (!steps.length) return 3;
  steps.sort((a, b) => a - b);
  return Math.max(3, 4 * steps[Math.floor(steps.length / 2)]);
}

// Shared by the dashboard (app.js) and the capture page (capture.js): colors, the token, formatting.
"use strict";

// One color per label, in the order of hello's labels; the 7th is neutral.
export const COLORS = ["#ff5b5b", "#ffd24f", "#7ed957", "#b98cff", "#4fa3ff", "#ff9f43", "#9aa4b2"];
export const SENTIMENT_COLOR = "#e6e9ee";
// Face boxes on the video: one solid color used nowhere else on the page, so that a screenshot check
// can find the boxes by color (tests/test_video_browser.py). Keep it out of COLORS and style.css.
export const BOX_COLOR = "#ff00ff";
export const DEFAULT_LABELS = ["anger", "happiness", "disgust", "fear", "sadness", "surprise"];

const params = new URLSearchParams(location.search);

export function param(name) {
  return params.get(name);
}

/** `?token=…` of this page, to pass on to the websocket and the video routes ("" when none). */
export function token() {
  return params.get("token") || "";
}

/** A same-origin URL with the page's token added. */
export function withToken(path, query = {}) {
  const search = new URLSearchParams(query);
  if (token()) search.set("token", token());
  const text = search.toString();
  return path + (text ? `?${text}` : "");
}

export function socketUrl(query = {}) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}` + withToken("/ws", query);
}

export function colorOf(label, labels) {
  if (label === "sentiment") return SENTIMENT_COLOR;
  const index = labels.indexOf(label);
  return COLORS[(index < 0 ? labels.length : index) % COLORS.length];
}

export function clamp01(value) {
  const number = Number(value);
  return Number.isFinite(number) ? Math.max(0, Math.min(1, number)) : 0;
}

/** A score for people: whole percent ("61 %"). */
export function percent(value) {
  return `${Math.round(clamp01(value) * 100)} %`;
}

/** A sentiment (−1..1) with its sign and two decimals ("+0.42", "−0.10"). */
export function signed(value) {
  const number = Number(value);
  if (!Number.isFinite(number)) return "–";
  const text = Math.abs(number).toFixed(2);
  return (number < -0.005 ? "−" : number > 0.005 ? "+" : "±") + text;
}

/** A duration in whole ms ("38 ms"), or "–". */
export function millis(value) {
  const number = Number(value);
  return Number.isFinite(number) ? `${Math.round(number)} ms` : "–";
}

/** A rate with one decimal ("29.9 fps"). */
export function fps(value) {
  const number = Number(value);
  return Number.isFinite(number) ? `${number.toFixed(1)} fps` : "–";
}

/** Media time for people: "12.5 s" under a minute, "1:05.0" under an hour, "1:02:03" above. */
export function mediaTime(seconds, decimals = 1) {
  const number = Number(seconds);
  if (!Number.isFinite(number)) return "–";
  const sign = number < 0 ? "−" : "";
  const unit = 10 ** decimals;
  const value = Math.round(Math.abs(number) * unit) / unit;  // rounded first: 59.97 s is "1:00.0"
  if (value < 60) return `${sign}${value.toFixed(decimals)} s`;
  const hours = Math.floor(value / 3600);
  const minutes = Math.floor((value % 3600) / 60);
  const rest = value % 60;
  if (hours) return `${sign}${hours}:${String(minutes).padStart(2, "0")}:${String(Math.floor(rest)).padStart(2, "0")}`;
  return `${sign}${minutes}:${rest.toFixed(decimals).padStart(decimals ? 3 + decimals : 2, "0")}`;
}

/** The dominant label of scores (null when every score is 0). */
export function dominantOf(scores, labels) {
  let best = null;
  let value = 0;
  for (const label of labels) {
    const score = Number((scores || {})[label] ?? 0);
    if (score > value) { best = label; value = score; }
  }
  return best;
}

/** The answer of a fetch as JSON, or {} when it has none; `error` from the server's JSON errors. */
export async function jsonOf(response) {
  try { return await response.json(); } catch (error) { return {}; }
}

/** Waits until ICE gathering is complete (non-trickle: the offer carries every candidate). */
export function iceGathered(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    // Some candidates (an unreachable interface) can hold gathering up for long: send what we have.
    const timer = setTimeout(() => { pc.removeEventListener("icegatheringstatechange", done); resolve(); }, timeoutMs);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

// A stream's video in the dashboard: WebRTC (VP8 from the server, a "clock" data channel that maps RTP
// time to the stream's media time) with the overlay of the estimate that matches each displayed frame;
// MJPEG over HTTP in an <img> when WebRTC gives no frame in time (then the overlay shows the newest
// estimate: an <img> says nothing of which frame it shows). `?video=webrtc|mjpeg|off` forces a choice.
"use strict";

import { iceGathered, jsonOf, millis, param, withToken } from "./common.js";
import { contentRect, drawOverlay } from "./overlay.js";

const FIRST_FRAME_TIMEOUT_MS = 1000 * (Number(param("video_timeout")) || 4);
const DELAY_SAMPLES = 30;
const DELAY_LOG = 20000;  // [Date.now(), frame ts, delay ms] of the last frames, for benchmarks
const MJPEG_NOTE = "MJPEG: an <img> tells no frame's media time, so the overlay shows the newest estimate";

export class VideoPanel {
  /**
   * `root` is the card's .video element; `estimates` the stream's EstimateBuffer; `context()` gives
   * {toggles, labels} at draw time.
   */
  constructor(root, stream, estimates, context) {
    this.root = root;
    this.stream = stream;
    this.estimates = estimates;
    this.context = context;
    this.video = root.querySelector("video");
    this.image = root.querySelector("img");
    this.canvas = root.querySelector("canvas.overlay");
    this.still = root.querySelector("canvas.still");
    this.badge = root.querySelector(".transport");
    this.note = root.querySelector(".video-note");
    this.info = root.parentElement.querySelector(".video-info");
    this.attempt = 0;
    this.pc = null;
    this.clock = null;
    this.frames = 0;
    this.delays = [];
    this.delayLog = [];
    this.rates = [];
    this.lastFrame = null;   // {ts, estimate} of the frame drawn last (WebRTC)
    this.ended = false;
    this.transport = "none";
    this.video.addEventListener("resize", () => this.sized(this.video.videoWidth, this.video.videoHeight));
    this.image.addEventListener("load", () => this.mjpegFrame());
    this.image.addEventListener("error", () => this.mjpegFailed());
    new ResizeObserver(() => this.redraw()).observe(root);
  }

  start() {
    if (this.ended) return;
    this.mjpegRetries = 0;
    const choice = param("video");
    if (choice === "off") { this.stop("video off (?video=off)"); return; }
    if (choice === "mjpeg") { this.startMjpeg("MJPEG chosen with ?video=mjpeg"); return; }
    this.startWebRTC(choice === "webrtc");
  }

  /** Stops the transport; the last picture stays. */
  stop(text) {
    this.attempt += 1;
    this.closePeer();
    if (this.transport === "mjpeg") this.image.removeAttribute("src");
    this.setState("off", text);
  }

  /** The stream ended: its video stops; the last picture and overlay stay. */
  end(text) {
    if (this.ended) return;
    this.ended = true;
    this.attempt += 1;
    if (this.transport === "webrtc" && this.frames) this.keepStill();
    this.closePeer();
    this.setState("ended", text);
  }

  /** Whether a picture of the stream was shown (a late viewer of an ended stream has none). */
  hasPicture() {
    return this.frames > 0 || (this.transport === "mjpeg" && this.image.naturalWidth > 0);
  }

  /** A new estimate arrived: MJPEG draws the newest at once (WebRTC draws at the next frame). */
  onEstimate() {
    if (this.transport === "mjpeg" && this.root.dataset.state === "playing") this.drawNewest();
  }

  /** Toggles changed or the element was resized: draw the last overlay again. */
  redraw() {
    if (this.transport === "mjpeg") this.drawNewest();
    else if (this.lastFrame) this.drawFrame(this.lastFrame.ts, this.lastFrame.estimate);
  }

  /** The video's current picture into the still canvas: a closed connection leaves the <video> black. */
  keepStill() {
    const { videoWidth: w, videoHeight: h } = this.video;
    if (!w || !h) return;
    this.still.width = w;
    this.still.height = h;
    try {
      this.still.getContext("2d").drawImage(this.video, 0, 0, w, h);
      this.still.hidden = false;
      this.video.hidden = true;
    } catch (error) { /* no picture to keep */ }
  }

  // -- WebRTC ---------------------------------------------------------------------------------------

  async startWebRTC(forced) {
    const attempt = ++this.attempt;
    this.setTransport("webrtc");
    this.setState("connecting", "connecting video (WebRTC)…");
    if (typeof window.RTCPeerConnection !== "function") {
      this.webrtcFailed(attempt, "this browser has no WebRTC (RTCPeerConnection)", forced);
      return;
    }
    const timer = setTimeout(() => {
      if (attempt === this.attempt && !this.frames) this.webrtcFailed(attempt, `WebRTC gave no frame within ${FIRST_FRAME_TIMEOUT_MS / 1000} s`, forced);
    }, FIRST_FRAME_TIMEOUT_MS);
    let pc;
    try {
      pc = new RTCPeerConnection();
      this.pc = pc;
      pc.addTransceiver("video", { direction: "recvonly" });
      const channel = pc.createDataChannel("clock");
      channel.onmessage = (event) => { if (attempt === this.attempt) this.onClock(event.data); };
      pc.ontrack = (event) => {
        if (attempt !== this.attempt) return;
        this.video.srcObject = event.streams[0] || new MediaStream([event.track]);
        this.video.play().catch(() => { /* autoplay of a muted video is allowed; a pause is the user's */ });
        this.watchFrames(attempt);
      };
      pc.onconnectionstatechange = () => {
        if (attempt !== this.attempt) return;
        if (pc.connectionState === "failed") this.webrtcFailed(attempt, "the WebRTC connection failed", forced);
      };
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc, 3000);
      if (attempt !== this.attempt) return;
      const response = await fetch(withToken(`/webrtc/${encodeURIComponent(this.stream)}`), {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }) });
      const body = await jsonOf(response);
      if (attempt !== this.attempt) return;
      if (!response.ok) {
        const reason = body.error || `HTTP ${response.status}`;
        if ([401, 403, 404, 405].includes(response.status)) {
          // Not a matter of transport: MJPEG would be refused the same way (405: a server without video).
          clearTimeout(timer);
          this.attempt += 1;
          this.closePeer();
          this.setState("failed", `no video: ${reason}`);
          return;
        }
        this.webrtcFailed(attempt, `the server refused WebRTC: ${reason}`, forced);
        return;
      }
      this.root.dataset.peer = String(body.peer ?? "");
      await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    } catch (error) {
      if (attempt === this.attempt) this.webrtcFailed(attempt, `WebRTC: ${error.message || error}`, forced);
    }
  }

  webrtcFailed(attempt, reason, forced) {
    if (attempt !== this.attempt || this.ended) return;
    this.closePeer();
    if (forced) {
      this.attempt += 1;
      this.setState("failed", `${reason} (?video=webrtc: no fallback)`);
      return;
    }
    this.startMjpeg(`${reason}: MJPEG instead`);
  }

  closePeer() {
    if (this.pc) {
      try { this.pc.close(); } catch (error) { /* already closed */ }
      this.pc = null;
    }
  }

  onClock(text) {
    let message;
    try { message = JSON.parse(text); } catch (error) { return; }
    if (message.type !== "clock" || !Number.isFinite(message.rtp_origin)) return;
    this.clock = message;
    this.root.dataset.clock = "1";
  }

  watchFrames(attempt) {
    const video = this.video;
    if (typeof video.requestVideoFrameCallback !== "function") {
      // No per-frame callback (an old browser): frames are seen, the overlay shows the newest estimate.
      const tick = () => {
        if (attempt !== this.attempt) return;
        const quality = video.getVideoPlaybackQuality?.();
        const count = quality ? quality.totalVideoFrames : (video.readyState >= 2 ? this.frames + 1 : 0);
        if (count > this.frames) this.presented(count, null);
        requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
      return;
    }
    const onFrame = (now, metadata) => {
      if (attempt !== this.attempt) return;
      this.presented(metadata.presentedFrames, metadata.rtpTimestamp);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  presented(count, rtpTimestamp) {
    const first = !this.frames;
    this.frames = count;
    this.root.dataset.frames = String(count);
    this.rates.push({ at: performance.now(), count });
    while (this.rates.length > 2 && this.rates[0].at < performance.now() - 2000) this.rates.shift();
    if (first) {
      this.sized(this.video.videoWidth, this.video.videoHeight);
      this.setState("playing", "");
    }
    const ts = this.frameTs(rtpTimestamp);
    if (ts === null) {
      this.drawFrame(null, rtpTimestamp === undefined || rtpTimestamp === null ? this.estimates.newest() : null);
      return;
    }
    this.drawFrame(ts, this.estimates.at(ts));
    const clock = this.clock;
    const delay = Date.now() - (clock.wall + (ts - clock.ts) * 1000);
    this.delays.push(delay);
    if (this.delays.length > DELAY_SAMPLES) this.delays.shift();
    this.delayLog.push([Date.now(), ts, delay]);
    if (this.delayLog.length > DELAY_LOG * 1.25) this.delayLog.splice(0, this.delayLog.length - DELAY_LOG);
    if (first || performance.now() - (this.infoAt ?? 0) > 1000) this.showInfo();
  }

  /** A displayed frame's media time from its RTP timestamp and the clock; null until a clock came. */
  frameTs(rtpTimestamp) {
    const clock = this.clock;
    if (!clock || !Number.isFinite(rtpTimestamp)) return null;
    const rate = Number(clock.clock_rate) || 90000;
    const wrap = 2 ** 32 / rate;
    const raw = ((rtpTimestamp - clock.rtp_origin) >>> 0) / rate;
    // The RTP clock wraps every 47721.86 s at 90 kHz: take the value nearest the newest media time known.
    const reference = this.estimates.newest()?.ts ?? clock.ts;
    return raw + Math.round((reference - raw) / wrap) * wrap;
  }

  drawFrame(ts, estimate) {
    this.lastFrame = { ts, estimate };
    const { toggles, labels } = this.context();
    const rect = contentRect(this.canvas.clientWidth, this.canvas.clientHeight, this.video.videoWidth, this.video.videoHeight);
    const sourceWidth = this.clock?.source_size?.[0] || estimate?.source_size?.[0] || this.video.videoWidth;
    drawOverlay(this.canvas, estimate, { rect, sourceWidth, toggles, labels });
    this.canvas.dataset.frameTs = ts === null ? "" : String(Math.round(ts * 1e6) / 1e6);
  }

  showInfo() {
    this.infoAt = performance.now();
    const parts = [];
    const [w, h] = [this.video.videoWidth, this.video.videoHeight];
    const source = this.clock?.source_size;
    if (w && h) parts.push(source && source[0] !== w ? `${w}×${h} (source ${source[0]}×${source[1]})` : `${w}×${h}`);
    if (this.rates.length > 1) {
      const first = this.rates[0];
      const last = this.rates[this.rates.length - 1];
      if (last.at > first.at) parts.push(`${((last.count - first.count) * 1000 / (last.at - first.at)).toFixed(1)} fps`);
    }
    if (this.delays.length) {
      const sorted = [...this.delays].sort((a, b) => a - b);
      const median = sorted[Math.floor(sorted.length / 2)];
      this.root.dataset.delayMs = String(Math.round(median));
      parts.push(`${millis(median)} behind the source`);
    }
    if (this.info) {
      this.info.textContent = parts.join(" · ");
      this.info.title = "behind the source: from when the server held a frame to when this page showed it " +
        "(encode, network, decode); it assumes this computer's clock agrees with the server's";
    }
  }

  // -- MJPEG ----------------------------------------------------------------------------------------

  startMjpeg(reason) {
    this.mjpegReason = reason;
    this.attempt += 1;
    this.closePeer();
    this.setTransport("mjpeg");
    this.setState("connecting", reason);
    this.badge.title = `${reason}. ${MJPEG_NOTE}`;
    this.video.srcObject = null;
    this.image.src = withToken(`/video/${encodeURIComponent(this.stream)}.mjpg`);
  }

  mjpegFrame() {
    if (this.transport !== "mjpeg") return;
    this.mjpegRetries = 0;
    if (this.root.dataset.state !== "playing" && !this.ended) this.setState("playing", "");
    this.sized(this.image.naturalWidth, this.image.naturalHeight);
    if (this.info) this.info.textContent = `${this.image.naturalWidth}×${this.image.naturalHeight} · MJPEG · overlay: newest estimate`;
    this.drawNewest();
  }

  mjpegFailed() {
    if (this.transport !== "mjpeg" || !this.image.getAttribute("src") || this.ended) return;
    // Refused (a viewer cap, a server restarting) or cut: tried again a few times, then left failed
    // (the next hello, after a reconnect, tries again).
    const attempt = this.attempt;
    this.mjpegRetries = (this.mjpegRetries ?? 0) + 1;
    if (this.mjpegRetries <= 3) {
      this.setState("connecting", `the MJPEG stream was refused or cut: retrying (${this.mjpegRetries} of 3)…`);
      setTimeout(() => {
        if (attempt === this.attempt && !this.ended) this.startMjpeg(this.mjpegReason);
      }, 3000);
      return;
    }
    this.setState("failed", "no video: the MJPEG stream was refused or ended");
  }

  drawNewest() {
    const { toggles, labels } = this.context();
    const [w, h] = [this.image.naturalWidth, this.image.naturalHeight];
    const estimate = this.estimates.newest();
    const rect = contentRect(this.canvas.clientWidth, this.canvas.clientHeight, w, h);
    drawOverlay(this.canvas, w ? estimate : null, { rect, sourceWidth: estimate?.source_size?.[0] || w, toggles, labels });
    this.canvas.dataset.frameTs = "";
  }

  // -- state ----------------------------------------------------------------------------------------

  setTransport(kind) {
    this.transport = kind;
    this.root.dataset.transport = kind;
    this.badge.textContent = kind === "webrtc" ? "WebRTC" : kind === "mjpeg" ? "MJPEG" : "";
    this.badge.title = kind === "webrtc" ? "WebRTC: each frame's overlay is the estimate of that frame's media time" : MJPEG_NOTE;
    this.video.hidden = kind !== "webrtc";
    this.image.hidden = kind !== "mjpeg";
    this.still.hidden = true;
    this.frames = 0;
    this.delays = [];
    this.rates = [];
    this.lastFrame = null;
  }

  setState(state, text) {
    this.root.dataset.state = state;
    this.note.textContent = text;
    this.note.hidden = !text;
  }

  sized(width, height) {
    if (width && height) this.root.style.setProperty("--aspect", `${width} / ${height}`);
    this.redraw();
  }
}

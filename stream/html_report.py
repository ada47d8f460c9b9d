"""The HTML report of ``affectstream analyze``: one self-contained page a person can read and send on.

Everything is inline: the style sheet, the charts (SVG drawn here, no script), the thumbnails (JPEG
``data:`` URIs), so the file opens offline and fetches nothing. Every figure on the page comes from
the ``FileAnalysis`` record the summary JSON is written from (stream/report.py): nothing is computed
twice. Times are time codes (mm:ss, or h:mm:ss past an hour) and figures are rounded for reading.

``render_report`` makes one file's page; ``render_index`` the page that links the reports of a
batch (``analyze A.mp4 B.mp4 …``), with the files that failed.
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from affectstream._version import __version__
from affectstream.engine.labels import NEUTRAL, NO_FACE
from affectstream.stream.overlay import bar_colour_hex
from affectstream.stream.report import FaceSummary, FileAnalysis, Moment, Segment
from affectstream.stream.sources import DamageKind, DamageSpan
from affectstream.stream.thumbnails import Thumbnail

MAX_LANES = 12  # face tracks drawn as lanes (the longest seen); the others are counted
MAX_EVENT_ROWS = 300  # events listed; the rest are counted
THUMBNAILS_PER_LABEL = 3  # default; --thumbnails
MIN_MOMENT_SCORE = 0.05  # a top moment scored lower is no moment of that emotion: not pictured or named
NO_FACE_COLOUR = "#e4e6ea"
CHART_WIDTH = 960
PLOT_LEFT = 44
PLOT_RIGHT = 12

_STATE_WORDS = {"ok": "a face read clearly", "no_face": "no face in view", "uncertain": "a face too unclear to read"}
_KIND_WORDS = {
    "onset": "began", "offset": "ended", "peak": "peaked", "shift": "became dominant",
    "face_appeared": "face appeared", "face_lost": "face lost", "stream_started": "reading started",
    "stream_ended": "reading ended", "stream_error": "reading failed", "frames_dropped": "frames dropped",
    "stream_reconnecting": "reconnecting",
}
_EPISODE_KINDS = ("onset", "peak", "offset", "shift")
_DAMAGE_WORDS = {
    DamageKind.DECODE_ERROR: ("damaged packet", "damaged packets", "skipped: the decoder resumed at the next keyframe"),
    DamageKind.CORRUPT_FRAME: ("frame decoded with errors", "frames decoded with errors",
                               "analysed as decoded (the decoder concealed the damage)"),
    DamageKind.MISSING_PTS: ("frame without a timestamp", "frames without a timestamp",
                             "timed one frame after the one before"),
    DamageKind.REPAIRED_PTS: ("timestamp that did not advance", "timestamps that did not advance",
                              "respaced at the file's frame rate"),
    DamageKind.TRUNCATED: ("frame not read", "frames not read", "reading ended here, before the end the file states"),
}


def time_code(seconds: float | None) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour on), rounded to the second."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def percent(share: float) -> str:
    """A share of time as a person reads it: whole percents, and "<1 %" rather than "0 %" when not nothing."""
    if share <= 0:
        return "0 %"
    if share < 0.005:
        return "<1 %"
    return f"{share * 100:.0f} %"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


@dataclass(frozen=True)
class _Axis:
    """Media time onto pixels."""

    start: float
    end: float
    left: float = PLOT_LEFT
    right: float = CHART_WIDTH - PLOT_RIGHT

    def x(self, ts: float) -> float:
        span = self.end - self.start
        return self.left + (0.0 if span <= 0 else (ts - self.start) / span * (self.right - self.left))

    def ticks(self, count: int = 8) -> list[float]:
        span = self.end - self.start
        if span <= 0:
            return [self.start]
        step = _nice_step(span / count)
        first = math.ceil(self.start / step) * step
        return [first + i * step for i in range(int((self.end - first) / step) + 1)]


def _nice_step(raw: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if step >= raw:
            return float(step)
    return float(math.ceil(raw / 3600) * 3600)


class _Page:
    def __init__(self, analysis: FileAnalysis, thumbnails: Mapping[float, Thumbnail], per_label: int) -> None:
        self.a = analysis
        self.s = analysis.summary
        self.thumbnails = thumbnails
        self.per_label = per_label
        self.colours = {label: bar_colour_hex(i) for i, label in enumerate(self.s.labels)} | {NO_FACE: NO_FACE_COLOUR}
        end = self.s.end if self.s.end is not None else 0.0
        if self.s.segments:
            end = max(end, self.s.segments[-1].end)
        self.axis = _Axis(self.s.start or 0.0, end)

    # -- the words ---------------------------------------------------------------------------------

    def emotions(self) -> list[str]:
        """The labels that are emotions (neutral is a state of the face, not an emotion)."""
        return [label for label in self.s.labels if label != NEUTRAL]

    def strongest(self, count: int = 3) -> list[tuple[str, Moment]]:
        best = [(label, moments[0]) for label, moments in self.s.top_moments.items()
                if label != NEUTRAL and moments and moments[0].score >= MIN_MOMENT_SCORE]
        return sorted(best, key=lambda item: -item[1].score)[:count]

    def summary_text(self) -> list[str]:
        s, a = self.s, self.a
        if not s.frames:
            return [f"Nothing of {_e(a.path)} could be analysed ({_e(a.detail or a.outcome or 'no frames')})."]
        rate = a.settings.rate_hz
        sampling = f"{rate:g} frames per second" if rate else "every frame"
        paragraphs = [f"This {time_code(s.duration_s)} video was analysed at {sampling} ({s.frames} frames)."
                      + (" The analysis was stopped before the end: what follows is the part that was read."
                         if a.interrupted else "")]
        ranked = sorted(((label, share) for label, share in s.share.items() if label != NO_FACE and share > 0),
                        key=lambda item: -item[1])
        emotions = [(label, share) for label, share in ranked if label != NEUTRAL][:3]
        if emotions:
            listed = _and([f"{_e(label)} ({percent(share)} of the time)" for label, share in emotions])
            text = f"The dominant emotion{'s were' if len(emotions) > 1 else ' was'} {listed}"
            neutral = s.share.get(NEUTRAL)
            if neutral:
                text += f"; the face was neutral {percent(neutral)} of the time"
            paragraphs.append(text + ".")
        if s.states is not None:
            usable = s.states.get("ok", 0.0)
            unusable = s.states.get("no_face", 0.0) + s.states.get("uncertain", 0.0)
            paragraphs.append(
                f"A face could be read for {percent(usable)} of the video; for {percent(unusable)} there was no "
                f"usable face ({_STATE_WORDS['no_face']} {percent(s.states.get('no_face', 0.0))}, "
                f"{_STATE_WORDS['uncertain']} {percent(s.states.get('uncertain', 0.0))}).")
        strongest = self.strongest()
        if strongest:
            listed = _and([f"{_e(label)} at {time_code(m.ts)} (score {m.score:.2f})" for label, m in strongest])
            paragraphs.append(f"The strongest moments: {listed}.")
        mean = s.sentiment.mean
        tone = ("clearly positive" if mean >= 0.3 else "mildly positive" if mean >= 0.1 else
                "clearly negative" if mean <= -0.3 else "mildly negative" if mean <= -0.1 else "about neutral")
        paragraphs.append(f"The sentiment was {tone} on average ({mean:+.2f} on a scale from −1 to +1)."
                          .replace("(-", "(−"))
        if a.damage is not None and a.damage.outcome is not None:
            paragraphs.append(f"The file is damaged: {_e(self.damage_line())} (see “Damage” below).")
        if "tiny-random" in str(a.model.get("backbone", "")):
            paragraphs.append("Note: the model is tiny-random, a randomly initialised test model: its scores "
                              "mean nothing.")
        return paragraphs

    def damage_line(self) -> str:
        d = self.a.damage
        if d is None:
            return self.a.detail
        if d.truncated and d.last_pts is not None and d.expected_duration is not None:
            return f"it stops at {time_code(d.last_pts)} of the {time_code(d.expected_duration)} it states"
        return self.a.detail

    # -- the page ----------------------------------------------------------------------------------

    def render(self) -> str:
        s = self.s
        title = f"Emotions in {_display_name(self.a.path)}"
        body = [f"<header><h1>{_e(title)}</h1><p class='meta'>{_e(self.a.path)} · {time_code(s.duration_s)} of "
                f"video · analysed {time.strftime('%Y-%m-%d %H:%M', time.localtime())} · affectstream "
                f"{_e(__version__)}</p></header>",
                "<section id='summary'><h2>Summary</h2>"
                + "".join(f"<p>{p}</p>" for p in self.summary_text()) + self.share_table() + "</section>"]
        if s.frames:
            body += [self.timeline_section(), self.arc_section(), self.moments_section()]
        body += [self.events_section(), self.quality_section(), self.damage_section(), self.used_section()]
        return _document(title, "\n".join(body))

    def share_table(self) -> str:
        rows = []
        for label in [*self.s.labels, NO_FACE]:
            if label not in self.s.share:
                continue
            share = self.s.share[label]
            mean = self.s.mean.get(label)
            rows.append(f"<tr><td><span class='dot' style='background:{self.colours[label]}'></span>"
                        f"{_e(label.replace('_', ' '))}</td><td class='num'>{percent(share)}</td>"
                        f"<td><div class='bar'><div style='width:{share * 100:.1f}%;background:"
                        f"{self.colours[label]}'></div></div></td>"
                        f"<td class='num'>{'' if mean is None else f'{mean:.2f}'}</td></tr>")
        return ("<table class='shares'><thead><tr><th>label</th><th>share of time dominant</th><th></th>"
                "<th>mean score</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")

    def timeline_section(self) -> str:
        s, axis = self.s, self.axis
        height, top, bottom = 240, 10, 210
        y = lambda v: bottom - v * (bottom - top)  # noqa: E731
        parts = [self._grid(height, bottom, top, [(0.0, "0"), (0.5, "0.5"), (1.0, "1")], y)]
        for label in s.labels:
            points = " ".join(f"{axis.x(p.ts):.1f},{y(p.scores.get(label, 0.0)):.1f}" for p in s.timeline)
            parts.append(f"<polyline class='series' data-label='{_e(label)}' points='{points}' fill='none' "
                         f"stroke='{self.colours[label]}' stroke-width='1.6'><title>{_e(label)}</title></polyline>")
        chart = _svg("timeline", height, "".join(parts), "the scores of each emotion over time")
        s_height, s_top, s_bottom = 130, 10, 100
        sy = lambda v: s_bottom - (v + 1) / 2 * (s_bottom - s_top)  # noqa: E731
        line = " ".join(f"{axis.x(p.ts):.1f},{sy(p.sentiment):.1f}" for p in s.timeline)
        sentiment = _svg("sentiment", s_height,
                         self._grid(s_height, s_bottom, s_top, [(-1.0, "−1"), (0.0, "0"), (1.0, "+1")], sy)
                         + f"<polyline class='series' points='{line}' fill='none' stroke='#333' stroke-width='1.6'>"
                         "<title>sentiment</title></polyline>", "the sentiment over time, from −1 to +1")
        legend = "".join(f"<span class='key'><span class='dot' style='background:{self.colours[label]}'></span>"
                         f"{_e(label)}</span>" for label in s.labels)
        return ("<section id='timeline'><h2>Timeline</h2><p class='legend'>" + legend + "</p>" + chart
                + "<h3>Sentiment</h3>" + sentiment + self.lanes() + "</section>")

    def _grid(self, height: int, bottom: float, top: float, levels: list[tuple[float, str]], y: Any) -> str:
        axis = self.axis
        out = []
        for value, text in levels:
            out.append(f"<line x1='{axis.left}' x2='{axis.right}' y1='{y(value):.1f}' y2='{y(value):.1f}' "
                       f"class='grid'/><text x='{axis.left - 6}' y='{y(value) + 4:.1f}' text-anchor='end'>{text}</text>")
        for tick in axis.ticks():
            x = axis.x(tick)
            out.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{top}' y2='{bottom}' class='grid'/>"
                       f"<text x='{x:.1f}' y='{bottom + 16}' text-anchor='middle'>{time_code(tick)}</text>")
        return "".join(out)

    def _band(self, segments: Sequence[Segment], y: float, h: float, kind: str) -> str:
        axis = self.axis
        out = []
        for segment in segments:
            x0, x1 = axis.x(segment.start), axis.x(segment.end)
            out.append(f"<rect class='{kind}' data-label='{_e(segment.label)}' x='{x0:.1f}' y='{y:.1f}' "
                       f"width='{max(0.5, x1 - x0):.1f}' height='{h}' fill='{self.colours.get(segment.label, '#999')}'>"
                       f"<title>{_e(segment.label)} {time_code(segment.start)}–{time_code(segment.end)}</title></rect>")
        return "".join(out)

    def lanes(self) -> str:
        """The stream's arc on top, then one lane per face track (the longest seen)."""
        faces: tuple[FaceSummary, ...] = self.s.faces or ()
        shown = sorted(sorted(faces, key=lambda f: -f.seen_s)[:MAX_LANES], key=lambda f: (f.first, f.id))
        row, top = 22, 8
        parts = [f"<text x='{PLOT_LEFT - 6}' y='{top + 14}' text-anchor='end'>video</text>"
                 + self._band(self.s.segments, top, 16, "arc")]
        for i, face in enumerate(shown, start=1):
            y = top + i * row
            parts.append(f"<g class='lane' data-face='{face.id}'><text x='{PLOT_LEFT - 6}' y='{y + 14}' "
                         f"text-anchor='end'>#{face.id}</text>{self._band(face.segments, y, 16, 'face')}</g>")
        bottom = top + (len(shown) + 1) * row
        for tick in self.axis.ticks():
            parts.append(f"<text x='{self.axis.x(tick):.1f}' y='{bottom + 10}' text-anchor='middle'>"
                         f"{time_code(tick)}</text>")
        chart = _svg("lanes", bottom + 16, "".join(parts), "the dominant label over time, for the video and each face")
        note = ""
        if len(faces) > len(shown):
            rest = sorted(faces, key=lambda f: -f.seen_s)[MAX_LANES:]
            note = (f"<p class='note'>{len(rest)} shorter face tracks ({time_code(sum(f.seen_s for f in rest))} "
                    "in all) are not drawn; the summary JSON lists every one.</p>")
        heading = "Faces" if faces else "Dominant emotion"
        return f"<h3>{heading}</h3>" + chart + note

    def arc_section(self) -> str:
        items = "".join(
            f"<li><span class='dot' style='background:{self.colours.get(seg.label, '#999')}'></span>"
            f"<span class='tc'>{time_code(seg.start)}–{time_code(seg.end)}</span> {_e(seg.label.replace('_', ' '))}</li>"
            for seg in self.s.segments)
        return ("<section id='arc'><h2>The emotional arc</h2><p class='note'>The dominant label, in order "
                "(short flickers smoothed out).</p><ol class='arc'>" + items + "</ol></section>")

    def moments_section(self) -> str:
        cards = []
        for label in self.emotions():
            for moment in self.s.top_moments.get(label, ())[: self.per_label]:
                if moment.score < MIN_MOMENT_SCORE:
                    continue
                shot = self.thumbnails.get(moment.ts)
                pictures = ""
                if shot is not None:
                    pictures += f"<img class='frame' alt='frame at {time_code(moment.ts)}' src='{_data_uri(shot.frame_jpeg)}'>"
                    if shot.face_jpeg is not None:
                        pictures += f"<img class='face' alt='face at {time_code(moment.ts)}' src='{_data_uri(shot.face_jpeg)}'>"
                face = f" · face #{moment.face}" if moment.face is not None else ""
                cards.append(f"<figure class='moment' data-label='{_e(label)}'>{pictures}<figcaption>"
                             f"<span class='dot' style='background:{self.colours[label]}'></span><b>{_e(label)}</b> "
                             f"{moment.score:.2f} at <span class='tc'>{time_code(moment.ts)}</span>{face}"
                             "</figcaption></figure>")
        if not cards:
            return (f"<section id='moments'><h2>Top moments</h2><p>No emotion scored {MIN_MOMENT_SCORE:g} or more."
                    "</p></section>")
        source = "the frame and the face it was read from" if self.s.has_faces else "its frame"
        return ("<section id='moments'><h2>Top moments</h2><p class='note'>The highest scores of each emotion "
                f"(at least 5 s apart), with {source}.</p><div class='moments'>"
                + "".join(cards) + "</div></section>")

    def events_section(self) -> str:
        counts = ", ".join(f"{_e(_KIND_WORDS.get(kind, kind))}: {count}" for kind, count in self.s.events.items())
        onsets = ", ".join(f"{_e(label)} {count}" for label, count in self.s.onsets.items() if count)
        rows = []
        listed = [note for note in self.s.event_list if note.kind.value in _EPISODE_KINDS]
        for note in listed[:MAX_EVENT_ROWS]:
            face = f"#{note.face}" if note.face is not None else "video"
            value = "" if note.value is None else f"{note.value:.2f}"
            rows.append(f"<tr><td class='tc'>{time_code(note.ts)}</td><td>{_e(note.label or '')}</td>"
                        f"<td>{_e(_KIND_WORDS.get(note.kind.value, note.kind.value))}</td><td>{face}</td>"
                        f"<td class='num'>{value}</td></tr>")
        more = len(listed) - len(rows) + self.s.events_left_out
        table = ("<table class='events'><thead><tr><th>time</th><th>emotion</th><th>what</th><th>whose</th>"
                 "<th>score</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>") if rows else \
            "<p>No emotion began, peaked or became dominant.</p>"
        return ("<section id='events'><h2>Events</h2><p>" + (counts or "none") + ".</p>"
                + (f"<p>Onsets per emotion: {onsets}.</p>" if onsets else "") + table
                + (f"<p class='note'>{more} more events are in the summary JSON (and with --out).</p>" if more > 0 else "")
                + "</section>")

    def quality_section(self) -> str:
        s = self.s
        if s.states is None:
            return ("<section id='abstention'><h2>Abstention</h2><p>Without the face stage every frame gets a "
                    "score: there is no abstention.</p></section>")
        rows = "".join(f"<tr><td>{_e(_STATE_WORDS.get(state, state))} (<code>{_e(state)}</code>)</td>"
                       f"<td class='num'>{percent(share)}</td></tr>" for state, share in s.states.items())
        return ("<section id='abstention'><h2>Abstention</h2><p>How much of the video had a face the model could "
                "read (<code>uncertain</code>: its most likely label was under "
                f"{self.a.settings.uncertain_below or 0:.2f}).</p><table>" + rows + "</table></section>")

    def damage_section(self) -> str:
        a, d = self.a, self.a.damage
        if a.outcome == "unknown" or d is None:
            return f"<section id='damage'><h2>Damage</h2><p>{_e(a.detail or 'The end of the file was not reached.')}</p></section>"
        items = [self._span_item(span, any(other.start < span.start for other in d.spans if other is not span))
                 for span in d.spans]
        if a.interrupted and d.last_pts is not None:
            items.append(f"<li><span class='tc'>{time_code(d.last_pts)}</span>: the analysis was stopped here "
                         "(Ctrl-C or SIGTERM); the rest of the file was not read.</li>")
        stated = f" of {time_code(d.expected_duration)} stated" if d.expected_duration is not None else ""
        reach = (f"{d.frames} frames were read, to {time_code(d.last_pts)}{stated}"
                 + (f" ({d.expected_frames} frames stated)" if d.expected_frames is not None else "") + ".")
        if not items:
            return (f"<section id='damage'><h2>Damage</h2><p class='ok'>No damage found: the file was read to "
                    f"its end and nothing was skipped. {reach}</p></section>")
        return (f"<section id='damage'><h2>Damage</h2><p class='bad'>Where the file is damaged, and what was "
                f"skipped. {reach}</p><ul class='damage'>" + "".join(items) + "</ul>"
                f"<p class='note'>Reader: {_e(a.detail)}</p></section>")

    def _span_item(self, span: DamageSpan, after_damage: bool) -> str:
        one, many, what = _DAMAGE_WORDS[span.kind]
        if span.kind is DamageKind.TRUNCATED and after_damage:
            what += " (the frames it lacks may have been lost anywhere after the damage above)"
        where = (time_code(span.start) if time_code(span.start) == time_code(span.end)
                 else f"{time_code(span.start)}–{time_code(span.end)}")
        count = f"{span.count} {one if span.count == 1 else many}" if span.count else many
        return f"<li data-kind='{span.kind.value}'><span class='tc'>{where}</span>: {count}; {_e(what)}.</li>"

    def used_section(self) -> str:
        a, model = self.a, self.a.model
        faces = model.get("faces") or {}
        rate = a.settings.rate_hz
        rows = [
            ("face detector", faces.get("detector") if faces else "none (face stage off)"),
            ("expression model", faces.get("expression") if faces else None),
            ("whole-frame model", model.get("backbone") or "none"),
            ("temporal head", model.get("head")),
            ("backend", " ".join(str(v) for v in (model.get("backend"), model.get("precision")) if v) or None),
            ("sampling rate", f"{rate:g} frames per second of video" if rate else "every frame"),
            ("event thresholds", f"onset {a.settings.onset:g}, offset {a.settings.offset:g}"),
            ("summary windows", ", ".join(f"{w:g} s" for w in a.settings.windows_s)),
            ("processing", f"{a.seconds:.1f} s" + (" (stopped before the end)" if a.interrupted else "")),
            ("affectstream", __version__),
        ]
        body = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in rows if value)
        return f"<section id='used'><h2>What was used</h2><table class='used'>{body}</table></section>"


def _display_name(path: str) -> str:
    """A file's name, or a URL's last path part (its query left out)."""
    from urllib.parse import urlsplit

    name = urlsplit(path).path if "://" in path else path
    return name.rstrip("/").rsplit("/", 1)[-1] or path


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _svg(kind: str, height: float, content: str, title: str) -> str:
    return (f"<svg class='chart {kind}' viewBox='0 0 {CHART_WIDTH} {height:.0f}' role='img'>"
            f"<title>{_e(title)}</title>{content}</svg>")


_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:1000px;margin:0 auto;padding:20px 24px 48px;background:#fff}
h1{font-size:24px;margin:8px 0 2px;word-break:break-all}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #e2e5ea}
h3{font-size:15px;margin:18px 0 4px}.meta,.note{color:#5b6475;font-size:13px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
.num{text-align:right;font-variant-numeric:tabular-nums}.tc{font-variant-numeric:tabular-nums;color:#374151}
.dot{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:6px;vertical-align:baseline}
.bar{width:220px;height:10px;background:#eef0f3;border-radius:5px;overflow:hidden}.bar div{height:100%}
.key{margin-right:14px;white-space:nowrap}svg.chart{width:100%;height:auto;display:block}
svg text{font-size:11px;fill:#5b6475}svg line.grid{stroke:#e5e7eb;stroke-width:1}
ol.arc{columns:3;font-size:14px;padding-left:22px}ul.damage li{margin:2px 0}
.moments{display:flex;flex-wrap:wrap;gap:12px}figure.moment{margin:0;width:320px;border:1px solid #e2e5ea;border-radius:6px;overflow:hidden;background:#fafbfc}
figure.moment img.frame{display:block;width:320px}figure.moment img.face{display:block;height:112px;margin:6px auto 0}
figcaption{padding:6px 8px;font-size:14px}.ok{color:#166534}.bad{color:#9a3412}
table.events td{font-size:14px}table.used th{font-weight:600;color:#374151}
@media print{body{background:#fff}main{padding:0}}
"""


def _document(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body><main>\n{body}\n</main></body></html>\n")


def render_report(analysis: FileAnalysis, thumbnails: Mapping[float, Thumbnail] | None = None,
                  per_label: int = THUMBNAILS_PER_LABEL) -> str:
    """One file's report page."""
    return _Page(analysis, thumbnails or {}, per_label).render()


def thumbnail_shots(analysis: FileAnalysis, per_label: int = THUMBNAILS_PER_LABEL) -> list[Moment]:
    """The moments the report pictures (each emotion's first ``per_label`` top moments above 0)."""
    return [moment for label, moments in analysis.summary.top_moments.items() if label != NEUTRAL
            for moment in moments[:per_label] if moment.score >= MIN_MOMENT_SCORE]


@dataclass(frozen=True)
class IndexEntry:
    """One input of a batch, as the index page lists it."""

    path: str
    status: str  # "ok", "damaged", "failed", "interrupted"
    detail: str = ""
    report: str | None = None  # the report's address relative to the index
    summary: str | None = None  # the summary JSON's, likewise
    duration_s: float | None = None
    dominant: str | None = None
    share: float | None = None  # of that dominant label


def render_index(entries: Sequence[IndexEntry], title: str = "Emotion reports") -> str:
    """The page that links each report of a batch; the files that failed are listed with why."""
    rows = []
    for entry in entries:
        link = f"<a href='{_e(entry.report)}'>{_e(entry.path)}</a>" if entry.report else _e(entry.path)
        json_link = f" · <a href='{_e(entry.summary)}'>JSON</a>" if entry.summary else ""
        dominant = f"{_e(entry.dominant)} ({percent(entry.share or 0.0)})" if entry.dominant else ""
        rows.append(f"<tr class='{_e(entry.status)}'><td>{link}{json_link}</td><td>{_e(entry.status)}</td>"
                    f"<td class='tc'>{time_code(entry.duration_s) if entry.duration_s is not None else ''}</td>"
                    f"<td>{dominant}</td><td>{_e(entry.detail)}</td></tr>")
    failed = [entry for entry in entries if entry.status == "failed"]
    lead = f"{len(entries) - len(failed)} of {len(entries)} files analysed" + (
        f"; {len(failed)} failed: " + ", ".join(_e(entry.path) for entry in failed) if failed else "") + "."
    body = (f"<header><h1>{_e(title)}</h1><p class='meta'>{time.strftime('%Y-%m-%d %H:%M', time.localtime())} · "
            f"affectstream {_e(__version__)}</p></header><p>{lead}</p>"
            "<table class='index'><thead><tr><th>file</th><th>status</th><th>length</th><th>dominant emotion</th>"
            "<th>detail</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return _document(title, body)

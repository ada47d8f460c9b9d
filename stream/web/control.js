// Stream control and sinks on the dashboard: add a stream, stop one (websocket add_stream /
// remove_stream, docs/protocol.md "Stream control"), and each --sink's state from server_status.
"use strict";

let send = () => false;  // set by bindControl: sends one JSON message on the dashboard's websocket

export function bindControl(sender) {
  send = sender;
  const form = document.getElementById("add-stream");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = form.elements.name.value.trim();
    const uri = form.elements.uri.value.trim();
    if (!name || !uri) return say("give the new stream a name and a source (a file, camera index or URL)", true);
    if (!send({ type: "add_stream", name, uri })) return say("not connected: try again in a moment", true);
    say(`adding ${name}…`, false);
  });
}

// A stop button on a stream's card (hidden once the stream has ended).
export function stopButton(stream) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "stop";
  button.textContent = "stop";
  button.title = `stop ${stream}: it ends with stream_ended; the other streams go on`;
  button.addEventListener("click", () => {
    if (send({ type: "remove_stream", name: stream })) say(`stopping ${stream}…`, false);
  });
  return button;
}

export function onStreamControl(message) {
  if (message.ok) {
    const done = message.action === "add_stream" ? "added" : message.action === "remove_stream" ? "stopping" : "";
    if (done) say(`${message.stream}: ${done}`, false);
    if (message.action === "add_stream") document.getElementById("add-stream").reset();
  } else {
    say(message.error || `${message.action} was refused`, true);
  }
}

export function onSinks(sinks) {
  const node = document.getElementById("sinks");
  if (!Array.isArray(sinks) || !sinks.length) { node.hidden = true; return; }
  node.hidden = false;
  const down = sinks.filter((sink) => sink.state === "down");
  node.dataset.state = down.length ? "closed" : "open";
  node.textContent = sinks.map((sink) => {
    const behind = sink.lag > 0 ? `, ${sink.lag} behind` : "";
    return `${shortName(sink.name)} ${sink.state}${behind}`;
  }).join(" · ");
  node.title = sinks.map((sink) => `${sink.name}: ${sink.state}, ${sink.delivered} delivered, ${sink.failures} failed batches`
    + (sink.error ? ` (${sink.error})` : "")).join("\n");
}

function shortName(name) {
  return name.replace(/^[a-z]+:\/\//, "").replace(/[/?].*$/, "") || name;
}

function say(text, error) {
  const node = document.getElementById("control-status");
  node.textContent = text;
  node.dataset.error = error ? "1" : "";
}

// The chat page of `elmforge serve`: plain JavaScript, no build step, nothing from a CDN.
// Streams /v1/chat/completions (server-sent events), keeps the conversation in `conversation`,
// and shows the generation speed (tokens/s) from the server's usage counts.
"use strict";

const $ = (id) => document.getElementById(id);
const conversation = [];
let modelName = null;
let controller = null;

$("api-key").value = localStorage.getItem("elmforge-api-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("elmforge-api-key", $("api-key").value);
  loadModel();
});

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    modelName = body.data[0].id;
    $("model").textContent = modelName;
  } catch (err) {
    $("model").textContent = "cannot list models: " + err.message;
  }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

// Yields the JSON payload of each `data:` event of a server-sent event stream.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const blocks = buffer.split(/\r?\n\r?\n/);
    buffer = blocks.pop();
    for (const block of blocks) {
      const data = block.split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue;  // comments (": ping") carry no data
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function send(text) {
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(
    conversation, [{ role: "user", content: text }]);
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  $("send").disabled = true;
  $("stop").disabled = false;
  $("stats").textContent = "waiting…";
  controller = new AbortController();
  const started = performance.now();
  let firstAt = null, pieces = 0, usage = null, answer = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      signal: controller.signal,
      body: JSON.stringify({
        model: modelName || undefined,
        messages,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: Number($("max-tokens").value) || undefined,
        temperature: Number($("temperature").value),
      }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : response.statusText);
    }
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = (choice.delta && choice.delta.content) || "";
        if (!piece) continue;
        if (firstAt === null) firstAt = performance.now();
        pieces += 1;
        answer += piece;
        bubble.textContent = answer;
        bubble.scrollIntoView({ block: "end" });
        const seconds = (performance.now() - firstAt) / 1000;
        if (seconds > 0) $("stats").textContent = `${(pieces / seconds).toFixed(1)} tokens/s`;
      }
    }
    conversation.push({ role: "user", content: text }, { role: "assistant", content: answer });
    const end = performance.now();
    const tokens = usage ? usage.completion_tokens : pieces;
    const seconds = (end - (firstAt || started)) / 1000;
    const ttft = ((firstAt || end) - started) / 1000;
    $("stats").textContent = `${tokens} tokens, ${(tokens / Math.max(seconds, 1e-3)).toFixed(1)} tokens/s` +
      `, first token after ${ttft.toFixed(2)} s`;
  } catch (err) {
    if (err.name === "AbortError") {
      conversation.push({ role: "user", content: text }, { role: "assistant", content: answer });
      $("stats").textContent = "stopped";
    } else {
      bubble.classList.add("error");
      bubble.textContent = "error: " + err.message;
      $("stats").textContent = "";
    }
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value;
  if (!text.trim() || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("form").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  conversation.length = 0;
  $("messages").replaceChildren();
  $("stats").textContent = "";
});

loadModel();

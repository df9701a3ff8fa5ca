// The playground: pick a model, stream a continuation token by token, see what the model thought;
// chat with it; look inside it. Plain JavaScript, no build step, nothing loaded from elsewhere: the
// page is this file, index.html and style.css.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  models: [],
  controller: null,   // the AbortController of the running generation (Stop aborts it)
  promptIds: [],      // the ids the current text started from
  promptLabels: [],
  tokens: [],         // generated: {id, label, prob, top}
  json: false,
  cardTimer: null,
};

function pct(p) {
  if (p >= 0.995) return "100%";
  if (p >= 0.1) return (p * 100).toFixed(0) + "%";
  if (p >= 0.001) return (p * 100).toFixed(1) + "%";
  return p > 0 ? "<0.1%" : "0%";
}

// The deepest tint: the ink keeps a contrast of at least 4.5:1 on it (WCAG AA); at 0.85 with white
// text, tokens of middling probability were dark on dark.
const TINT_MAX = 0.5;

function tint(prob) {
  return Math.max(0.04, Math.min(1, prob) * TINT_MAX);
}

function shown(label) {
  // A line break needs something to hover on: a mark, then the break itself (outside the button)
  return label.replace(/\n/g, "\u21b5");
}

const KEY_STORE = "repytilian-api-key";

// A server started with --api-key answers 401 without it: ask once, keep it for this tab.
async function api(url, options = {}) {
  for (let asked = 0; ; asked++) {
    const key = sessionStorage.getItem(KEY_STORE);
    const headers = { ...(options.headers || {}) };
    if (key) headers["Authorization"] = `Bearer ${key}`;
    const response = await fetch(url, { ...options, headers });
    if (response.status !== 401 || asked >= 2) return response;
    const given = window.prompt("This server needs its API key (repytilian serve --api-key):");
    if (!given) return response;
    sessionStorage.setItem(KEY_STORE, given.trim());
  }
}

async function loadModels() {
  const response = await api("/api/models");
  const data = await response.json();
  state.models = data.models || [];
  const select = $("model");
  select.innerHTML = "";
  for (const m of state.models) {
    const option = document.createElement("option");
    option.value = m.id;
    const size = m.parameters ? ` · ${(m.parameters / 1e6).toFixed(2)}M params` : "";
    const loss = m.val_loss != null ? ` · val loss ${m.val_loss.toFixed(3)}` : "";
    const bpb = m.bits_per_byte != null ? ` · ${m.bits_per_byte.toFixed(3)} bits/byte` : "";
    option.textContent = `${m.id} (${m.tokenizer}${size}${loss}${bpb})`;
    select.appendChild(option);
  }
  if (!state.models.length) {
    $("model-info").textContent = "No models here yet: train one with training.py -m models/NAME.";
  }
  describeModel();
}

function currentModel() {
  return state.models.find((m) => m.id === $("model").value);
}

function describeModel() {
  const m = currentModel();
  if (!m) return;
  const parts = [`tokenizer ${m.tokenizer}`];
  if (m.parameters) parts.push(`${m.parameters.toLocaleString()} parameters`);
  if (m.steps) parts.push(`${m.steps.toLocaleString()} steps`);
  if (m.val_loss != null) parts.push(`val loss ${m.val_loss.toFixed(4)}`);
  if (m.training) parts.push("training now");
  $("model-info").textContent = parts.join(" · ");
  if (m.tokenizer === "json" && $("prompt").value === "ROMEO:") $("prompt").value = "";
  if (!$("view-card").hidden) loadCard();
  if (!$("view-inside").hidden) fillInsideModels(state.models, m.id);
}

// --- generation -----------------------------------------------------------------------------

function settings() {
  const number = (id) => ($(id).value === "" ? null : Number($(id).value));
  return {
    model: $("model").value,
    temperature: number("temperature"),
    top_k: number("top_k") || 0,
    top_p: number("top_p"),
    max_tokens: number("max_tokens"),
    seed: number("seed"),
  };
}

// A streamed answer's server-sent events, each `data:` line's JSON to `onEvent` as it comes (the
// chat API's closing "[DONE]" left out); an error status is thrown with the server's message.
async function eachEvent(response, onEvent) {
  if (!response.ok) {
    const error = await response.json().catch(() => ({}));
    throw new Error((error.error && error.error.message) || `HTTP ${response.status}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (line.startsWith("data: ") && line !== "data: [DONE]") onEvent(JSON.parse(line.slice(6)));
    }
  }
}

async function generate(body, keepTokens) {
  stopGeneration();
  closeAlternatives();
  const controller = new AbortController();
  state.controller = controller;
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("stats").textContent = "generating…";
  if (!keepTokens) {  // nothing of the previous text stays on screen, should this request fail
    state.tokens = [];
    $("output").innerHTML = "";
  }
  try {
    const response = await api("/api/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    await eachEvent(response, (event) => handle(event, keepTokens));
  } catch (error) {
    if (error.name === "AbortError") {
      $("stats").textContent = `stopped after ${state.tokens.length} tokens`;
    } else {
      showError(error.message, keepTokens);
    }
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      $("generate").disabled = false;
      $("stop").disabled = true;
    }
  }
}

function handle(event, keepTokens) {
  if (event.type === "start") {
    state.json = event.json;
    if (!keepTokens) {
      state.promptIds = event.prompt_ids;
      state.promptLabels = event.prompt_labels;
    }
    render();
  } else if (event.type === "token") {
    state.tokens.push(event);
    appendToken(event, state.tokens.length - 1);
  } else if (event.type === "end") {
    const why = event.finish_reason === "stop" ? "the model ended it" : "length reached";
    $("stats").textContent = `${state.tokens.length} tokens · ${event.tokens_per_second} tokens/s · ${why}`;
  } else if (event.type === "error") {
    showError(event.message, keepTokens);
  }
}

function showError(message, keepTokens) {
  // What was generated before the error belongs to this request only when it continues a text
  if (!keepTokens && !state.tokens.length) $("output").innerHTML = "";
  $("stats").textContent = `error: ${message}`;
}

function render() {
  const out = $("output");
  out.innerHTML = "";
  out.classList.toggle("json", state.json);
  if (state.json) {
    const list = document.createElement("ol");
    list.id = "token-list";
    for (const label of state.promptLabels) {
      const item = document.createElement("li");
      item.className = "prompt";
      item.textContent = label;
      list.appendChild(item);
    }
    out.appendChild(list);
  } else {
    const prompt = document.createElement("span");
    prompt.className = "prompt";
    prompt.textContent = $("prompt").dataset.shownPrompt || "";
    out.appendChild(prompt);
  }
  state.tokens.forEach((t, i) => appendToken(t, i));
}

function appendToken(token, index) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "tok";
  button.dataset.index = String(index);
  button.textContent = state.json ? token.label : shown(token.label);
  button.style.setProperty("--p", String(tint(token.prob)));
  if (token.picked) button.classList.add("picked");
  button.setAttribute("aria-label", `${JSON.stringify(token.label)}, probability ${pct(token.prob)}`);
  button.addEventListener("focus", () => openAlternatives(index, button));
  button.addEventListener("click", () => openAlternatives(index, button, true));
  if (state.json) {
    const item = document.createElement("li");
    item.appendChild(button);
    $("token-list").appendChild(item);
  } else {
    $("output").appendChild(button);
    const breaks = (token.label.match(/\n/g) || []).length;
    if (breaks) $("output").appendChild(document.createTextNode("\n".repeat(breaks)));
  }
}

// --- the alternatives: choose your own path --------------------------------------------------

let pinned = false;
let anchorButton = null;
let closeTimer = null;

// Hover follows the pointer's own movements (pointermove with new coordinates), never mouseenter:
// a token streamed in under a resting pointer gets a mouseenter too, and opened the popup by itself.
let lastPointer = "";

function followPointer(event) {
  if (event.pointerType && event.pointerType !== "mouse") return;  // touch: tap (click) opens
  const where = `${event.clientX},${event.clientY}`;
  if (where === lastPointer) return;
  lastPointer = where;
  const token = event.target.closest ? event.target.closest("#output .tok") : null;
  if (token) {
    if (token === anchorButton) clearTimeout(closeTimer);
    else openAlternatives(Number(token.dataset.index), token);
  } else if (!event.target.closest || !event.target.closest("#alternatives")) {
    closeSoon();
  }
}

function closeSoon() {
  // Unless the pointer reaches the popup (or another token) first: time to cross the gap
  if (pinned) return;
  clearTimeout(closeTimer);
  closeTimer = setTimeout(() => {
    if (!pinned && !$("alternatives").matches(":hover")) closeAlternatives();
  }, 250);
}

function openAlternatives(index, anchor, pin) {
  if (pinned && !pin) return;
  clearTimeout(closeTimer);
  pinned = Boolean(pin);
  if (anchorButton) {
    anchorButton.classList.remove("open");
    anchorButton.removeAttribute("aria-expanded");
  }
  anchorButton = anchor;
  anchor.classList.add("open");  // which token the popup belongs to
  anchor.setAttribute("aria-expanded", "true");
  const token = state.tokens[index];
  const box = $("alternatives");
  box.innerHTML = "";
  const title = document.createElement("h2");
  title.textContent = `token ${index + 1}: the model's 10 likeliest here`;
  box.appendChild(title);
  for (const alt of token.top) {
    const choice = document.createElement("button");
    choice.type = "button";
    if (alt.id === token.id) choice.classList.add("chosen");
    const label = document.createElement("span");
    label.textContent = JSON.stringify(alt.label);
    const p = document.createElement("span");
    p.textContent = pct(alt.prob);
    choice.append(label, p);
    choice.style.setProperty("--w", `${Math.round(alt.prob * 100)}%`);
    choice.setAttribute("aria-label", `continue with ${JSON.stringify(alt.label)} (${pct(alt.prob)})`);
    choice.addEventListener("click", () => continueWith(index, alt));
    box.appendChild(choice);
  }
  const rect = anchor.getBoundingClientRect();
  box.hidden = false;
  const left = Math.min(window.scrollX + rect.left, window.scrollX + document.documentElement.clientWidth - box.offsetWidth - 8);
  box.style.setProperty("left", `${Math.max(4, left)}px`);
  box.style.setProperty("top", `${window.scrollY + rect.bottom + 4}px`);
  if (pin) box.querySelector("button").focus();
}

function closeAlternatives() {
  pinned = false;
  clearTimeout(closeTimer);
  if (anchorButton) {
    anchorButton.classList.remove("open");
    anchorButton.removeAttribute("aria-expanded");
    anchorButton = null;
  }
  $("alternatives").hidden = true;
}

function continueWith(index, alt) {
  closeAlternatives();
  const kept = state.tokens.slice(0, index);
  const chosen = { ...state.tokens[index], id: alt.id, label: alt.label, prob: alt.prob, picked: true };
  state.tokens = [...kept, chosen];
  render();
  const ids = [...state.promptIds, ...state.tokens.map((t) => t.id)];
  const left = Math.max(1, settings().max_tokens - state.tokens.length);
  generate({ ...settings(), prompt_ids: ids, max_tokens: left }, true);
}

function stopGeneration() {
  if (state.controller) state.controller.abort();
}

// --- the model card and the loss plot -------------------------------------------------------

async function loadCard() {
  const m = currentModel();
  if (!m) return;
  const response = await api(`/api/card?model=${encodeURIComponent(m.id)}`);
  const data = await response.json();
  if (!response.ok) {
    $("card-status").textContent = (data.error && data.error.message) || "no card";
    return;
  }
  renderMarkdown($("card"), data.card || "(this folder has no model card yet)");
  $("card-status").textContent = data.training
    ? `training now: ${data.metrics.length} evaluations so far (updates every 2 s)`
    : `${data.metrics.length} evaluations`;
  drawPlot(data.metrics);
  clearTimeout(state.cardTimer);
  if (!$("view-card").hidden) state.cardTimer = setTimeout(loadCard, data.training ? 2000 : 10000);
}

// The model card is Markdown: its headings, tables, code blocks and lists are drawn as such.
// Built node by node with textContent, never innerHTML: the card is a file's text, not page code.
function renderMarkdown(root, text) {
  root.replaceChildren();
  const lines = text.replace(/\r\n/g, "\n").split("\n");
  let i = 0;
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) root.appendChild(inline("p", paragraph.join(" ")));
    paragraph = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    if (line.startsWith("```")) {
      flush();
      const code = [];
      for (i += 1; i < lines.length && !lines[i].startsWith("```"); i += 1) code.push(lines[i]);
      const pre = document.createElement("pre");
      const c = document.createElement("code");
      c.textContent = code.join("\n");
      pre.appendChild(c);
      root.appendChild(pre);
      i += 1;
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      flush();
      root.appendChild(inline(`h${Math.min(3, heading[1].length)}`, heading[2]));
    } else if (line.trim().startsWith("|")) {
      flush();
      const rows = [];
      for (; i < lines.length && lines[i].trim().startsWith("|"); i += 1) rows.push(lines[i]);
      root.appendChild(table(rows));
      continue;
    } else if (/^\s*[-*]\s+/.test(line)) {
      flush();
      const list = document.createElement("ul");
      for (; i < lines.length && /^\s*[-*]\s+/.test(lines[i]); i += 1) {
        list.appendChild(inline("li", lines[i].replace(/^\s*[-*]\s+/, "")));
      }
      root.appendChild(list);
      continue;
    } else if (/^!\[[^\]]*\]\([^)]*\)\s*$/.test(line.trim())) {
      flush();  // the card's loss.png: the same curves are drawn above, live
    } else if (!line.trim()) {
      flush();
    } else {
      paragraph.push(line.trim());
    }
    i += 1;
  }
  flush();
}

function table(rows) {
  const cells = (row) => row.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  const t = document.createElement("table");
  const body = document.createElement("tbody");
  rows.forEach((row, n) => {
    if (/^\|?\s*:?-{3,}/.test(row.trim()) && n === 1) return;  // the header's rule
    const tr = document.createElement("tr");
    const header = n === 0 && rows.length > 1 && /^\|?\s*:?-{3,}/.test(rows[1].trim());
    const values = cells(row);
    if (header && values.every((v) => !v)) return;  // a table without a header row
    for (const value of values) tr.appendChild(inline(header ? "th" : "td", value));
    body.appendChild(tr);
  });
  t.appendChild(body);
  return t;
}

function inline(tag, text) {
  // `code` and **bold**; links show their text
  const el = document.createElement(tag);
  const parts = text.replace(/\[([^\]]*)\]\([^)]*\)/g, "$1").split(/(`[^`]*`|\*\*[^*]+\*\*)/);
  for (const part of parts) {
    if (!part) continue;
    if (part.startsWith("`") && part.endsWith("`") && part.length > 1) {
      const c = document.createElement("code");
      c.textContent = part.slice(1, -1);
      el.appendChild(c);
    } else if (part.startsWith("**") && part.endsWith("**") && part.length > 4) {
      const b = document.createElement("strong");
      b.textContent = part.slice(2, -2);
      el.appendChild(b);
    } else {
      el.appendChild(document.createTextNode(part));
    }
  }
  return el;
}

function drawPlot(metrics) {
  const canvas = $("plot");
  const g = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = 44;
  g.clearRect(0, 0, W, H);
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = "#5f6368";
  if (!metrics.length) {
    g.fillText("no evaluations yet", pad, H / 2);
    return;
  }
  const steps = metrics.map((m) => m.step);
  const losses = metrics.flatMap((m) => [m.train_loss, m.val_loss]).filter((v) => v != null);
  const x0 = Math.min(...steps), x1 = Math.max(...steps, x0 + 1);
  const y0 = Math.min(...losses), y1 = Math.max(...losses, y0 + 1e-3);
  // One frame, one mapping: the frame spans pad .. W - pad and pad .. H - pad, and so do the curves
  const X = (s) => pad + ((s - x0) / (x1 - x0)) * (W - 2 * pad);
  const Y = (v) => H - pad - ((v - y0) / (y1 - y0)) * (H - 2 * pad);
  g.strokeStyle = "#d0d4d9";
  g.lineWidth = 1;
  g.strokeRect(pad, pad, W - 2 * pad, H - 2 * pad);
  g.fillText(y1.toFixed(2), 4, pad + 4);
  g.fillText(y0.toFixed(2), 4, H - pad + 4);
  g.fillText(`step ${x0}`, pad, H - pad + 18);
  g.fillText(`${x1}`, W - pad - 30, H - pad + 18);
  const series = [["train_loss", "#2457c5", "train"], ["val_loss", "#d9480f", "val"]];
  series.forEach(([key, color, name], k) => {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    metrics.forEach((m, i) => (i ? g.lineTo : g.moveTo).call(g, X(m.step), Y(m[key])));
    g.stroke();
    g.fillStyle = color;
    g.fillText(`${name} ${metrics[metrics.length - 1][key].toFixed(4)}`, W - pad - 120, pad + 16 + 16 * k);
  });
}

// --- wiring ---------------------------------------------------------------------------------

function showTab(name) {
  for (const which of ["generate", "chat", "card", "inside"]) {
    const on = which === name;
    $(`tab-${which}`).setAttribute("aria-selected", String(on));
    $(`view-${which}`).hidden = !on;
  }
  closeAlternatives();
  if (name === "card") loadCard();
  else clearTimeout(state.cardTimer);
  if (name === "inside") fillInsideModels(state.models, $("model").value);
  if (name === "chat") describeChat();
}

document.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("prompt").dataset.shownPrompt = $("prompt").value;
    state.tokens = [];
    generate({ ...settings(), prompt: $("prompt").value }, false);
  });
  $("stop").addEventListener("click", stopGeneration);
  $("model").addEventListener("change", describeModel);
  $("tab-generate").addEventListener("click", () => showTab("generate"));
  $("tab-chat").addEventListener("click", () => showTab("chat"));
  $("tab-card").addEventListener("click", () => showTab("card"));
  $("tab-inside").addEventListener("click", () => showTab("inside"));
  document.addEventListener("pointermove", followPointer, { passive: true });
  document.documentElement.addEventListener("mouseleave", () => closeSoon());  // out of the window
  $("alternatives").addEventListener("mouseenter", () => clearTimeout(closeTimer));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeAlternatives();
  });
  document.addEventListener("click", (event) => {
    if (!event.target.closest(".tok") && !event.target.closest("#alternatives")) closeAlternatives();
  });
  loadModels();
});

// --- chat -----------------------------------------------------------------------------------
// "Chat": a conversation with the model picked above, through POST /v1/chat/completions (streamed),
// which renders it in the model's own chat format where it was fine-tuned to chat, else as a
// script. Sampling follows the Generate tab's settings.

const talk = { messages: [], controller: null };

function describeChat() {
  const m = currentModel();
  const note = $("chat-note");
  if (!m) { note.textContent = ""; return; }
  $("chat-send").disabled = !m.chat;
  note.textContent = !m.chat
    ? `${m.id} is not a chat model: its tokens are ${m.tokenizer} values, not text.`
    : m.chat_format
      ? `${m.id} was fine-tuned to chat: the conversation is put in its own chat format, and an answer ends where it ends its turn.`
      : `${m.id} learnt plain text, not conversations: the conversation is put as a script (USER: / ASSISTANT:), and an answer ends at a blank line.`;
}

function chatLine(role, text) {
  const item = document.createElement("li");
  item.className = `turn ${role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "you" : "model";
  const said = document.createElement("span");
  said.className = "said";
  said.textContent = text;
  item.append(who, said);
  $("chat-log").appendChild(item);
  return said;
}

async function sendChat(text) {
  const model = $("model").value;
  const system = $("chat-system").value.trim();
  talk.messages.push({ role: "user", content: text });
  chatLine("user", text);
  const said = chatLine("assistant", "");
  const messages = system ? [{ role: "system", content: system }, ...talk.messages] : talk.messages;
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const body = { model, messages, stream: true, temperature: number("temperature"), top_k: number("top_k"), top_p: number("top_p"),
                 max_tokens: number("max_tokens"), seed: number("seed") };
  talk.controller = new AbortController();
  $("chat-send").disabled = true;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: talk.controller.signal,
    });
    await eachEvent(response, (event) => {
      const choice = event.choices[0];
      if (choice && choice.delta && choice.delta.content) said.textContent += choice.delta.content;
    });
    talk.messages.push({ role: "assistant", content: said.textContent });
  } catch (error) {
    talk.messages.pop();  // the question stays on screen, not in what is sent next
    said.parentElement.classList.add("failed");
    said.textContent = error.name === "AbortError" ? "(stopped)" : `(error: ${error.message})`;
  } finally {
    talk.controller = null;
    describeChat();
  }
}

function resetChat() {
  if (talk.controller) talk.controller.abort();
  talk.messages = [];
  $("chat-log").replaceChildren();
}

document.addEventListener("DOMContentLoaded", () => {
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || talk.controller) return;
    $("chat-input").value = "";
    sendChat(text);
  });
  $("chat-input").addEventListener("keydown", (event) => {  // Enter sends, Shift+Enter breaks the line
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-reset").addEventListener("click", resetChat);
  $("model").addEventListener("change", () => { resetChat(); describeChat(); });
});

// --- look inside ----------------------------------------------------------------------------
// "Look inside": the views of POST /api/inspect for the model picked above. Attention (hover or
// focus a token: the others are tinted by how much it attends to each; "all heads" draws every
// layer and head as small maps), the logit lens (pick a token: the likeliest next tokens after
// each stage), surprise (each token's bits; with a second model, who is less surprised) and the
// embeddings (a scatter of the tokens on their two main axes).

const inside = { data: null, selected: null };
// The deepest red or green a token gets: the ink keeps a 4.5:1 contrast on it (red is the darker)
const TINT_DEEPEST = 0.7;

function insideControls() {
  const view = $("inside-view").value;
  for (const el of document.querySelectorAll(".for-attention")) el.hidden = view !== "attention";
  for (const el of document.querySelectorAll(".for-surprise")) el.hidden = view !== "surprise";
}

function fillInsideModels(models, current) {
  const compare = $("inside-compare");
  compare.innerHTML = '<option value="">(none)</option>';
  const add = (value, label) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    compare.appendChild(option);
  };
  for (const m of models) {
    if (!m.ready) continue;
    if (m.id !== current) add(m.id, m.id);
    // Two checkpoints of one run: the best model it serves, and its last one
    if (m.last_model) add(m.last_model, `${m.last_model} (the last model of ${m.id})`);
  }
  const model = models.find((m) => m.id === current);
  if (model && model.tokenizer === "json" && !$("inside-text").value.trim().startsWith("[")) {
    $("inside-text").value = "[1, 2, 3]";  // JSON-token models look at token lists
  }
}

function fillLayersAndHeads(layers, heads) {
  const fill = (select, n, extra, otherwise) => {
    const keep = select.value;
    select.innerHTML = extra ? `<option value="all">${extra}</option>` : "";
    for (let i = 1; i <= n; i++) select.insertAdjacentHTML("beforeend", `<option value="${i}">${i}</option>`);
    select.value = [...select.options].some((o) => o.value === keep) ? keep : otherwise;
  };
  fill($("inside-layer"), layers, null, String(layers));  // the last layer first: where the decisions are
  fill($("inside-head"), heads, "all heads", "1");
}

async function showInside() {
  const model = $("model").value;
  const view = $("inside-view").value;
  const text = $("inside-text").value;
  const body = { model, view, text, top: 5 };
  if (currentModel() && currentModel().tokenizer === "json") {
    try { body.text = JSON.parse(text); } catch (e) { /* sent as typed: the server explains */ }
  }
  if (view === "surprise" && $("inside-compare").value) body.compare = $("inside-compare").value;
  $("inside-hint").textContent = "Looking…";
  const response = await api("/api/inspect", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) {
    $("inside-hint").textContent = (data.error && data.error.message) || `error ${response.status}`;
    return;
  }
  inside.data = data;
  inside.selected = null;
  $("inside-tokens").innerHTML = "";
  $("inside-detail").innerHTML = "";
  if (data.weights_u8) data.weights = unpack(data.weights_u8, data.layers, data.heads, data.tokens.length);
  ({ attention: drawAttention, lens: drawLens, surprise: drawSurprise, embeddings: drawEmbeddings })[view](data);
}

// Every head's weights come as one byte each (value x 255), base64: [layer][head][row][column]
function unpack(base64, layers, heads, n) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const out = [];
  for (let l = 0, k = 0; l < layers; l++) {
    const layer = [];
    for (let h = 0; h < heads; h++) {
      const rows = [];
      for (let i = 0; i < n; i++, k += n) rows.push(Array.from(bytes.subarray(k, k + n), (b) => b / 255));
      layer.push(rows);
    }
    out.push(layer);
  }
  return out;
}

function tokenButtons(tokens, onPick) {
  const root = $("inside-tokens");
  root.innerHTML = "";
  tokens.forEach((label, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "tok";
    b.textContent = shown(label);
    b.dataset.index = String(i);
    b.addEventListener("mouseenter", () => onPick(i));
    b.addEventListener("focus", () => onPick(i));
    b.addEventListener("click", () => onPick(i));
    root.appendChild(b);
  });
  return [...root.children];
}

function drawAttention(data) {
  fillLayersAndHeads(data.layers, data.heads);
  const layer = Number($("inside-layer").value || data.layers) - 1;
  const head = $("inside-head").value;
  $("inside-detail").replaceChildren();  // a redraw for another head replaces the maps, never adds to them
  $("inside-hint").textContent = head === "all"
    ? "Every layer (rows) and head (columns): row t of a map is where token t looks."
    : `Layer ${layer + 1}, head ${head}: hover or focus a token to tint the tokens it attends to.`;
  if (head === "all") {
    tokenButtons(data.tokens, () => {});
    const grid = document.createElement("div");
    grid.className = "multiples";
    data.weights.forEach((heads, l) => heads.forEach((w, h) => {
      const figure = document.createElement("figure");
      figure.appendChild(heatmap(w));
      figure.insertAdjacentHTML("beforeend", `<figcaption>layer ${l + 1}, head ${h + 1}</figcaption>`);
      grid.appendChild(figure);
    }));
    $("inside-detail").appendChild(grid);
    return;
  }
  const weights = data.weights[layer][Number(head) - 1];
  const buttons = tokenButtons(data.tokens, (i) => {
    buttons.forEach((b, j) => {
      b.style.setProperty("--p", j <= i ? String(Math.min(1, weights[i][j]) * 0.8) : "0");
      b.classList.toggle("selected", j === i);
      b.title = j <= i ? `${(weights[i][j] * 100).toFixed(1)}% of token ${i + 1}'s attention` : "";
    });
  });
}

function heatmap(matrix) {
  const n = matrix.length;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = n;
  canvas.style.width = "100%";
  canvas.style.imageRendering = "pixelated";
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(n, n);
  matrix.forEach((row, i) => row.forEach((w, j) => {
    const k = 4 * (i * n + j);
    image.data[k] = 255 - 219 * w; image.data[k + 1] = 255 - 168 * w; image.data[k + 2] = 255 - 58 * w;
    image.data[k + 3] = 255;
  }));
  ctx.putImageData(image, 0, 0);
  return canvas;
}

function drawLens(data) {
  $("inside-hint").textContent = "Pick a token: the likeliest next tokens read after each stage (the last row is the model's own prediction).";
  const buttons = tokenButtons(data.tokens, (i) => {
    buttons.forEach((b, j) => b.classList.toggle("selected", j === i));
    // Built node by node: the page's policy allows no inline style attributes, only CSSOM
    const table = document.createElement("table");
    table.setAttribute("aria-label", `Logit lens after token ${i + 1}`);
    data.stages.forEach((stage, s) => {
      const row = table.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = stage;
      row.appendChild(th);
      for (const t of data.top[s][i]) {
        const cell = row.insertCell();
        cell.textContent = `${shown(t.label)} ${pct(t.prob)}`;
        cell.style.setProperty("--p", (t.prob * 0.6).toFixed(3));
      }
    });
    $("inside-detail").replaceChildren(table);
  });
  buttons[buttons.length - 1].click();
}

function drawSurprise(data) {
  const compare = data.compare;
  $("inside-hint").textContent = compare
    ? `Mean ${data.mean.toFixed(2)} bits against ${compare.mean.toFixed(2)} for ${$("inside-compare").value}: green where the second model is less surprised, red where more.`
    : `Each token's surprise (deeper red: more bits); ${data.mean.toFixed(2)} bits per token on average.`;
  const buttons = tokenButtons(data.tokens, () => {});
  buttons.forEach((b, i) => {
    if (i === 0) { b.title = "the first token: nothing to predict it from"; return; }
    const bits = data.bits[i - 1];
    if (compare) {
      const d = compare.difference[i - 1];
      b.classList.add(d < 0 ? "better" : "surprise");
      b.style.setProperty("--p", String(Math.min(1, Math.abs(d) / 4) * TINT_DEEPEST));
      b.title = `${bits.toFixed(2)} bits, then ${compare.bits[i - 1].toFixed(2)} (${d >= 0 ? "+" : ""}${d.toFixed(2)})`;
    } else {
      b.classList.add("surprise");
      b.style.setProperty("--p", String(Math.min(1, bits / 8) * TINT_DEEPEST));
      b.title = `${bits.toFixed(2)} bits`;
    }
  });
}

function drawEmbeddings(data) {
  $("inside-hint").textContent = `The token embeddings on their two main axes (${pct(data.explained[0])} and ${pct(data.explained[1])} of their variance).`;
  const canvas = document.createElement("canvas");
  canvas.className = "scatter";
  canvas.width = 720; canvas.height = 480;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "Scatter of the token embeddings on their two main axes");
  const ctx = canvas.getContext("2d");
  const xs = data.tokens.map((p) => p[0]), ys = data.tokens.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const px = (x) => 20 + (x - x0) / ((x1 - x0) || 1) * 680, py = (y) => 460 - (y - y0) / ((y1 - y0) || 1) * 440;
  ctx.font = "11px ui-monospace, monospace";
  data.tokens.slice(0, 600).forEach(([x, y], i) => {
    ctx.fillStyle = "rgba(36, 87, 197, 0.5)";
    ctx.fillRect(px(x) - 1.5, py(y) - 1.5, 3, 3);
    ctx.fillStyle = "#1d1d1f";
    ctx.fillText(shown(data.labels[i]), px(x) + 3, py(y) - 3);
  });
  $("inside-detail").appendChild(canvas);
}

document.addEventListener("DOMContentLoaded", () => {
  $("inside-view").addEventListener("change", insideControls);
  $("inside-form").addEventListener("submit", (event) => {
    event.preventDefault();
    showInside();
  });
  for (const id of ["inside-layer", "inside-head"]) {
    $(id).addEventListener("change", () => { if (inside.data && inside.data.view === "attention") drawAttention(inside.data); });
  }
  insideControls();
});

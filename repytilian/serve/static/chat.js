// "Chat": a conversation with the model picked above, through POST /v1/chat/completions (streamed),
// which renders it in the model's own chat format where it was fine-tuned to chat, else as a
// script. Sampling follows the Generate tab's settings. Uses app.js's $, api and currentModel.
"use strict";

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
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || `HTTP ${response.status}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const choice = JSON.parse(line.slice(6)).choices[0];
        if (choice && choice.delta && choice.delta.content) said.textContent += choice.delta.content;
      }
    }
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

// "Look inside": the views of POST /api/inspect for the model picked above. Attention (hover or
// focus a token: the others are tinted by how much it attends to each; "all heads" draws every
// layer and head as small maps), the logit lens (pick a token: the likeliest next tokens after
// each stage), surprise (each token's bits; with a second model, who is less surprised) and the
// embeddings (a scatter of the tokens on their two main axes). Uses app.js's $, api and shown.
"use strict";

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

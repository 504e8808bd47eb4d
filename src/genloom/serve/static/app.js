// genloom playground: streams /v1/completions (server-sent events over fetch) into one pane, or two
// side by side (heal "exact" and "none"), with the backed-off prompt bytes marked and each token
// shaded by its probability. No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
let running = [];  // AbortControllers of the requests in flight

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function loadModels() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const j = await r.json();
    if (!r.ok) throw new Error(j.error ? j.error.message : r.statusText);
    const sel = $("model");
    sel.textContent = "";
    for (const m of j.data) {
      const o = document.createElement("option");
      o.value = o.textContent = m.id;
      sel.appendChild(o);
    }
  } catch (e) {
    showError("Cannot list the models: " + e.message);
  }
}

function requestBody(heal) {
  const b = {
    model: $("model").value || undefined, prompt: $("prompt").value, heal: heal, stream: true,
    logprobs: 5, max_tokens: parseInt($("max_tokens").value, 10) || 32,
    stream_options: { include_usage: true },
  };
  if ($("strategy").value === "greedy") {
    b.temperature = 0;
  } else {
    b.temperature = parseFloat($("temperature").value);
    b.top_p = parseFloat($("top_p").value);
  }
  const seed = $("seed").value.trim();
  if (seed !== "") b.seed = parseInt(seed, 10);
  const stop = $("stop").value;
  if (stop) b.stop = stop.replace(/\\n/g, "\n").replace(/\\t/g, "\t");
  return b;
}

// One output pane: the prompt (its backed-off end marked), then the streamed tokens.
class Pane {
  constructor(title, heal) {
    this.heal = heal;
    this.el = document.createElement("article");
    this.el.className = "pane";
    this.el.dataset.heal = heal;
    const h = document.createElement("h2");
    h.textContent = title;
    this.text = document.createElement("div");
    this.text.className = "text";
    this.promptEl = document.createElement("span");
    this.promptEl.className = "prompt";
    this.out = document.createElement("span");
    this.out.className = "output";
    this.text.append(this.promptEl, this.out);
    this.meta = document.createElement("div");
    this.meta.className = "meta";
    this.el.append(h, this.text, this.meta);
    this.prompt = $("prompt").value;
    this.promptEl.textContent = this.prompt;
    this.tokens = 0;
    this.started = performance.now();
  }

  healing(info) {
    if (!info || !info.removed) {
      this.meta.dataset.backoff = "0";
      return;
    }
    const removed = info.removed;
    const cut = this.prompt.endsWith(removed) ? this.prompt.length - removed.length : this.prompt.length;
    this.promptEl.textContent = this.prompt.slice(0, cut);
    const mark = document.createElement("mark");
    mark.className = "backoff";
    mark.textContent = this.prompt.slice(cut);
    mark.title = `backed off ${info.removed_bytes} bytes: the model writes them again`
      + (info.tv_bound != null ? ` (total-variation bound ${info.tv_bound.toExponential(2)})` : "");
    this.promptEl.appendChild(mark);
    this.meta.dataset.backoff = String(info.removed_bytes);
  }

  add(text, logprobs) {
    if (!text && !logprobs) return;
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = text;
    if (logprobs && logprobs.tokens.length) {
      const lps = logprobs.token_logprobs;
      const p = Math.exp(lps.reduce((a, b) => a + b, 0) / lps.length);
      span.dataset.p = p.toFixed(4);
      span.style.backgroundColor = `rgba(255, 140, 0, ${(0.6 * (1 - p)).toFixed(3)})`;
      const lines = logprobs.tokens.map((t, i) => {
        const alts = Object.entries(logprobs.top_logprobs[i] || {})
          .map(([tok, lp]) => `   ${JSON.stringify(tok)} ${lp.toFixed(3)}`).join("\n");
        return `${JSON.stringify(t)}  logprob ${lps[i].toFixed(3)}  p ${Math.exp(lps[i]).toFixed(3)}\n${alts}`;
      });
      span.dataset.tip = lines.join("\n");
      this.tokens += logprobs.tokens.length;
    }
    this.out.appendChild(span);
  }

  status(text) {
    this.meta.textContent = text;
  }
}

// Server-sent events of one streamed completion into a pane; throws the server's error message.
async function stream(pane, controller) {
  const r = await fetch("/v1/completions", {
    method: "POST", headers: headers(), body: JSON.stringify(requestBody(pane.heal)), signal: controller.signal,
  });
  if (!r.ok) {
    let message = r.statusText;
    try { message = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(`${r.status}: ${message}`);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder("utf-8");  // stream: true keeps a character split across reads
  let buf = "", finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") {
        const secs = (performance.now() - pane.started) / 1000;
        pane.status(`${finish || "done"}: ${pane.tokens} tokens in ${secs.toFixed(1)} s`);
        return;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.genloom) pane.healing(chunk.genloom.healing);
      for (const c of chunk.choices || []) {
        pane.add(c.text, c.logprobs);
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
  }
}

async function generate() {
  if (running.length) return;
  clearError();
  const panesEl = $("panes");
  panesEl.textContent = "";
  const modes = $("compare").checked ? ["exact", "none"] : [$("heal").value];
  const panes = modes.map((m) => new Pane(`heal: ${m}`, m));
  panes.forEach((p) => panesEl.appendChild(p.el));
  running = panes.map(() => new AbortController());
  $("generate").disabled = true;
  $("stopbtn").disabled = false;
  $("status").textContent = "generating…";
  const results = await Promise.allSettled(panes.map((p, i) => stream(p, running[i])));
  let stopped = false;
  results.forEach((res, i) => {
    if (res.status === "rejected") {
      if (res.reason && res.reason.name === "AbortError") {
        stopped = true;
        panes[i].status("stopped");
      } else {
        showError(res.reason.message);
        panes[i].status("failed");
      }
    }
  });
  running = [];
  $("generate").disabled = false;
  $("stopbtn").disabled = true;
  $("status").textContent = stopped ? "stopped" : "";
  document.body.dataset.state = stopped ? "stopped" : "done";
}

function stop() {
  running.forEach((c) => c.abort());
}

function tip(event) {
  const box = $("tip");
  const target = event.target.closest(".tok");
  if (!target || !target.dataset.tip) {
    box.hidden = true;
    return;
  }
  box.textContent = target.dataset.tip;
  box.hidden = false;
  const x = Math.min(event.clientX + 12, window.innerWidth - box.offsetWidth - 4);
  box.style.left = Math.max(4, x) + "px";
  box.style.top = (event.clientY + 16) + "px";
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    generate();
  }
});
$("stopbtn").addEventListener("click", stop);
$("panes").addEventListener("mousemove", tip);
$("panes").addEventListener("mouseleave", () => { $("tip").hidden = true; });
loadModels();

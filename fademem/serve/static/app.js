// fademem live page: plays the frames the server streams over /ws at the model's fps, sends prompt /
// policy / pause requests, and draws what the memory holds (Memory.entries() over time).
"use strict";

const $ = (id) => document.getElementById(id);
// For tests and debugging: what was shown, per chunk (mean RGB of its frames as drawn).
const hook = window.fademem = { chunks: [], switches: [], errors: [], framesShown: 0, hello: null };
const S = { ws: null, queue: [], fps: 8, size: [64, 64], paused: false, started: false, timer: null,
            acc: null, current: null, live: null, compare: [], videoS: 0 };
const probe = document.createElement("canvas");

function setStatus(text) { const el = $("status"); el.textContent = text; el.className = text; }
function logLine(text) {
  const el = $("log"); const d = document.createElement("div");
  d.textContent = new Date().toLocaleTimeString() + "  " + text; el.prepend(d);
}

// -- the connection --------------------------------------------------------------------------------
function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.binaryType = "blob";
  S.ws = ws;
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { enqueueFrame(ev.data); return; }
    onMessage(JSON.parse(ev.data));
  };
  ws.onclose = (ev) => {
    setStatus("disconnected");
    if (ev.code !== 4409) banner("The connection to the server closed. Reload the page to reconnect.");
  };
}
function send(obj) {
  if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(obj));
}
function banner(text) { const b = $("banner"); b.textContent = text; b.style.display = "block"; }

function onMessage(m) {
  switch (m.type) {
    case "hello": return onHello(m);
    case "restart":
      S.queue.length = 0; S.acc = null;
      $("prompt").value = m.prompt; selectPolicy(m.policy);
      logLine(`new video ${m.run}: ${m.policy}`);
      return setMemory(m, true);
    case "chunk": S.queue.push({ kind: "chunk", meta: m }); S.current = m; return;
    case "memory": S.queue.push({ kind: "memory", msg: m }); return;
    case "switch":
      hook.switches.push(m);
      return logLine(`prompt switch at latent frame ${m.at} (${m.seconds.toFixed(2)} s)`);
    case "status":
      S.paused = m.paused; $("pause").textContent = m.paused ? "Resume" : "Pause";
      return setStatus(m.status);
    case "ack":
      if (m.what === "prompt") { $("prompt-error").textContent = ""; logLine("prompt sent: " + m.message); }
      if (m.what === "policy") { $("policy-error").textContent = ""; logLine(m.message); }
      return;
    case "error": {
      hook.errors.push(m);
      const target = { prompt: "prompt-error", policy: "policy-error" }[m.what];
      if (target) $(target).textContent = m.message;
      else if (m.what === "connect") { banner(m.message); setStatus("disconnected"); }
      else { banner(m.message); logLine("error: " + m.message); }
      return;
    }
  }
}

function onHello(m) {
  hook.hello = m;
  S.fps = m.model.fps; S.size = m.model.frame_size;
  const [h, w] = S.size, scale = Math.max(1, Math.floor(Math.min(640 / w, 384 / h)));
  const c = $("video"); c.width = w * scale; c.height = h * scale;
  $("video-panel").style.width = Math.max(c.width + 26, 440) + "px";  // long log lines wrap, not widen
  $("model").textContent = `${m.model.name} model · ${w}x${h} at ${m.model.fps} fps · real-time buffer ` +
    `${m.buffer_s} s`;
  $("prompt").value = m.prompt;
  const sel = $("policy"); sel.innerHTML = "";
  for (const p of m.policies) {
    const o = document.createElement("option"); o.value = p.name; o.textContent = p.name; o.title = p.doc;
    sel.appendChild(o);
  }
  S.policies = m.policies; selectPolicy(m.policy);
  if (m.model.grammar) $("grammar").textContent = m.model.grammar; else $("grammar-box").style.display = "none";
  const ex = $("examples"); ex.innerHTML = "";
  for (const p of m.model.examples) {
    const s = document.createElement("span"); s.textContent = p; s.title = "use this prompt";
    s.onclick = () => { $("prompt").value = p; }; ex.appendChild(s);
  }
  S.paused = m.paused; $("pause").textContent = m.paused ? "Resume" : "Pause"; setStatus(m.status);
  if (m.memory) setMemory(m, true);
  clearInterval(S.timer); S.timer = setInterval(tick, 1000 / S.fps);
}

function selectPolicy(spec) {
  const [name, knobs] = spec.split(/:(.*)/s);
  $("policy").value = name; $("knobs").value = knobs || "";
  const p = (S.policies || []).find((x) => x.name === name);
  $("policy-doc").textContent = p ? p.doc : "";
}

// -- playback: frames and the chunk / memory markers between them, in arrival order ----------------
function enqueueFrame(blob) {
  const item = { kind: "frame", bmp: null, meta: S.current };
  item.ready = createImageBitmap(blob).then((b) => { item.bmp = b; });
  S.queue.push(item);
}
function buffered() { return S.queue.filter((x) => x.kind === "frame").length; }

function tick() {
  if (S.paused) return;
  if (!S.started) { if (buffered() < 3) return; S.started = true; }
  while (S.queue.length && S.queue[0].kind !== "frame") {
    const it = S.queue.shift();
    if (it.kind === "chunk") S.acc = { meta: it.meta, sum: [0, 0, 0], n: 0 };
    else setMemory(it.msg, false);
  }
  const it = S.queue[0];
  if (!it) { S.started = false; $("stats").textContent = "buffering (generation is behind real time)"; return; }
  if (!it.bmp) return;  // still decoding
  S.queue.shift();
  drawFrame(it);
}

function drawFrame(it) {
  const c = $("video"), ctx = c.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(it.bmp, 0, 0, c.width, c.height);
  hook.framesShown += 1;
  const m = it.meta, a = S.acc;
  if (a && m && a.meta === m) {  // mean colour of the chunk as shown, for tests
    const w = Math.min(it.bmp.width, 128), h = Math.round(it.bmp.height * w / it.bmp.width);
    probe.width = w; probe.height = h;
    const p = probe.getContext("2d", { willReadFrequently: true });
    p.drawImage(it.bmp, 0, 0, w, h);
    const d = p.getImageData(0, 0, w, h).data;
    let r = 0, g = 0, b = 0;
    for (let i = 0; i < d.length; i += 4) { r += d[i]; g += d[i + 1]; b += d[i + 2]; }
    const n = d.length / 4; a.sum[0] += r / n; a.sum[1] += g / n; a.sum[2] += b / n; a.n += 1;
    if (a.n === m.frames) {
      hook.chunks.push({ run: m.run, index: m.index, start: m.start, prompt: m.prompt, recached: m.recached,
                         mean: a.sum.map((x) => x / a.n) });
      S.acc = null;
    }
  }
  if (m) {
    const fps = m.gen_fps ? `generating at ${m.gen_fps.toFixed(1)} fps (plays at ${S.fps} fps)` : "";
    $("stats").textContent = `chunk ${m.index} · latent frames ${m.start}-${m.end - 1} · ` +
      `${(m.video_s || 0).toFixed(1)} s generated · ${fps} · buffer ${buffered()} frames`;
  }
}

// -- the memory view ---------------------------------------------------------------------------------
function newLayout(msg) {
  const lay = { closed: new Map(), alive: [], loose: [], step: 0 };
  updateLayout(lay, msg); return lay;
}
function updateLayout(lay, msg) {
  for (const b of msg.closed) lay.closed.set(b.slice(0, 4).concat(b[5]).join(","), b);
  lay.alive = msg.alive; lay.loose = msg.loose; lay.step = msg.step;
}
function setMemory(m, full) {
  if (!m.memory) return;
  if (full || !S.live) { S.live = newLayout(m.memory); S.compare = m.compare.map(newLayout); }
  else { updateLayout(S.live, m.memory); m.compare.forEach((c, i) => S.compare[i] && updateLayout(S.compare[i], c)); }
  S.liveMeta = m.memory; S.compareMeta = m.compare;
  drawMemory();
}

const VIRIDIS = [[253, 231, 37], [94, 201, 98], [33, 145, 140], [59, 82, 139], [68, 1, 84]];
function spanColour(span, maxSpan) {
  const t = maxSpan > 1 ? Math.log(span) / Math.log(maxSpan) : 0, x = t * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
  const c = VIRIDIS[i].map((v, k) => Math.round(v + f * (VIRIDIS[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}
function kindColour(kind, span, maxSpan) {
  if (kind === "sink" || kind === "anchor") return "#d62728";
  if (kind.startsWith("ema") || kind === "compressed") return "#f28e2b";
  if (kind === "retrieved") return "rgba(150,160,175,0.45)";
  if (kind === "prototype") return "#e377c2";
  return spanColour(span, maxSpan);
}

function drawLayout(canvas, lay, title) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 30;
  ctx.fillStyle = "#0e1115"; ctx.fillRect(0, 0, W, H);
  const n = Math.max(lay.step, 3), sx = (W - pad - 6) / n, sy = (H - pad - 16) / n;
  const X = (f) => pad + f * sx, Y = (f) => H - pad - f * sy;
  const blocks = [...lay.closed.values()].map((b) => ({ s0: b[0], s1: b[1], first: b[2], span: b[3], mu: b[4], kind: b[5] }))
    .concat(lay.alive.map((b) => ({ s0: b[0], s1: lay.step, first: b[1], span: b[2], mu: b[3], kind: b[5] })));
  const maxSpan = Math.max(2, ...blocks.filter((b) => b.kind !== "retrieved").map((b) => b.span));
  for (const b of blocks) {
    ctx.fillStyle = kindColour(b.kind, b.span, maxSpan);
    const x0 = X(b.s0), x1 = X(b.s1), y0 = Y(b.first + b.span), y1 = Y(b.first);
    ctx.fillRect(x0, y0, Math.max(1, x1 - x0), Math.max(1, y1 - y0));
    if (sx > 2 && sy > 2) { ctx.strokeStyle = "#0e1115"; ctx.lineWidth = 0.5; ctx.strokeRect(x0, y0, x1 - x0, y1 - y0); }
    if (b.span > 1 && b.mu !== null && b.kind !== "retrieved") {
      ctx.strokeStyle = "#000"; ctx.lineWidth = 0.8; ctx.beginPath();
      ctx.moveTo(x0, Y(b.mu + 0.5)); ctx.lineTo(x1, Y(b.mu + 0.5)); ctx.stroke();
    }
  }
  ctx.strokeStyle = "#8c96a3"; ctx.setLineDash([4, 3]); ctx.lineWidth = 1; ctx.beginPath();
  ctx.moveTo(X(0), Y(0)); ctx.lineTo(X(n), Y(n)); ctx.stroke(); ctx.setLineDash([]);
  ctx.fillStyle = "#8c96a3"; ctx.font = "10px system-ui";
  ctx.fillText(title, pad, 11);
  ctx.fillText(`${(n / S.fps).toFixed(1)} s`, W - 40, H - pad + 12);
  ctx.fillText("0", pad - 8, H - pad + 12);
  ctx.save(); ctx.translate(10, H - pad); ctx.rotate(-Math.PI / 2); ctx.fillText("frames covered", 0, 0); ctx.restore();
  ctx.fillText("frames generated →", pad + 4, H - 6);
}

function drawPositions(canvas, lay) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 30;
  ctx.fillStyle = "#0e1115"; ctx.fillRect(0, 0, W, H);
  const n = Math.max(lay.step, 3), sx = (W - pad - 6) / n, X = (f) => pad + f * sx, top = 22, bot = H - 26;
  const maxSpan = Math.max(2, ...lay.alive.map((b) => b[2]));
  ctx.font = "10px system-ui"; ctx.fillStyle = "#8c96a3";
  ctx.fillText("frames", 2, top + 8); ctx.fillText("RoPE", 2, bot + 4);
  for (const b of lay.alive) {
    const [, first, span, mu, pos, kind] = b;
    ctx.fillStyle = kindColour(kind, span, maxSpan);
    ctx.fillRect(X(first), top, Math.max(1.5, span * sx - 0.5), 12);
    if (pos === null || mu === null) continue;
    ctx.strokeStyle = ctx.fillStyle; ctx.lineWidth = 1; ctx.beginPath();
    ctx.moveTo(X(mu + 0.5), top + 12); ctx.lineTo(X(pos + 0.5), bot - 4); ctx.stroke();
    ctx.beginPath(); ctx.arc(X(pos + 0.5), bot, 3, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.fillStyle = "#8c96a3";
  ctx.fillText("0", pad - 3, H - 6); ctx.fillText(`frame ${n}`, W - 60, H - 6);
}

function describeEntries(lay) {  // "[1-64] -> 1" per held entry, the middle elided for long lists
  const fmt = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));
  const items = lay.alive.map(([, first, span, , pos, kind]) =>
    `${span > 1 ? `${first}-${first + span - 1}` : first}${kind === "frame" || kind === "merged" ? "" : " " + kind}` +
    (pos === null ? "" : ` → ${fmt(pos)}`));
  const shown = items.length > 14 ? items.slice(0, 6).concat(["…"], items.slice(-6)) : items;
  return "held frames → RoPE position: " + shown.join(" · ");
}

function drawMemory() {
  const live = S.live, meta = S.liveMeta;
  const held = live.alive.length + live.loose.length;
  const loose = live.loose.length ? ` (${live.loose.length} without a frame range: learned tokens)` : "";
  $("memsum").textContent = `${meta.spec} · ${held} entries held${loose} · ${meta.frames_seen} latent frames ` +
    `generated · K/V ${(meta.nbytes / 2 ** 20).toFixed(2)} MiB over all layers`;
  drawLayout($("memory"), live, `${meta.spec} (live, layer 0)`);
  drawPositions($("positions"), live);
  $("entries").textContent = describeEntries(live);
  const box = $("compare");
  if (box.children.length !== S.compare.length) {
    box.innerHTML = "";
    S.compare.forEach(() => {
      const d = document.createElement("div"); d.className = "cmp";
      const c = document.createElement("canvas"); c.width = 200; c.height = 140;
      d.appendChild(c); d.appendChild(document.createElement("div")); box.appendChild(d);
    });
  }
  S.compare.forEach((lay, i) => {
    const d = box.children[i], cm = S.compareMeta[i];
    drawLayout(d.querySelector("canvas"), lay, cm.spec);
    d.querySelector("div").textContent = `${lay.alive.length + lay.loose.length} entries`;
    d.title = cm.note || "";  // how the budget was matched
  });
}

// -- the controls ------------------------------------------------------------------------------------
$("switch").onclick = () => { $("prompt-error").textContent = ""; send({ type: "prompt", prompt: $("prompt").value }); };
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("switch").click(); }
});
$("policy").onchange = () => selectPolicy($("policy").value);
$("restart").onclick = () => {
  $("policy-error").textContent = "";
  const knobs = $("knobs").value.trim();
  send({ type: "policy", policy: $("policy").value + (knobs ? ":" + knobs : "") });
};
$("pause").onclick = () => { S.paused = !S.paused; send({ type: S.paused ? "pause" : "resume" });
  $("pause").textContent = S.paused ? "Resume" : "Pause"; };

async function download(what, name) {
  $("download-error").textContent = "";
  const r = await fetch("/download/" + what);
  if (!r.ok) { $("download-error").textContent = (await r.json()).error; return; }
  const disp = r.headers.get("content-disposition") || "", m = disp.match(/filename="?([^";]+)"?/);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await r.blob()); a.download = m ? m[1] : name;
  document.body.appendChild(a); a.click(); a.remove();
  if (what.startsWith("state")) {
    logLine(`state saved: continue it with  fademem generate --resume ${a.download}  (it appends to the ` +
            "copy of the video kept in the server's --out-dir)");
  }
}
$("download-video").onclick = () => download("video.mp4", "fademem_live.mp4");
$("download-state").onclick = () => download("state.safetensors", "fademem_live.state.safetensors");

connect();

// cardamage explore: the page asks the local server (same origin only) and lays out its numbers.
// Numbers are shown as JavaScript's shortest round-trip form of the JSON value: what the API said, to the bit.
"use strict";

const state = { photo: 0, summary: null, model: [], dets: [], labels: null, layer: null, channel: null, rf: null, selected: null, neuronAsked: 0 };
const $ = (id) => document.getElementById(id);

function num(v) { return v === null || v === undefined ? "n/a" : String(v); }
function short(v, d = 4) { return v === null || v === undefined ? "n/a" : Number(v).toPrecision(d); }
function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function setNum(id, v) { const e = $(id); e.textContent = num(v); e.dataset.value = num(v); }
function q(params) { return new URLSearchParams(Object.assign({ photo: state.photo }, params)).toString(); }

async function api(path, params = {}) {
  const r = await fetch(`/api/${path}?${q(params)}`);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function status(text, st) { const s = $("status"); s.textContent = text; s.dataset.state = st; }

// -- the photo, boxes and the receptive field, placed in percent of the photo so they follow its size ----------
function place(div, xyxy) {
  const [h, w] = state.summary.photo_shape;
  div.style.left = `${100 * xyxy[0] / w}%`; div.style.top = `${100 * xyxy[1] / h}%`;
  div.style.width = `${100 * (xyxy[2] - xyxy[0]) / w}%`; div.style.height = `${100 * (xyxy[3] - xyxy[1]) / h}%`;
}

const MAX_BOXES = 25;  // the best-scoring boxes are drawn (an untrained head reports hundreds); all are listed

function drawBoxes() {
  const layer = $("boxes");
  layer.replaceChildren();
  state.dets.forEach((d, i) => {
    if (i >= MAX_BOXES && i !== state.selected) return;
    const b = el("div", { class: "box", "data-index": i, title: `${d.class_name} ${short(d.score, 3)}` });
    place(b, d.box_xyxy);
    b.addEventListener("click", (ev) => { ev.stopPropagation(); showDetection(i); });
    layer.appendChild(b);
  });
  (state.labels || []).forEach((g, j) => {
    const missed = g.found_by === null;
    const b = el("div", { class: missed ? "label missed" : "label", "data-label": j,
      title: `label ${j}: ${g.class_name}, ` + (missed ? "missed" : `found by #${g.found_by}`) });
    place(b, g.box_xyxy);
    layer.appendChild(b);
  });
  if (state.rf) {
    const r = el("div", { id: "rf-box", class: "rf" });
    place(r, state.rf);
    layer.appendChild(r);
  }
}

function fillDetections() {
  $("det-count").textContent = state.dets.length + (state.dets.length > MAX_BOXES ? `, the best ${MAX_BOXES} drawn` : "");
  $("det-none").hidden = state.dets.length > 0;  // an empty table alone reads like a broken page
  $("det-conf").textContent = `conf ${state.summary.conf}`;
  const body = $("detections").tBodies[0];
  body.replaceChildren();
  // a label file beside the photo adds a column: each box against the labelled damage
  const labelled = state.dets.some((d) => d.label_match);
  $("det-labels").hidden = !labelled;
  state.dets.forEach((d, i) => {
    const tr = el("tr", { "data-index": i });
    [i, d.class_name, short(d.score), short(d.logit), `${d.anchor.scale}, ${d.anchor.y}, ${d.anchor.x}`]
      .concat(labelled ? [d.label_match] : [])
      .forEach((v) => tr.appendChild(el("td", {}, String(v))));
    tr.addEventListener("click", () => showDetection(i));
    body.appendChild(tr);
  });
}

// the label file beside the photo: every labelled box, the detection that found it or "missed"
function fillLabels(info) {
  state.labels = info.labels;
  $("labels-panel").hidden = info.labels === null;
  $("label-problem").hidden = !info.problem;
  $("label-problem").textContent = info.problem ? `Label file not used: ${info.problem}` : "";
  if (info.labels === null) return;
  $("label-count").textContent = info.labels.length;
  $("label-missed").textContent = info.missed;
  $("label-iou").textContent = info.iou_min;
  const body = $("labels").tBodies[0];
  body.replaceChildren();
  info.labels.forEach((g, j) => {
    const missed = g.found_by === null;
    const tr = el("tr", { "data-label": j, class: missed ? "missed" : "found" });
    [j, g.class_name, g.box_xyxy.map((v) => v.toFixed(1)).join(", "), missed ? "missed" : `#${g.found_by}`,
      short(g.best_iou, 3)].forEach((v) => tr.appendChild(el("td", {}, String(v))));
    if (!missed) tr.addEventListener("click", () => showDetection(g.found_by));
    body.appendChild(tr);
  });
}

function showDetection(i) {
  const d = state.dets[i];
  if (i >= MAX_BOXES && state.selected !== i) { state.selected = i; drawBoxes(); }
  state.selected = i;
  document.querySelectorAll(".box.selected, #detections tr.selected").forEach((e) => e.classList.remove("selected"));
  document.querySelectorAll(`[data-index="${i}"]`).forEach((e) => e.classList.add("selected"));
  $("detection").hidden = false;
  $("det-title").textContent = `#${i}: ${d.class_name}, score ${short(d.score)}` + (d.label_match ? `: ${d.label_match}` : "");
  const a = d.anchor;
  $("det-anchor").textContent = `anchor ${a.index}: scale ${a.scale} (stride ${a.stride}), grid cell y=${a.y}, x=${a.x}, ` +
    `centre (${(a.x + 0.5) * a.stride}, ${(a.y + 0.5) * a.stride}) in model-input pixels. NMS kept the class with the ` +
    `largest score; the score is sigmoid(its logit).`;
  const body = $("det-logits").tBodies[0];
  body.replaceChildren();
  d.logits.forEach((z, k) => {
    const tr = el("tr", k === d.class_id ? { class: "chosen" } : {});
    tr.appendChild(el("td", {}, d.names[k]));
    // 6 significant digits to read; the full value (the API's) on hover
    tr.appendChild(el("td", { class: "num logit", title: num(z) }, short(z, 6)));
    tr.appendChild(el("td", { class: "num sigmoid", title: num(d.sigmoids[k]) }, short(d.sigmoids[k], 6)));
    body.appendChild(tr);
  });
  $("cam-layer").textContent = state.summary.cam_layer;
  const cam = $("cam-img");
  const src = `/api/cam?${q({})}`;
  if (cam.getAttribute("src") !== src) cam.src = src;
  place($("cam-box"), d.box_xyxy);
}

// -- the forward pass ----------------------------------------------------------------------------------------
function shape(s) { return Array.isArray(s) && typeof s[0] === "number" ? s.join("\u00d7") : JSON.stringify(s); }

function fillStages(stages) {
  const box = $("stages");
  box.replaceChildren();
  const byStage = {};
  state.model.forEach((r) => { (byStage[r.stage] = byStage[r.stage] || []).push(r); });
  box.appendChild(el("div", { class: "stage" }, `input ${shape(stages.input_shape)} (letterboxed photo, x/255)`));
  stages.stages.forEach((s) => {
    const row = el("div", { class: "stage" });
    const out = s.type === "Detect" ? "head: 3 scales of logits and box distributions" : shape(s.out_shape);
    row.appendChild(el("span", { class: "stage-name" }, `${s.path} ${s.type}`));
    row.appendChild(el("span", { class: "shape" }, out));
    const blocks = el("div", { class: "blocks" });
    (byStage[s.path] || []).filter((r) => r.type !== "Detect").forEach((r) => {
      // the head's final convs are plain Conv2d layers: their outputs are the logits themselves
      const what = r.type === "Conv2d" ? (r.branch === "class" ? "class logits" : "DFL box logits") + ", no BatchNorm, no SiLU, " : "";
      const b = el("button", { "data-layer": r.path, class: r.type === "Conv2d" ? "logit" : "",
        title: `${what}k ${r.kernel.join("x")}, stride ${r.stride.join("x")}, ` +
        `${r.params} params, in ${shape(r.in_shape)}` }, `${r.path.slice(s.path.length) || "conv"} ${shape(r.out_shape.slice(1))}`);
      b.addEventListener("click", () => showLayer(r.path));
      blocks.appendChild(b);
    });
    row.appendChild(blocks);
    box.appendChild(row);
  });
}

function stageChoice() { return document.querySelector('input[name="stage"]:checked').value; }

// the head's final convs: plain Conv2d whose output is the logit itself (no BatchNorm, no SiLU after it)
function isLogitLayer(r) { return Boolean(r && r.branch && r.activation === null); }

// a logit layer has one map (z is the logit, there is no SiLU(z)): one caption, no pre/post choice
function stageLabels(r) {
  const logit = isLogitLayer(r);
  document.querySelectorAll('#layer label:has(input[name="stage"])').forEach((l) => { l.hidden = logit; });
  if (logit) document.querySelector('input[name="stage"][value="post"]').checked = true;
  $("cap-post").textContent = logit ? (r.branch === "class" ? "class logit (no BatchNorm, no SiLU: sigmoid(logit) is the score)"
    : "box logit (no BatchNorm, no SiLU: softmax over 16 bins)") : "SiLU(z) (post)";
  $("map-pre").closest("figure").hidden = logit;
}

function channelName(r, c) {
  return isLogitLayer(r) && r.branch === "class" && state.summary.names ? `${c}: ${state.summary.names[c]}` : String(c);
}

function showLayer(path) {
  const r = state.model.find((m) => m.path === path);
  state.layer = r;
  stageLabels(r);
  document.querySelectorAll("#stages button.selected").forEach((b) => b.classList.remove("selected"));
  document.querySelectorAll(`#stages button[data-layer="${path}"]`).forEach((b) => b.classList.add("selected"));
  $("layer").hidden = false;
  $("layer-name").textContent = path;
  $("layer-shape").textContent = `in ${shape(r.in_shape)} \u2192 out ${shape(r.out_shape)}, kernel ${r.kernel.join("\u00d7")}, ` +
    `stride ${r.stride.join("\u00d7")}, ${r.params} parameters`;
  fillChannels();
  $("layer").scrollIntoView({ block: "nearest" });
}

function fillChannels() {
  const r = state.layer, grid = $("channels"), st = stageChoice();
  grid.replaceChildren();
  for (let c = 0; c < r.out_shape[1]; c++) {
    const fig = el("figure", { class: "thumb", "data-channel": c });
    const img = el("img", { loading: "lazy", alt: `channel ${c}`, src: `/api/featuremap?${q({ layer: r.path, channel: c, stage: st })}` });
    fig.appendChild(img);
    fig.appendChild(el("figcaption", {}, channelName(r, c)));
    fig.addEventListener("click", () => showChannel(c));
    grid.appendChild(fig);
  }
}

async function drawMap(canvasId, scaleId, channel, st) {
  const r = await fetch(`/api/featuremap?${q({ layer: state.layer.path, channel, stage: st })}`);
  if (!r.ok) throw new Error((await r.json()).error);
  $(scaleId).textContent = `min ${short(r.headers.get("X-Scale-Min"))}, max ${short(r.headers.get("X-Scale-Max"))}`;
  const bmp = await createImageBitmap(await r.blob());
  const cv = $(canvasId);
  cv.width = bmp.width; cv.height = bmp.height;
  cv.getContext("2d").drawImage(bmp, 0, 0);
}

async function showChannel(c) {
  state.channel = c;
  $("channel").hidden = false;
  $("channel-name").textContent = `${state.layer.path} #${channelName(state.layer, c)} (${state.layer.out_shape[2]}\u00d7${state.layer.out_shape[3]})`;
  ["map-pre", "map-post"].forEach((id) => { $(id).dataset.ready = ""; });
  markCell(null, null);
  try {
    await Promise.all([drawMap("map-pre", "scale-pre", c, "pre"), drawMap("map-post", "scale-post", c, "post")]);
  } catch (e) { status(e.message, "error"); return; }
  // the layer list above is as long as the model: bring the maps to the reader, then say they are ready
  $("channel").scrollIntoView({ block: "nearest" });
  ["map-pre", "map-post"].forEach((id) => { $(id).dataset.ready = "1"; });
}

function mapClick(ev) {
  const cv = ev.currentTarget, rect = cv.getBoundingClientRect();
  const x = Math.min(cv.width - 1, Math.floor((ev.clientX - rect.left) / rect.width * cv.width));
  const y = Math.min(cv.height - 1, Math.floor((ev.clientY - rect.top) / rect.height * cv.height));
  markCell(y, x);
  showNeuron(state.layer.path, state.channel, y, x);
}

// the clicked cell outlined on both maps, in percent of the map so it follows the canvas' displayed size
function markCell(y, x) {
  ["pre", "post"].forEach((st) => {
    const cv = $(`map-${st}`), m = $(`mark-${st}`);
    if (y === null || !cv.width) { m.hidden = true; return; }
    Object.assign(m.style, { left: `${100 * x / cv.width}%`, top: `${100 * y / cv.height}%`,
      width: `${100 / cv.width}%`, height: `${100 / cv.height}%` });
    Object.assign(m.dataset, { y, x });
    m.hidden = false;
  });
}

function grid(title, rows) {
  const t = el("table", { class: "grid" });
  t.appendChild(el("caption", {}, title));
  rows.forEach((row) => {
    const tr = el("tr");
    row.forEach((v) => tr.appendChild(el("td", { title: num(v) }, short(v, 6))));
    t.appendChild(tr);
  });
  return t;
}

// a number to 6 significant digits, with the API's full value on hover
function cell(v) {
  const text = typeof v === "number" && !Number.isInteger(v) ? short(v, 6) : String(v);  // indices stay integers
  return el("td", { class: "num", title: num(v) }, text);
}

// the number table's row names: a Conv block's z and SiLU, or a final head conv's logit (its own bias, no BatchNorm)
const LABELS = {
  block: { bias: "b (BatchNorm folded into the bias)", z: "z = dot + b", sigmoid: "sigmoid(z) = 1 / (1 + e^(\u2212z))",
    fwPre: "the framework's z (float32)" },
  logit: { bias: "b (the conv's own bias: no BatchNorm here)", z: "logit = dot + b",
    sigmoid: "sigmoid(logit): the class score", fwPre: "the framework's logit (float32)" },
};
function setLabels(kind, t) {
  const L = LABELS[kind];
  $("lab-bias").textContent = L.bias; $("lab-z").textContent = L.z; $("lab-fw-pre").textContent = L.fwPre;
  $("lab-sigmoid").textContent = kind === "logit" && t.branch !== "class" ? "sigmoid (a box logit has none: softmax over its 16 bins)" : L.sigmoid;
}

function showEffect(e) {
  const p = $("neuron-effect");
  p.hidden = !e;
  p.dataset.ready = "1";
  if (!e) return;
  p.textContent = `Its share of box 0's class logit (${short(e.logit, 6)}): grad \u00d7 act = ${short(e.grad_x_act, 6)} ` +
    `(first-order change if it were 0: ${short(e.first_order_estimate, 6)}); measured by setting it to 0: ` +
    `${short(e.zeroed_delta, 6)}. Here ${e.words}.`;
  Object.assign(p.dataset, { gradXAct: num(e.grad_x_act), zeroedDelta: num(e.zeroed_delta) });
}

function showLogit(t) {
  const what = t.branch === "class" ? `class ${t.class_name}` : `${["left", "top", "right", "bottom"][t.side]} side, DFL bin ${t.bin}`;
  $("neuron-name").textContent = `${t.layer} output ${t.channel} (${what}) at (y=${t.y}, x=${t.x})`;
  document.querySelectorAll("#neuron .block-only").forEach((r) => { r.hidden = true; });
  $("neuron-unfolded").textContent = `logit = \u03a3 w\u00b7x + b over ${t.input_channels} input channels (the SiLU output of ` +
    `${t.input_block}): ${t.note}.` + (t.detection !== null ? ` This is the logit behind box #${t.detection}.` : "");
  const body = $("neuron-top").tBodies[0];
  body.replaceChildren();
  t.top_terms.forEach((p) => {
    const tr = el("tr");
    [cell(p.channel), cell(0), cell(0), cell(p.w), cell(p.x), cell(p.product)].forEach((td) => tr.appendChild(td));
    body.appendChild(tr);
  });
  // every term of the sum: all input channels, one row each
  $("neuron-patch-title").textContent = `All ${t.input_channels} terms w\u00b7x (1\u00d71 conv: one input per channel)`;
  const wrap = el("div", { id: "neuron-terms-wrap" });
  const tab = el("table", { id: "neuron-terms" });
  const head = el("tr");
  ["in channel", "w", "x", "w\u00b7x"].forEach((h) => head.appendChild(el("th", {}, h)));
  tab.appendChild(head);
  t.terms.forEach((p, c) => {
    const tr = el("tr");
    [cell(c), cell(t.weights[c]), cell(t.inputs[c]), cell(p)].forEach((td) => tr.appendChild(td));
    tab.appendChild(tr);
  });
  wrap.appendChild(tab);
  $("neuron-patch").replaceChildren(wrap);
}

async function showNeuron(layer, channel, y, x) {
  $("neuron").dataset.ready = "";
  const asked = ++state.neuronAsked;  // a later click wins over a slower answer
  let t;
  try { t = await api("neuron", { layer, channel, y, x, effect: 0 }); } catch (e) { status(e.message, "error"); return; }
  if (asked !== state.neuronAsked) return;
  $("neuron").hidden = false;
  $("neuron-n").textContent = t.n_products;
  setNum("neuron-dot", t.dot); setNum("neuron-bias", t.bias); setNum("neuron-z", t.z_by_hand);
  setNum("neuron-sigmoid", t.sigmoid_by_hand);
  setNum("neuron-fw-pre", t.framework_pre);
  $("neuron-rf").textContent = t.receptive_field_xyxy.map((v) => num(v)).join(" ");
  const eff = $("neuron-effect");
  eff.dataset.ready = "";
  if (t.kind === "logit") { showEffect(null); } else {  // the arithmetic first; its effect needs a pass and a backward
    eff.hidden = false;
    eff.textContent = "Measuring its share of box 0's class logit (a pass from this layer on, and its gradient)\u2026";
    api("effect", { layer, channel, y, x })
      .then((r) => { if (asked === state.neuronAsked) showEffect(r.effect); })
      .catch((e) => { if (asked === state.neuronAsked) status(e.message, "error"); });
  }
  setLabels(t.kind === "logit" ? "logit" : "block", t);
  if (t.kind === "logit") {
    showLogit(t);
    $("neuron-err").textContent = `logit: ${short(t.abs_error, 3)}`;
  } else {
    document.querySelectorAll("#neuron .block-only").forEach((r) => { r.hidden = false; });
    $("neuron-name").textContent = `${t.layer} channel ${t.channel} at (y=${t.y}, x=${t.x})`;
    setNum("neuron-silu", t.silu_by_hand); setNum("neuron-fw", t.framework_value);
    $("neuron-err").textContent = `z: ${short(t.abs_error_pre, 3)}, SiLU(z): ${short(t.abs_error, 3)} (over max(1, |framework|): ${short(t.rel_error, 3)})`;
    const u = t.unfolded;
    $("neuron-unfolded").textContent = u ? `Unfolded: conv sum ${num(u.conv_sum)}, then (sum \u2212 mean ${num(u.running_mean)}) / ` +
      `sqrt(var ${num(u.running_var)} + eps ${num(u.eps)}) \u00b7 gamma ${num(u.gamma)} + beta ${num(u.beta)} = ${num(u.z)}: ` +
      `the same z.` : "This block is fused: BatchNorm already sits in its weights and bias.";
    const body = $("neuron-top").tBodies[0];
    body.replaceChildren();
    t.top_products.forEach((p) => {
      const tr = el("tr");
      [cell(p.in_channel), cell(p.ky), cell(p.kx), cell(p.w), cell(p.x), cell(p.w_times_x)].forEach((td) => tr.appendChild(td));
      body.appendChild(tr);
    });
    $("neuron-patch-title").textContent = "Patch x and folded weights w, per input channel";
    const patch = $("neuron-patch");
    patch.replaceChildren();
    const pair = (i) => {
      const d = el("div", { class: "pair", "data-in-channel": t.input_channels[0] + i });
      d.appendChild(grid(`x, in channel ${t.input_channels[0] + i}`, t.patch[i]));
      d.appendChild(grid(`w, in channel ${t.input_channels[0] + i}`, t.weights[i]));
      return d;
    };
    const shown = Math.min(t.patch.length, 4);
    for (let i = 0; i < shown; i++) patch.appendChild(pair(i));
    if (t.patch.length > shown) {  // every input channel stays reachable, folded: built now, so opening it never races
      const more = el("details", { id: "neuron-more" });
      more.appendChild(el("summary", {}, `the other ${t.patch.length - shown} input channels`));
      for (let i = shown; i < t.patch.length; i++) more.appendChild(pair(i));
      patch.appendChild(more);
    }
  }
  state.rf = t.receptive_field_xyxy;
  drawBoxes();
  Object.assign($("neuron").dataset, { layer: t.layer, channel: t.channel, y: t.y, x: t.x, ready: "1" });
  $("neuron").scrollIntoView({ block: "nearest" });  // the panel sits below the maps: bring the arithmetic into view
}

// -- start ----------------------------------------------------------------------------------------------------
async function loadPhoto(i) {
  state.photo = i; state.rf = null; state.layer = null; state.selected = null; state.labels = null;
  ["detection", "layer", "channel", "neuron"].forEach((id) => { $(id).hidden = true; });
  status("running the photo through the model (first view of a photo only)\u2026", "loading");
  try {
    state.summary = await api("summary");
    const [model, stages, dets, labels] = await Promise.all([api("model"), api("stages"), api("detections"), api("labels")]);
    state.model = model; state.dets = dets;
    $("photo-img").src = `/api/image?${q({})}`;
    fillStages(stages); fillDetections(); fillLabels(labels); drawBoxes();
    status(`${state.summary.photo.name}: photo ${state.summary.photo_shape.slice(0, 2).join("\u00d7")}, ` +
      `model input ${shape(state.summary.input_shape)}, ${dets.length} detection${dets.length === 1 ? "" : "s"} at conf ${state.summary.conf}`, "ready");
  } catch (e) { status(e.message, "error"); }
}

async function start() {
  const photos = await (await fetch("/api/photos")).json();
  const sel = $("photo");
  photos.forEach((p) => sel.appendChild(el("option", { value: p.index }, `${p.index}: ${p.name}`)));
  sel.addEventListener("change", () => loadPhoto(Number(sel.value)));
  document.querySelectorAll('input[name="stage"]').forEach((r) => r.addEventListener("change", () => state.layer && fillChannels()));
  ["map-pre", "map-post"].forEach((id) => $(id).addEventListener("click", mapClick));
  await loadPhoto(0);
}

start();

// The explorer's link to the channel atlas (cardamage explore --atlas DIR), kept apart from explore.js.
// A clicked channel thumbnail shows that channel's atlas entry (top crops, best class, selectivity); a clicked
// box lists the channels that drove its class logit most (activation x gradient, /api/drivers), each a link to
// its atlas entry. Reads explore.js's `state` and `$`; without an atlas the entry panel stays hidden.
"use strict";

function atlasPanel(id, after, title) {
  let p = document.getElementById(id);
  if (!p) {
    p = el("div", { id, class: "panel", hidden: "" });
    p.appendChild(el("h3", {}, title));
    p.appendChild(el("div", { class: "body" }));
    after.after(p);
  }
  return p;
}

async function showAtlasEntry(layer, channel) {
  const p = atlasPanel("atlas-entry", $("channel"), "In the atlas");
  const body = p.querySelector(".body");
  p.dataset.ready = "";
  const r = await fetch(`/api/atlas/channel?${new URLSearchParams({ layer, channel })}`);
  const e = await r.json();
  if (r.ok && e.atlas === false) { p.hidden = true; return; }  // explore runs without --atlas: nothing to show
  if (!r.ok) { body.replaceChildren(el("p", { class: "hint" }, e.error)); p.hidden = false; return; }
  body.replaceChildren();
  p.dataset.layer = layer; p.dataset.channel = channel;
  body.appendChild(el("p", {}, `${layer} #${channel}: ` + (e.best_class ? `best class ${e.best_class} (IoU ${short(e.best_iou, 3)})`
    : e.selectivity ? `no class (best IoU ${short(e.best_iou, 3)})` : "no labels in the atlas") +
    `, active on ${(100 * e.active_fraction).toFixed(1)}% of cells (${e.activity}).`));
  if (e.crops) body.appendChild(el("img", { id: "atlas-crops", src: `/atlas/${e.crops}`, alt: `top crops of ${layer} #${channel}` }));
  const list = el("ol", { id: "atlas-top" });
  e.top.forEach((t, i) => list.appendChild(el("li", { "data-value": t.value },
    `${short(t.value, 5)} at y${t.y} x${t.x} of ${e.photo_names[i]}`)));
  body.appendChild(list);
  body.appendChild(el("a", { id: "atlas-page", href: `/atlas/${e.page}`, target: "_blank" }, "open in the atlas"));
  p.hidden = false;
  p.dataset.ready = "1";
}

async function showDrivers(i) {
  const p = atlasPanel("drivers", $("det-logits"), "Channels that drove this score");
  const body = p.querySelector(".body");
  p.dataset.ready = ""; p.dataset.box = i;
  body.replaceChildren(el("p", { class: "hint" }, "computing (one forward and one backward pass)\u2026"));
  p.hidden = false;
  const r = await fetch(`/api/drivers?${q({ box: i })}`);
  const d = await r.json();
  if (!r.ok) { body.replaceChildren(el("p", { class: "hint" }, d.error)); return; }
  body.replaceChildren(el("p", { class: "hint" }, `activation \u00d7 gradient of the class logit ${short(d.logit, 6)} ` +
    `at the head's inputs (${d.layers.join(", ")}), summed over the box's receptive positions; largest first.`));
  const t = el("table", { id: "drivers-table" });
  const head = el("tr");
  ["layer", "channel", "a \u00d7 grad", "atlas"].forEach((h) => head.appendChild(el("th", {}, h)));
  t.appendChild(head);
  d.drivers.forEach((row) => {
    const tr = el("tr", { "data-layer": row.layer, "data-channel": row.channel, "data-score": row.score });
    tr.appendChild(el("td", {}, row.layer));
    tr.appendChild(el("td", {}, String(row.channel)));
    tr.appendChild(el("td", { class: "num" }, short(row.score, 5)));
    const cell = el("td");
    if (row.atlas) {
      const b = el("button", { class: "atlas-link" }, "atlas entry");
      b.addEventListener("click", () => showAtlasEntry(row.layer, row.channel));
      cell.appendChild(b);
    } else cell.textContent = "not in the atlas";
    tr.appendChild(cell);
    t.appendChild(tr);
  });
  body.appendChild(t);
  p.dataset.ready = "1";
}

// Follow explore.js's clicks without changing it: capture clicks on thumbnails, boxes and detection rows.
document.addEventListener("click", (ev) => {
  const fig = ev.target.closest("#channels figure[data-channel]");
  if (fig && state.layer) {  // the head's final convs are not Conv blocks: the atlas has no entry for them
    if (isLogitLayer(state.layer)) { const p = document.getElementById("atlas-entry"); if (p) p.hidden = true; return; }
    showAtlasEntry(state.layer.path, Number(fig.dataset.channel));
    return;
  }
  const box = ev.target.closest("#boxes .box[data-index], #detections tr[data-index]");
  if (box) showDrivers(Number(box.dataset.index));
}, true);

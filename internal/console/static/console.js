// nudge console: the few things a page cannot do without a script. No
// inline script anywhere (the Content-Security-Policy forbids it), no
// library, nothing fetched from elsewhere.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Forms that ask before they post (the erase button).
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (ev) => {
      if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
    });
  }
  refreshCharts();
  followActions();
});

// The overview's charts are redrawn by the server every 10 seconds.
function refreshCharts() {
  const box = document.getElementById("charts");
  if (!box || !box.dataset.refresh) return;
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const res = await fetch(box.dataset.refresh, { credentials: "same-origin" });
      if (res.ok) box.innerHTML = await res.text();
    } catch (e) {
      // Next time; the page keeps the last charts.
    }
  }, 10000);
}

// The live actions page follows the outbox through server-sent events.
function followActions() {
  const table = document.getElementById("live");
  if (!table) return;
  const status = document.getElementById("live-status");
  const body = table.querySelector("tbody");
  const q = new URLSearchParams();
  if (table.dataset.channel) q.set("channel", table.dataset.channel);
  if (table.dataset.trigger) q.set("trigger", table.dataset.trigger);
  const src = new EventSource("/console/live/stream?" + q.toString());
  let seen = 0;
  src.onopen = () => { status.textContent = "Following the outbox: new actions appear at the top."; };
  src.onerror = () => { status.textContent = "Disconnected; reconnecting…"; };
  src.addEventListener("failure", (ev) => { status.textContent = JSON.parse(ev.data); });
  src.onmessage = (ev) => {
    const a = JSON.parse(ev.data);
    const tr = document.createElement("tr");
    tr.className = "action";
    for (const v of [new Date(a.at).toLocaleTimeString(), a.channel, a.trigger, a.user, a.template, a.error || a.payload || ""]) {
      const td = document.createElement("td");
      td.textContent = v; // text, never markup
      tr.appendChild(td);
    }
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
    seen++;
    status.textContent = "Following the outbox: " + seen + " action" + (seen === 1 ? "" : "s") + " since this page opened.";
  };
}

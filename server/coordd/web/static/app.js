// coordd pages: show times and numbers in the viewer's locale, and keep live parts current
// through server-sent events. Everything reads without this script.
"use strict";

function localize(root) {
  const numbers = new Intl.NumberFormat();
  const times = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  for (const el of root.querySelectorAll("time[datetime]")) {
    const when = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      el.title = el.textContent;
      el.textContent = times.format(when);
    }
  }
  for (const el of root.querySelectorAll("data[value]")) {
    const value = Number(el.getAttribute("value"));
    if (Number.isFinite(value)) el.textContent = numbers.format(value);
  }
}

function live(el) {
  const source = new EventSource(el.dataset.live);
  source.addEventListener("update", (event) => {
    // The fragment is rendered (and escaped) by the server, the same as the page itself.
    // Receipts the reader opened stay open across updates.
    const open = new Set([...el.querySelectorAll("details[open][data-key]")].map((d) => d.dataset.key));
    el.innerHTML = event.data;
    for (const d of el.querySelectorAll("details[data-key]")) if (open.has(d.dataset.key)) d.open = true;
    localize(el);
    el.dataset.updated = String(Date.now());
  });
  source.addEventListener("open", () => { el.dataset.connected = "true"; });
  source.addEventListener("error", () => { el.dataset.connected = "false"; });
}

document.addEventListener("DOMContentLoaded", () => {
  localize(document);
  for (const el of document.querySelectorAll("[data-live]")) live(el);
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
});

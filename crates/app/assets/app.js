// Cloister app: the little the page does by itself. Every key and every
// plaintext stays in the app's process; this script only moves rendered
// HTML the app made into the page, and posts what the user typed.
"use strict";

(function () {
  const list = document.getElementById("messages");
  const room = list ? list.dataset.room : null;

  const pane = document.querySelector(".history");
  function atBottom() {
    return !pane || pane.scrollHeight - pane.scrollTop - pane.clientHeight < 80;
  }
  function toBottom() {
    if (pane) pane.scrollTop = pane.scrollHeight;
  }

  // Live feed: this room's messages, the other rooms' unread counts.
  const feed = new EventSource("/events" + (room ? "?room=" + room : ""));
  feed.addEventListener("message", function (e) {
    if (!list || document.getElementById("m" + e.lastEventId)) return;
    const follow = atBottom();
    list.insertAdjacentHTML("beforeend", e.data);
    if (follow) toBottom();
  });
  feed.addEventListener("log", function (e) {
    const at = e.data.indexOf(" ");
    const seq = e.data.slice(0, at);
    if (!list || document.getElementById("e" + seq)) return;
    const follow = atBottom();
    list.insertAdjacentHTML("beforeend", e.data.slice(at + 1));
    if (follow) toBottom();
  });
  // Each time the feed (re)opens: what arrived since the last message
  // shown (between the page's history and the feed, or while away).
  feed.addEventListener("open", async function () {
    if (!list) return;
    const seqs = [...list.querySelectorAll("li.msg[data-seq]")].map(function (li) { return Number(li.dataset.seq); });
    const after = seqs.length ? Math.max.apply(null, seqs) : 0;
    const r = await fetch("/r/" + room + "/newer?after=" + after).catch(function () { return null; });
    if (!r || !r.ok) return;
    const doc = new DOMParser().parseFromString("<ol>" + (await r.text()) + "</ol>", "text/html");
    const follow = atBottom();
    for (const li of doc.querySelectorAll("li.msg")) {
      if (!document.getElementById(li.id)) list.appendChild(li);
    }
    if (follow) toBottom();
  });
  feed.addEventListener("unread", function (e) {
    const [id, n] = e.data.split(" ");
    const badge = document.querySelector('[data-unread="' + id + '"]');
    if (!badge) return;
    badge.textContent = n;
    badge.setAttribute("aria-label", n + " unread");
    badge.hidden = n === "0";
  });
  feed.addEventListener("membership", function () {
    const note = document.getElementById("membership-note");
    if (note) note.hidden = false;
  });
  feed.addEventListener("reload", function () { location.reload(); });
  feed.addEventListener("progress", function (e) {
    const [done, total, ...job] = e.data.split(" ");
    const name = job.join(" ");
    if (total === "0") { location.reload(); return; }
    for (const bar of document.querySelectorAll("progress[data-job]")) {
      if (bar.dataset.job !== name) continue;
      bar.max = Number(total);
      bar.value = Number(done);
    }
  });

  // Compose: Enter sends, Shift+Enter adds a line.
  const form = document.getElementById("compose");
  if (form) {
    const text = form.querySelector("textarea");
    const error = document.getElementById("compose-error");
    async function send() {
      const body = text.value;
      if (!body.trim()) return;
      error.hidden = true;
      text.value = "";
      const r = await fetch(form.action, {
        method: "POST",
        headers: { "x-cloister-fetch": "1" },
        body: new URLSearchParams({ text: body }),
      }).catch(function () { return null; });
      if (!r || !r.ok) {
        text.value = body;
        error.textContent = r ? await r.text() : "Not sent: the app did not answer";
        error.hidden = false;
      }
    }
    form.addEventListener("submit", function (e) { e.preventDefault(); send(); });
    text.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        send();
      }
    });
  }

  // Older history: loaded when the link comes into view (or is followed).
  const older = document.querySelector("a.older");
  if (older && list && pane) {
    let busy = false;
    async function load() {
      if (busy || !older.isConnected) return;
      busy = true;
      const from = pane.scrollHeight - pane.scrollTop;
      const r = await fetch(older.href).catch(function () { return null; });
      if (r && r.ok) {
        list.insertAdjacentHTML("afterbegin", await r.text());
        pane.scrollTop = pane.scrollHeight - from;
        const next = r.headers.get("x-older");
        if (next) older.href = older.href.replace(/\?.*$/, "?" + next);
        else older.remove();
      }
      busy = false;
    }
    older.addEventListener("click", function (e) { e.preventDefault(); load(); });
    new IntersectionObserver(function (entries) {
      if (entries.some(function (x) { return x.isIntersecting; })) load();
    }, { root: pane }).observe(older);
  }

  // Files: handed to the app with progress; the app encrypts and sends.
  const file = document.getElementById("file");
  if (file) {
    const bar = document.getElementById("upload-progress");
    const status = document.getElementById("upload-status");
    const error = document.getElementById("compose-error");
    file.addEventListener("change", function () {
      const f = file.files[0];
      if (!f) return;
      const xhr = new XMLHttpRequest();
      xhr.open("POST", file.dataset.upload);
      xhr.setRequestHeader("x-file-name", encodeURIComponent(f.name));
      xhr.upload.onprogress = function (e) {
        if (e.lengthComputable) bar.value = Math.round((100 * e.loaded) / e.total);
      };
      xhr.upload.onload = function () { status.textContent = "Encrypting and sending " + f.name + "…"; };
      xhr.onload = function () {
        bar.hidden = true;
        file.value = "";
        if (xhr.status === 200) {
          status.textContent = f.name + " sent";
        } else {
          status.textContent = "";
          error.textContent = xhr.responseText || "Not sent";
          error.hidden = false;
        }
      };
      xhr.onerror = function () {
        bar.hidden = true;
        status.textContent = "";
        error.textContent = "Not sent: the app did not answer";
        error.hidden = false;
      };
      error.hidden = true;
      bar.value = 0;
      bar.hidden = false;
      status.textContent = "Reading " + f.name + "…";
      xhr.send(f);
    });
  }

  // A running export: its row is refreshed until it ends (the live feed
  // moves the bar; this catches an end the feed said before it opened).
  if (document.querySelector("progress[data-job]")) {
    const timer = setInterval(async function () {
      const r = await fetch(location.href).catch(function () { return null; });
      if (!r || !r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById("cases");
      const here = document.getElementById("cases");
      if (!fresh || !here) return;
      if (!fresh.querySelector("progress[data-job]")) {
        here.replaceWith(fresh);
        clearInterval(timer);
      }
    }, 1000);
  }

  if (list) toBottom();
})();

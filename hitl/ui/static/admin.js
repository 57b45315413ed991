// Admin pages: agreement table, user creation, adjudication decisions. Writes go through the JSON APIs.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);

  // -------------------------------------------------------------- agreement (dashboard)
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
    if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k}: ${fmt(x)}`).join(", ");
    return String(v);
  }

  function table(caption, rows) {
    // rows: {name: {col: value}}
    const names = Object.keys(rows);
    if (!names.length) return null;
    const cols = [...new Set(names.flatMap(n => (rows[n] && typeof rows[n] === "object") ? Object.keys(rows[n]) : ["value"]))];
    const t = el("table");
    t.append(el("caption", {class: "visually-hidden", text: caption}));
    const head = el("tr", {}, el("th", {text: caption}));
    cols.forEach(c => head.append(el("th", {class: "num", text: c.replaceAll("_", " ")})));
    t.append(el("thead", {}, head));
    const body = el("tbody");
    for (const n of names) {
      const r = el("tr", {}, el("td", {text: n}));
      const row = (rows[n] && typeof rows[n] === "object") ? rows[n] : {value: rows[n]};
      cols.forEach(c => r.append(el("td", {class: "num", text: fmt(row[c])})));
      body.append(r);
    }
    t.append(body);
    return t;
  }

  async function loadAgreement() {
    const box = $("agreement");
    if (!box) return;
    try {
      const {data} = await api("GET", "/api/review/agreement");
      box.replaceChildren();
      const parts = [];
      for (const [key, value] of Object.entries(data || {})) {
        if (value && typeof value === "object" && !Array.isArray(value)) {
          const t = table(key.replaceAll("_", " "), value);
          if (t) parts.push(el("h3", {class: "small-heading", text: key.replaceAll("_", " ")}), t);
        } else if (Array.isArray(value)) {
          const rows = {};
          value.forEach((v, i) => { rows[v.name || v.reviewer || v.dimension || v.reviewer_id || i] = v; });
          const t = table(key.replaceAll("_", " "), rows);
          if (t) parts.push(el("h3", {class: "small-heading", text: key.replaceAll("_", " ")}), t);
        } else {
          parts.push(el("p", {class: "small"}, el("strong", {text: key.replaceAll("_", " ") + ": "}), fmt(value)));
        }
      }
      if (!parts.length) parts.push(el("p", {class: "empty", text: "Not enough overlapping ratings yet."}));
      box.append(...parts);
    } catch (err) {
      box.replaceChildren(el("p", {class: "muted", text: `Agreement is not available: ${errorText(err)}`}));
    }
  }

  // -------------------------------------------------------------- users
  const userForm = $("user-form");
  if (userForm) userForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {name: $("user-name").value.trim(), role: $("user-role").value};
    if (!body.name) { $("user-name").focus(); return; }
    try {
      const {data} = await api("POST", "/ui/api/users", body);
      $("new-key").hidden = false;
      $("new-key-value").textContent = data.key;
      const row = el("tr", {}, el("td", {class: "num", text: data.id}), el("td", {text: data.name}),
                     el("td", {}, el("span", {class: "badge", text: data.role})), el("td", {class: "small", text: "just now"}),
                     el("td", {text: "active"}), el("td"));
      document.querySelector("#users tbody").append(row);
      userForm.reset();
      toast(`Created ${data.role} ${data.name}.`);
    } catch (err) { toast(errorText(err), "error"); }
  });

  // -------------------------------------------------------------- adjudication
  for (const section of document.querySelectorAll(".adjudicate")) {
    const id = section.dataset.messageId;
    const details = section.querySelector("details");
    details.addEventListener("toggle", async () => {
      if (!details.open || details.dataset.loaded) return;
      details.dataset.loaded = "1";
      const box = section.querySelector(".adj-conv");
      try {
        const {data} = await api("GET", `/api/review/items/${encodeURIComponent(id)}`);
        const list = el("ol", {class: "messages"});
        for (const m of data.conversation || []) {
          const li = el("li", {class: `msg msg-${m.role}${m.id === id ? " msg-review" : ""}`},
                        el("div", {class: "msg-head"}, el("span", {class: "msg-role", text: m.role})),
                        el("div", {class: "msg-text", text: m.content}));
          list.append(li);
        }
        box.replaceChildren(list);
        box.classList.remove("muted", "small");
      } catch (err) {
        box.textContent = `Could not load the conversation: ${errorText(err)}`;
      }
    });
    section.querySelector(".adj-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = ev.target;
      const scores = {};
      form.querySelectorAll("select").forEach(s => { scores[s.name] = Number(s.value); });
      const comment = form.querySelector('[name="comment"]').value.trim() || null;
      try {
        await api("POST", `/api/review/adjudication/${encodeURIComponent(id)}`, {scores, comment});
        toast("Final scores recorded.");
        section.remove();
      } catch (err) { toast(errorText(err), "error"); }
    });
  }

  loadAgreement();
})();

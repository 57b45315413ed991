// Admin pages: user creation and adjudication decisions. Writes go through the JSON APIs.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);

  // -------------------------------------------------------------- registry: what serving runs right now
  const serving = $("serving-now");
  async function servingNow() {
    try {
      const res = await fetch("/readyz", {credentials: "same-origin"});
      const body = await res.json();
      serving.textContent = `serving: ${body.model_version}`;
    } catch (_) { serving.textContent = "serving: unknown"; }
  }
  if (serving) { servingNow(); setInterval(servingNow, 3000); }

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
      const fixed = form.querySelector('[name="correction"]');
      const body = {scores, comment};
      if (fixed && fixed.value.trim()) body.correction = fixed.value.trim();
      try {
        await api("POST", `/api/review/adjudication/${encodeURIComponent(id)}`, body);
        toast("Final scores recorded.");
        section.remove();
      } catch (err) { toast(errorText(err), "error"); }
    });
  }

})();

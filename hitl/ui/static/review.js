// The reviewer page: claim, read, rate, correct, compare, flag, comment, skip, submit — keyboard first.
"use strict";
(() => {
  const main = document.getElementById("main");
  const DIMS = JSON.parse(main.dataset.dimensions);
  const $ = (id) => document.getElementById(id);
  const item$ = $("item"), empty$ = $("empty"), banner$ = $("banner"), formError$ = $("form-error");
  const correction$ = $("correction"), comment$ = $("comment"), diff$ = $("diff");
  const R = (id) => `/api/review/items/${encodeURIComponent(id)}`;

  const state = {
    item: null, original: "", activeDim: 0, candidates: null, choice: null, busy: false,
    leaseTimer: null, expired: false,
  };

  // ------------------------------------------------------------------ progress counter
  async function refreshProgress() {
    try {
      const {data} = await api("GET", "/ui/api/progress");
      $("reviewed-today").textContent = data.reviewed_today ?? "–";
      $("left-in-queue").textContent = data.left_in_queue ?? "–";
    } catch (_) { /* counter only */ }
  }

  // ------------------------------------------------------------------ claim / render
  function showEmpty(title, text) {
    state.item = null;
    item$.hidden = true;
    empty$.hidden = false;
    $("empty-title").textContent = title;
    $("empty-text").textContent = text;
    $("lease").hidden = true;
    clearInterval(state.leaseTimer);
    document.title = "Review · hitl";
    $("claim").focus();
  }

  function showBanner(text, kind = "warn", actions = []) {
    banner$.replaceChildren(el("span", {text}));
    for (const [label, fn] of actions) {
      const b = el("button", {type: "button", class: "btn btn-sm", text: label});
      b.addEventListener("click", fn);
      banner$.append(" ", b);
    }
    banner$.className = "alert alert-" + kind;
    banner$.hidden = false;
  }

  function hideBanner() { banner$.hidden = true; }

  // The reviewer's unsent work, kept across a re-claim of the same item (e.g. after a lease ran out).
  function saveDraft() {
    if (!state.item) return null;
    return {
      id: state.item.message_id, scores: scores(), correction: correction$.value, comment: comment$.value,
      flags: [...document.querySelectorAll('input[name="flag"]:checked')].map(i => i.value),
    };
  }

  function restoreDraft(draft) {
    for (const [d, v] of Object.entries(draft.scores)) {
      const input = document.getElementById(`dim-${d}-${v}`);
      if (input) input.checked = true;
    }
    correction$.value = draft.correction;
    comment$.value = draft.comment;
    for (const input of document.querySelectorAll('input[name="flag"]')) input.checked = draft.flags.includes(input.value);
    updateDiff();
    toast("Item claimed again; your unsent work is restored.");
  }

  async function claim() {
    if (state.busy) return;
    state.busy = true;
    const draft = state.expired ? saveDraft() : null;
    hideBanner();
    try {
      const res = await api("POST", "/api/review/claim");
      if (res.status === 204 || !res.data) {
        showEmpty("The queue is empty", "Nothing is waiting for review right now. Check back later.");
      } else {
        render(res.data);
        if (draft && draft.id === res.data.message_id) restoreDraft(draft);
      }
    } catch (err) {
      showEmpty("Could not claim an item", errorText(err));
    } finally {
      state.busy = false;
      refreshProgress();
    }
  }

  // a tool call as the model made it: the function's name and its arguments (pretty-printed when they are JSON)
  function toolCall(call) {
    const fn = call.function || {};
    let args = fn.arguments || "";
    try { args = JSON.stringify(JSON.parse(args), null, 2); } catch (_) { /* shown as written */ }
    return el("div", {class: "msg-tool-call"},
      el("div", {class: "msg-head"}, el("span", {class: "badge badge-accent", text: "tool call"}),
        el("code", {text: fn.name || "?"}), el("span", {class: "muted small", text: call.id || ""})),
      el("pre", {class: "msg-text", text: args}));
  }

  function render(item) {
    state.item = item;
    state.expired = false;
    state.candidates = null;
    state.choice = null;
    const messages = item.conversation || [];
    const reply = messages.find(m => m.id === item.message_id) || messages[messages.length - 1] || {content: ""};
    state.original = reply.content;

    const list = $("messages");
    list.replaceChildren();
    for (const m of messages) {
      const underReview = m.id === item.message_id;
      const li = el("li", {class: `msg msg-${m.role}${underReview ? " msg-review" : ""}`});
      const head = el("div", {class: "msg-head"}, el("span", {class: "msg-role", text: m.role}));
      if (underReview) head.append(el("span", {class: "badge badge-accent", text: "reply under review"}));
      if (m.model_version) head.append(el("span", {class: "muted small", text: `model ${m.model_version}`}));
      if (m.tool_call_id) head.append(el("span", {class: "badge", text: `result of ${m.tool_call_id}`}));
      if (m.content || !m.tool_calls) li.append(head, el("div", {class: "msg-text", text: m.content}));
      else li.append(head);
      for (const call of m.tool_calls || []) li.append(toolCall(call));
      if (underReview && m.tools && m.tools.length) {
        li.append(el("div", {class: "muted small", text: "tools offered: " +
          m.tools.map(t => (t.function && t.function.name) || t.type).join(", ")}));
      }
      list.append(li);
    }
    $("item-reason").textContent = (item.reason || "queued").replace("_", " ");
    $("item-reason").className = "badge badge-" + (item.reason || "queued");
    $("item-meta").textContent = `${item.message_id}`;

    correction$.value = state.original;
    updateDiff();
    comment$.value = "";
    for (const input of document.querySelectorAll("#review-form input")) input.checked = false;
    $("compare").hidden = true;
    $("cand-a").classList.remove("cand-chosen");
    $("cand-b").classList.remove("cand-chosen");
    for (const b of document.querySelectorAll(".choice")) b.setAttribute("aria-pressed", "false");
    formError$.textContent = "";
    setActiveDim(0);

    empty$.hidden = true;
    item$.hidden = false;
    startLease(item.lease_expires_at);
    document.title = "Reviewing · hitl";
    list.lastElementChild?.scrollIntoView({block: "nearest"});
    document.activeElement?.blur();
  }

  // ------------------------------------------------------------------ lease countdown
  function startLease(expiresAt) {
    clearInterval(state.leaseTimer);
    const end = new Date(expiresAt).getTime();
    const lease$ = $("lease"), out$ = $("lease-countdown");
    lease$.hidden = false;
    const tick = () => {
      const left = Math.max(0, Math.round((end - Date.now()) / 1000));
      out$.textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
      lease$.classList.toggle("lease-low", left <= 60);
      if (left === 0 && !state.expired) {
        state.expired = true;
        clearInterval(state.leaseTimer);
        lease$.classList.add("lease-expired");
        out$.textContent = "expired";
        showBanner("Your lease on this item expired, so it may now go to another reviewer. " +
                   "You can still try to submit; if it was taken, move on to the next item.", "warn",
                   [["Next item", () => claim()]]);
      }
    };
    tick();
    state.leaseTimer = setInterval(tick, 1000);
  }

  // ------------------------------------------------------------------ rubric
  function setActiveDim(i) {
    state.activeDim = Math.max(0, Math.min(DIMS.length - 1, i));
    document.querySelectorAll(".dim").forEach((f, j) => {
      f.classList.toggle("dim-active", j === state.activeDim);
      if (j === state.activeDim && state.item) f.scrollIntoView({block: "nearest"});
    });
  }

  function rate(value) {
    const dim = DIMS[state.activeDim];
    const input = document.getElementById(`dim-${dim}-${value}`);
    if (!input) return;
    input.checked = true;
    if (state.activeDim < DIMS.length - 1) setActiveDim(state.activeDim + 1);
  }

  function scores() {
    const out = {};
    for (const d of DIMS) {
      const checked = document.querySelector(`input[name="dim-${d}"]:checked`);
      if (checked) out[d] = Number(checked.value);
    }
    return out;
  }

  document.querySelectorAll(".dim").forEach((f, j) => {
    f.addEventListener("click", () => setActiveDim(j));
    f.addEventListener("focusin", () => setActiveDim(j));
  });

  // ------------------------------------------------------------------ correction diff
  function tokens(s) { return s.match(/^\s+|\S+\s*/g) || []; }  // words keep their trailing space

  function wordDiff(a, b) {
    const x = tokens(a), y = tokens(b);
    if (x.length * y.length > 4e6) return [["del", a], ["ins", b]];
    const n = x.length, m = y.length;
    const dp = Array.from({length: n + 1}, () => new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i--)
      for (let j = m - 1; j >= 0; j--)
        dp[i][j] = x[i] === y[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
    const ops = [];
    const push = (op, t) => {
      const last = ops[ops.length - 1];
      if (last && last[0] === op) last[1] += t; else ops.push([op, t]);
    };
    let i = 0, j = 0;
    while (i < n && j < m) {
      if (x[i] === y[j]) { push("eq", x[i]); i++; j++; }
      else if (dp[i + 1][j] >= dp[i][j + 1]) push("del", x[i++]);
      else push("ins", y[j++]);
    }
    while (i < n) push("del", x[i++]);
    while (j < m) push("ins", y[j++]);
    // each run of changes reads as "old text → new text": all deletions first, then all insertions
    const out = [];
    for (let k = 0; k < ops.length;) {
      if (ops[k][0] === "eq") { out.push(ops[k++]); continue; }
      let del = "", ins = "";
      while (k < ops.length && ops[k][0] !== "eq") {
        if (ops[k][0] === "del") del += ops[k][1]; else ins += ops[k][1];
        k++;
      }
      if (del) out.push(["del", del]);
      if (ins) out.push(["ins", ins]);
    }
    return out;
  }

  function updateDiff() {
    const now = correction$.value;
    if (now === state.original) {
      diff$.replaceChildren(el("span", {class: "muted", text: "No changes: the reply will not be corrected."}));
      $("diff-stat").textContent = "";
      return;
    }
    let added = 0, removed = 0;
    const frag = [];
    for (const [op, text] of wordDiff(state.original, now)) {
      if (op === "eq") frag.push(document.createTextNode(text));
      else {
        // whitespace-only edits stay visible: ⏎ for line breaks, · for spaces
        const shown = text.trim() ? text : text.replace(/ /g, "·").replace(/\n/g, "⏎\n");
        frag.push(el(op, {}, shown));
        if (op === "ins") added += text.trim().split(/\s+/).filter(Boolean).length;
        else removed += text.trim().split(/\s+/).filter(Boolean).length;
      }
    }
    diff$.replaceChildren(...frag);
    $("diff-stat").textContent = `(+${added} / −${removed} words)`;
  }

  correction$.addEventListener("input", updateDiff);
  $("reset-correction").addEventListener("click", () => { correction$.value = state.original; updateDiff(); });

  // ------------------------------------------------------------------ comparison
  async function compare() {
    if (!state.item || state.busy) return;
    const section = $("compare");
    section.hidden = false;
    if (state.candidates) { section.scrollIntoView({block: "nearest"}); return; }
    $("cand-a-text").textContent = "Generating…";
    $("cand-b-text").textContent = "Generating…";
    state.busy = true;
    try {
      const {data} = await api("POST", R(state.item.message_id) + "/candidates");
      state.candidates = data;
      $("cand-a-text").textContent = data[0].content || "(empty reply)";
      $("cand-b-text").textContent = data[1].content || "(empty reply)";
      section.scrollIntoView({block: "nearest"});
    } catch (err) {
      section.hidden = true;
      handleWriteError(err);
    } finally {
      state.busy = false;
    }
  }

  function choose(choice) {
    if (!state.candidates) return;
    state.choice = choice;
    for (const b of document.querySelectorAll(".choice"))
      b.setAttribute("aria-pressed", String(b.dataset.choice === choice));
    $("cand-a").classList.toggle("cand-chosen", choice === "a");
    $("cand-b").classList.toggle("cand-chosen", choice === "b");
  }

  $("compare-btn").addEventListener("click", compare);
  document.querySelectorAll(".choice").forEach(b => b.addEventListener("click", () => choose(b.dataset.choice)));

  // ------------------------------------------------------------------ submit / skip
  function handleWriteError(err) {
    if (err instanceof ApiError && [403, 404, 409, 410].includes(err.status)) {
      state.expired = true;
      showBanner(`This item is no longer yours: ${errorText(err)}`, "error", [["Next item", () => claim()]]);
    } else {
      formError$.textContent = errorText(err);
    }
  }

  async function submit() {
    if (!state.item || state.busy) return;
    const s = scores();
    const tags = [...document.querySelectorAll('input[name="flag"]:checked')].map(i => i.value);
    const corrected = correction$.value.trim() && correction$.value !== state.original;
    const comment = comment$.value.trim() || null;
    const rated = Object.keys(s).length;
    if (rated && rated < DIMS.length) {
      const missing = DIMS.filter(d => !(d in s));
      formError$.textContent = `Rate every dimension (missing: ${missing.join(", ")}).`;
      setActiveDim(DIMS.indexOf(missing[0]));
      return;
    }
    if (!rated && !tags.length && !corrected && !state.choice) {
      formError$.textContent = "Rate the reply (1–5 on each dimension), flag it, correct it — or skip it.";
      setActiveDim(0);
      return;
    }
    formError$.textContent = "";
    state.busy = true;
    $("submit").disabled = true;
    const id = state.item.message_id;
    try {
      if (corrected) await api("POST", R(id) + "/correction", {content: correction$.value});
      if (state.choice) await api("POST", R(id) + "/comparison", {
        candidate_a: state.candidates[0].candidate_id, candidate_b: state.candidates[1].candidate_id,
        choice: state.choice,
      });
      if (tags.length) await api("POST", R(id) + "/flag", {tags, comment: rated ? null : comment});
      if (rated) await api("POST", R(id) + "/rating", {scores: s, comment});
      else if (comment && !tags.length) await api("POST", R(id) + "/comment", {text: comment});
      await finish(id);
      toast("Submitted. Next item…");
      state.busy = false;
      await claim();
    } catch (err) {
      handleWriteError(err);
    } finally {
      state.busy = false;
      $("submit").disabled = false;
    }
  }

  // Close the claim as submitted when the API has an explicit step; otherwise the writes closed it.
  async function finish(id) {
    try {
      await api("POST", R(id) + "/submit");
    } catch (err) {
      if (!(err instanceof ApiError && [404, 405].includes(err.status))) throw err;
    }
  }

  async function skip() {
    if (!state.item || state.busy) return;
    state.busy = true;
    const id = state.item.message_id;
    try {
      try {
        await api("POST", R(id) + "/skip", {reason: comment$.value.trim() || null});
      } catch (err) {
        if (!(err instanceof ApiError && [404, 405].includes(err.status))) throw err;
        await api("POST", R(id) + "/release");
      }
      toast("Skipped.");
    } catch (err) {
      if (!(err instanceof ApiError && [403, 409, 410].includes(err.status))) {
        formError$.textContent = errorText(err);
        state.busy = false;
        return;
      }
    }
    state.busy = false;
    await claim();
  }

  $("review-form").addEventListener("submit", (ev) => { ev.preventDefault(); submit(); });
  $("skip").addEventListener("click", skip);
  $("claim").addEventListener("click", claim);

  // ------------------------------------------------------------------ keyboard
  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    const typing = t instanceof HTMLTextAreaElement || (t instanceof HTMLInputElement && t.type === "password");
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") { ev.preventDefault(); submit(); return; }
    if (ev.key === "Escape" && typing) { t.blur(); return; }
    if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key.toLowerCase();
    if (!state.item) {
      if (k === "n") { ev.preventDefault(); claim(); }
      return;
    }
    if (/^[1-5]$/.test(k)) { ev.preventDefault(); rate(Number(k)); return; }
    const actions = {
      j: () => setActiveDim(state.activeDim + 1), arrowdown: () => setActiveDim(state.activeDim + 1),
      k: () => setActiveDim(state.activeDim - 1), arrowup: () => setActiveDim(state.activeDim - 1),
      e: () => { correction$.focus(); correction$.setSelectionRange(correction$.value.length, correction$.value.length); },
      m: () => comment$.focus(),
      f: () => document.querySelector('input[name="flag"]')?.focus(),
      c: compare, s: skip, n: () => { if (state.expired) claim(); },
      a: () => choose("a"), b: () => choose("b"), t: () => choose("tie"),
      g: () => { const g = $("guidelines"); g.open = !g.open; },
      "?": () => { const h = $("shortcuts"); h.open = !h.open; },
    };
    if (actions[k] && !(t instanceof HTMLInputElement && t.type === "radio" && k.startsWith("arrow"))) {
      ev.preventDefault();
      actions[k]();
    }
  });

  // first visit: show the guidelines once
  if (!localStorage.getItem("hitl.seenGuidelines")) {
    $("guidelines").open = true;
    localStorage.setItem("hitl.seenGuidelines", "1");
  }
  refreshProgress();
  setInterval(refreshProgress, 30000);
  claim();
})();

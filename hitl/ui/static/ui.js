// Shared helpers: JSON API calls with the session cookie and the CSRF header, toasts, confirmations.
"use strict";
const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || "";

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.detail = detail;
  }
}

async function api(method, path, body) {
  const init = {method, credentials: "same-origin", headers: {"Accept": "application/json"}};
  if (method !== "GET") init.headers["X-CSRF-Token"] = CSRF;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    throw new ApiError(401, "signed out");
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!res.ok) throw new ApiError(res.status, (data && data.detail) || text || res.statusText);
  return {status: res.status, data};
}

function errorText(err) {
  if (!(err instanceof ApiError)) return String(err.message || err);
  if (Array.isArray(err.detail)) return err.detail.map(d => d.msg || JSON.stringify(d)).join("; ");
  return err.message;
}

let toastTimer = null;
function toast(message, kind = "ok") {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = message;
  el.className = "toast show toast-" + kind;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = "toast"; }, 3200);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// Buttons with data-api="METHOD /path" call the API (after data-confirm, if any) then reload or toast.
document.addEventListener("click", async (ev) => {
  const btn = ev.target.closest("[data-api]");
  if (!btn) return;
  ev.preventDefault();
  const [method, path] = btn.dataset.api.split(" ");
  if (btn.dataset.confirm && !window.confirm(btn.dataset.confirm)) return;
  let body = btn.dataset.body ? JSON.parse(btn.dataset.body) : undefined;
  if (btn.dataset.reason !== undefined) {
    const reason = window.prompt(btn.dataset.reason || "Reason (recorded in the history):", "");
    if (reason === null) return;
    body = Object.assign(body || {}, {reason});
  }
  btn.disabled = true;
  try {
    const res = await api(method, path, body);
    toast(btn.dataset.done || "Done.");
    if (btn.dataset.then === "reload") setTimeout(() => location.reload(), 400);
    if (btn.dataset.then === "show" && btn.dataset.target) {
      const target = document.getElementById(btn.dataset.target);
      target.hidden = false;
      target.textContent = JSON.stringify(res.data, null, 2);
    }
  } catch (err) {
    toast(errorText(err), "error");
  } finally {
    btn.disabled = false;
  }
});

// Pages showing unfinished work (data-refresh="seconds") reload themselves until it finishes.
const refresh = document.querySelector("[data-refresh]");
if (refresh) setTimeout(() => location.reload(), Number(refresh.dataset.refresh) * 1000);

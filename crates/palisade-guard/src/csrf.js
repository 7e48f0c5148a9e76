// Palisade's CSRF helper, put into pages by the gateway: it sends the page's token with every
// same-origin request that changes state (fetch, XMLHttpRequest, forms), and fetches a fresh one
// before the current one expires.
(() => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (!meta || window.__palisadeCsrf) return;
  window.__palisadeCsrf = true;
  const HEADER = "__HEADER__", FIELD = "__FIELD__", REFRESH = "__REFRESH__";
  let token = meta.content;
  let due = Date.now() + 1000 * Number(meta.dataset.refreshIn || 0);
  const safe = (m) => /^(GET|HEAD|OPTIONS|TRACE)$/i.test(m || "GET");
  const ours = (u) => {
    try { return new URL(u, location.href).origin === location.origin; } catch (e) { return false; }
  };
  const set = (t) => {
    if (!t || t === token) return;
    token = t;
    meta.content = t;
    document.querySelectorAll('input[name="' + FIELD + '"]').forEach((i) => { i.value = t; });
  };
  const send = window.fetch;
  const refresh = () => send.call(window, REFRESH, { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : null))
    .then((j) => { if (j) { set(j.token); due = Date.now() + 1000 * j.refresh_in; } })
    .catch(() => {});
  const fresh = () => (Date.now() < due ? Promise.resolve() : refresh());
  setInterval(() => { if (document.visibilityState === "visible") fresh(); }, 60000);
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") fresh(); });

  window.fetch = function (input, init) {
    const req = new Request(input, init);
    if (safe(req.method) || !ours(req.url)) return send.call(window, req);
    return fresh().then(() => {
      req.headers.set(HEADER, token);
      return send.call(window, req).then((r) => { set(r.headers.get(HEADER)); return r; });
    });
  };

  const open = XMLHttpRequest.prototype.open, xsend = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this.__palisade = !safe(method) && ours(url);
    return open.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    if (this.__palisade) {
      this.setRequestHeader(HEADER, token);
      this.addEventListener("load", () => set(this.getResponseHeader(HEADER)));
    }
    return xsend.apply(this, arguments);
  };

  let retried = null;
  document.addEventListener("submit", (e) => {
    const form = e.target, by = e.submitter;
    const method = (by && by.getAttribute("formmethod")) || form.getAttribute("method");
    const action = (by && by.getAttribute("formaction")) || form.action;
    if (safe(method) || !ours(action)) return;
    let field = form.querySelector('input[name="' + FIELD + '"]');
    if (!field) {
      field = document.createElement("input");
      field.type = "hidden";
      field.name = FIELD;
      form.prepend(field);
    }
    field.value = token;
    if (Date.now() >= due && retried !== form) {
      e.preventDefault();
      retried = form;
      refresh().then(() => {
        field.value = token;
        if (form.requestSubmit && by) form.requestSubmit(by); else form.submit();
      });
    }
  }, true);
})();

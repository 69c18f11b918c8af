// Runs the circuit viewer's script in node against a minimal DOM, so the tests can check what it draws.
//   node viewer_dom.js PAGE.html ACTIONS.json  ->  prints one JSON snapshot per action
// ACTIONS: a list of ["load"], ["toggle", checked] (the "before cleaning" box) or ["click", nodeId].
// A snapshot lists the drawn nodes (data-id or title, and whether faded), the edge paths, and the text of
// the side panel's tables; a script error exits non-zero with its message.
"use strict";
const fs = require("fs");
const vm = require("vm");

class ClassList {
  constructor(node) { this.node = node; }
  get set() { return new Set((this.node.attrs.class || "").split(/\s+/).filter(Boolean)); }
  contains(c) { return this.set.has(c); }
  add(c) { this.toggle(c, true); }
  toggle(c, on) {
    const s = this.set;
    if (on === undefined) on = !s.has(c);
    if (on) s.add(c); else s.delete(c);
    this.node.attrs.class = [...s].join(" ");
  }
}
class Node {
  constructor(tag) { this.tag = tag; this.attrs = {}; this.children = []; this.listeners = {}; this._text = ""; this.parent = null;
                     this.classList = new ClassList(this); }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; }
  append(...kids) {
    for (const k of kids) {
      const n = typeof k === "string" ? Object.assign(new Node("#text"), {_text: k}) : k;
      n.parent = this; this.children.push(n);
    }
  }
  replaceChildren(...kids) { this.children = []; this.append(...kids); }
  addEventListener(ev, fn) { (this.listeners[ev] = this.listeners[ev] || []).push(fn); }
  dispatch(ev) { for (const fn of this.listeners[ev] || []) fn({target: this}); }
  set textContent(t) { this.children = []; this._text = String(t); }
  get textContent() { return this._text + this.children.map(c => c.textContent).join(""); }
  get clientWidth() { return 800; }
  walk(fn) { fn(this); for (const c of this.children) c.walk(fn); }
}

const page = fs.readFileSync(process.argv[2], "utf8");
const actions = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
const scripts = [...page.matchAll(/<script([^>]*)>([\s\S]*?)<\/script>/g)];
const ids = {};
for (const id of ["head", "graph", "detail", "summary"]) ids[id] = new Node("div");
const data = scripts.find(s => s[1].includes('id="circuit-data"'));
ids["circuit-data"] = Object.assign(new Node("script"), {_text: data[2]});
const document = {
  getElementById: id => {
    if (id in ids) return ids[id];
    let found = null;
    for (const root of Object.values(ids)) root.walk(n => { if (!found && n.attrs.id === id) found = n; });
    return found;
  },
  createElement: tag => new Node(tag),
  createElementNS: (ns, tag) => new Node(tag),
};
const code = scripts.filter(s => !s[1].includes("application/json")).map(s => s[2]).join("\n");

function snapshot() {
  const nodes = [], edges = [], resid = [];
  ids.graph.walk(n => {
    if ((n.tag === "circle" || n.tag === "rect") && n.attrs["data-id"]) {
      const faded = n.parent && n.parent.classList.contains("removed");
      nodes.push({id: n.attrs["data-id"], faded: !!faded, selected: n.classList.contains("sel")});
    } else if (n.tag === "g" && n.classList.contains("removed")) {
      const title = n.children.find(c => c.tag === "title");
      nodes.push({id: title.textContent.replace(/ \(removed by cleaning\)$/, ""), faded: true, selected: false});
    }
    if (n.tag === "path") {
      const title = n.children.find(c => c.tag === "title");
      const rec = {title: title ? title.textContent : "", faded: n.classList.contains("removed")};
      (n.classList.contains("resid") ? resid : edges).push(rec);
    }
  });
  const tables = side => {
    const out = [];
    side.walk(n => { if (n.tag === "tr") out.push(n.children.map(c => c.textContent)); });
    return out;
  };
  const headings = [];
  ids.summary.walk(n => { if (n.tag === "h3") headings.push(n.textContent); });
  return {nodes, edges, resid, header: ids.head.textContent, summary_headings: headings,
          summary_rows: tables(ids.summary), detail_rows: tables(ids.detail)};
}

try {
  vm.runInNewContext(code, {document, console, Math, JSON, Number, Object, Set, Array, String, parseInt});
  const out = [];
  for (const [kind, arg] of actions) {
    if (kind === "toggle") {
      const cb = document.getElementById("before");
      if (!cb) throw new Error("no 'before cleaning' checkbox");
      cb.checked = arg; cb.dispatch("change");
    } else if (kind === "click") {
      let target = null;
      ids.graph.walk(n => { if (!target && n.attrs["data-id"] === arg) target = n.parent; });
      if (!target) throw new Error("no node " + arg);
      target.dispatch("click");
    }
    out.push(snapshot());
  }
  process.stdout.write(JSON.stringify(out));
} catch (e) {
  process.stderr.write(String(e && e.stack || e) + "\n");
  process.exit(1);
}

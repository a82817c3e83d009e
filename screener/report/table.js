(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("rows-data").textContent);
  var table = document.getElementById("rows-table");
  var body = table.querySelector("tbody");
  var count = document.getElementById("rows-count");
  var search = document.getElementById("rows-search");
  var filters = ["trait", "category", "cluster", "file"];
  var state = { q: "", trait: "", category: "", cluster: "", file: "", sort: "risk", desc: "1" };

  function text(value) { return value === null || value === undefined ? "" : String(value); }
  function cell(row, value, numeric) {
    var td = document.createElement("td");
    td.textContent = numeric && typeof value === "number" ? value.toFixed(2) : text(value);
    if (numeric) { td.className = "num"; }
    row.appendChild(td);
  }
  function key(row, name) {
    return Object.prototype.hasOwnProperty.call(row.scores, name) ? row.scores[name] : row[name];
  }
  function keep(row) {
    if (state.trait && row.traits.indexOf(state.trait) < 0) { return false; }
    if (state.category && row.category !== state.category) { return false; }
    if (state.cluster && text(row.cluster) !== state.cluster) { return false; }
    if (state.file && row.file !== state.file) { return false; }
    if (!state.q) { return true; }
    var needle = state.q.toLowerCase();
    return [row.id, row.file, row.category, row.prompt, row.response].some(function (v) {
      return text(v).toLowerCase().indexOf(needle) >= 0;
    });
  }
  function render() {
    var shown = data.rows.filter(keep);
    var sign = state.desc === "1" ? -1 : 1;
    shown.sort(function (a, b) {
      var x = key(a, state.sort), y = key(b, state.sort);
      if (x === y) { return a.order - b.order; }
      if (x === null || x === undefined) { return 1; }
      if (y === null || y === undefined) { return -1; }
      return (x < y ? -1 : 1) * sign;
    });
    body.textContent = "";
    shown.forEach(function (row) {
      var tr = document.createElement("tr");
      cell(tr, row.id); cell(tr, row.file + ":" + row.line); cell(tr, row.risk, true);
      cell(tr, row.category); cell(tr, row.cluster); cell(tr, row.traits.join(", "));
      data.traits.forEach(function (trait) { cell(tr, row.scores[trait], true); });
      cell(tr, row.prompt); cell(tr, row.response);
      body.appendChild(tr);
    });
    count.textContent = shown.length + " of " + data.rows.length + " rows shown";
    table.querySelectorAll("th[data-key]").forEach(function (th) {
      th.setAttribute("aria-sort", th.dataset.key !== state.sort ? "none"
        : (state.desc === "1" ? "descending" : "ascending"));
    });
  }
  function fromHash() {
    var hash = location.hash, at = hash.indexOf("?");
    if (hash.slice(0, at < 0 ? hash.length : at) !== "#rows") { return; }
    new URLSearchParams(at < 0 ? "" : hash.slice(at + 1)).forEach(function (value, name) {
      if (Object.prototype.hasOwnProperty.call(state, name)) { state[name] = value; }
    });
    search.value = state.q;
    filters.forEach(function (name) { document.getElementById("rows-" + name).value = state[name]; });
  }
  filters.forEach(function (name) {
    var select = document.getElementById("rows-" + name);
    data.options[name].forEach(function (value) {
      var option = document.createElement("option");
      option.value = value; option.textContent = value;
      select.appendChild(option);
    });
    select.addEventListener("change", function () { state[name] = select.value; render(); });
  });
  search.addEventListener("input", function () { state.q = search.value; render(); });
  table.querySelectorAll("th[data-key]").forEach(function (th) {
    th.addEventListener("click", function () {
      state.desc = th.dataset.key === state.sort && state.desc === "1" ? "0" : "1";
      state.sort = th.dataset.key;
      render();
    });
  });
  window.addEventListener("hashchange", function () {
    fromHash();
    render();
    document.getElementById("rows").scrollIntoView();
  });
  fromHash();
  render();
  if (location.hash.indexOf("#rows?") === 0) { document.getElementById("rows").scrollIntoView(); }
})();

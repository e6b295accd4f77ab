// Client-side sorting and filtering of the leaderboard table. Inlined into the page: no fetches.
(function () {
  "use strict";
  var table = document.getElementById("leaderboard");
  if (!table) { return; }
  var tbody = table.tBodies[0];
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var filter = document.getElementById("filter");
  var shown = document.getElementById("shown");

  // The value a cell sorts by: its data-sort attribute (the raw mean) or its text; null = missing.
  function sortKey(row, column, numeric) {
    var cell = row.cells[column];
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    if (numeric) {
      var number = parseFloat(raw);
      return isNaN(number) ? null : number;
    }
    return raw === "" ? null : raw.toLowerCase();
  }

  function sortBy(column) {
    var header = headers[column];
    var numeric = header.getAttribute("data-type") === "num";
    var current = header.getAttribute("aria-sort");
    // A fresh column starts with big numbers first (most columns: higher is better) or text A-Z;
    // clicking the sorted column again flips the direction.
    var ascending = current ? current !== "ascending" : !numeric;
    headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var decorated = Array.prototype.map.call(tbody.rows, function (row, index) {
      return { row: row, index: index, key: sortKey(row, column, numeric) };
    });
    decorated.sort(function (a, b) {
      if (a.key === null || b.key === null) {  // missing values go last in both directions
        return a.key === b.key ? a.index - b.index : (a.key === null ? 1 : -1);
      }
      var order = numeric ? a.key - b.key : a.key.localeCompare(b.key, undefined, { numeric: true });
      if (order === 0) { return a.index - b.index; }  // stable: ties keep the previous order
      return ascending ? order : -order;
    });
    decorated.forEach(function (d) { tbody.appendChild(d.row); });
  }

  headers.forEach(function (header, column) {
    header.addEventListener("click", function () { sortBy(column); });
    header.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(column); }
    });
  });

  // Every whitespace-separated term must occur somewhere in the row's text (case-insensitive).
  function applyFilter() {
    var terms = (filter ? filter.value : "").toLowerCase().split(/\s+/).filter(Boolean);
    var visible = 0;
    Array.prototype.forEach.call(tbody.rows, function (row) {
      var text = row.textContent.toLowerCase();
      var match = terms.every(function (term) { return text.indexOf(term) !== -1; });
      row.hidden = !match;
      if (match) { visible += 1; }
    });
    if (shown) { shown.textContent = visible + " of " + tbody.rows.length + " entries shown"; }
  }

  if (filter) { filter.addEventListener("input", applyFilter); }
  applyFilter();
}());

// engine review console: keyboard shortcuts. Elements declare their key with data-key; a button
// or link is clicked, a field is focused. j/k move through table rows that carry data-row.
(function () {
  "use strict";
  var selected = -1;

  function rows() { return Array.prototype.slice.call(document.querySelectorAll("tr[data-row]")); }

  function select(index) {
    var all = rows();
    if (!all.length) { return; }
    selected = Math.max(0, Math.min(all.length - 1, index));
    all.forEach(function (row, i) { row.classList.toggle("selected", i === selected); });
    all[selected].scrollIntoView({block: "nearest"});
  }

  function inField(target) {
    return target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT");
  }

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (inField(target)) {
      if (event.key === "Escape") { target.blur(); }
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target.form) {
        event.preventDefault();
        target.form.requestSubmit();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (event.key === "?") {
      var help = document.getElementById("help");
      if (help && help.showModal) { if (help.open) { help.close(); } else { help.showModal(); } }
      return;
    }
    if (event.key === "j" || event.key === "k") {
      if (rows().length) { event.preventDefault(); select(selected + (event.key === "j" ? 1 : -1)); }
      return;
    }
    if (event.key === "Enter" && selected >= 0) {
      var row = rows()[selected];
      if (row) { event.preventDefault(); window.location.href = row.getAttribute("data-row"); }
      return;
    }
    var element = document.querySelector('[data-key="' + event.key.replace(/["\\]/g, "") + '"]');
    if (!element) { return; }
    event.preventDefault();
    if (inField(element)) {
      element.focus();
      if (element.select) { element.select(); }
    } else {
      element.click();
    }
  });

  document.addEventListener("click", function (event) {
    var row = event.target.closest && event.target.closest("tr[data-row]");
    if (row && !event.target.closest("a")) { window.location.href = row.getAttribute("data-row"); }
  });

  // a pressed button cannot be pressed twice while its form is on its way
  document.addEventListener("submit", function (event) {
    var buttons = event.target.querySelectorAll("button");
    setTimeout(function () { buttons.forEach(function (b) { b.disabled = true; }); }, 0);
  });
})();

// The live dashboard: polls /api/state every second and redraws. Read-only;
// the bearer token (when the endpoint needs one) comes from ?token= once and
// is then kept in memory only, and sent in the Authorization header.
(function () {
  "use strict";
  var params = new URLSearchParams(window.location.search);
  var token = params.get("token") || "";
  if (token) window.history.replaceState(null, "", window.location.pathname);
  var chart = null;
  var shownRounds = 0;

  function el(id) { return document.getElementById(id); }
  function text(id, value) { el(id).textContent = value; }
  function pct(x) { return (100 * x).toFixed(1) + "%"; }
  function cell(row, value, tag) {
    var c = document.createElement(tag || "td");
    c.textContent = value;
    row.appendChild(c);
  }
  function table(id, header, rows) {
    var t = el(id);
    t.textContent = "";
    var h = document.createElement("tr");
    header.forEach(function (x) { cell(h, x, "th"); });
    t.appendChild(h);
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      r.forEach(function (x) { cell(tr, x); });
      t.appendChild(tr);
    });
  }

  function drawChart(rounds) {
    var done = rounds.filter(function (r) { return r.test_accuracy !== null; });
    var data = [
      done.map(function (r) { return r.round; }),
      done.map(function (r) { return r.test_accuracy; }),
      done.map(function (r) { return r.test_loss; }),
    ];
    if (chart && shownRounds === done.length) return;
    if (chart) chart.destroy();
    var width = Math.max(400, Math.min(1100, window.innerWidth - 80));
    chart = new uPlot({
      width: width, height: 260,
      scales: { x: { time: false }, acc: { range: [0, 1] } },
      axes: [
        { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] },
        { scale: "acc", label: "test accuracy", values: function (u, v) { return v.map(function (x) { return pct(x); }); } },
        { scale: "loss", label: "test loss", side: 1, grid: { show: false } },
      ],
      series: [
        {},
        { label: "test accuracy", scale: "acc", stroke: "#2a7ae2", width: 2, points: { show: true } },
        { label: "test loss", scale: "loss", stroke: "#d9822b", width: 2, points: { show: true } },
      ],
    }, data, el("chart"));
    shownRounds = done.length;
    // For the browser test: how many rounds the chart holds.
    el("chart").dataset.rounds = String(shownRounds);
  }

  function render(s) {
    text("title", "Flotilla: " + s.federation);
    text("subtitle", s.model_arch + ", strategy " + s.strategy + ", up " + Math.round(s.uptime_seconds) + " s" +
         (s.finished ? " (federation finished)" : ""));
    text("round", s.round + " / " + s.rounds_planned);
    el("round").dataset.round = String(s.round);
    var expected = s.selected || 0, got = s.reporting || 0;
    el("round-progress").style.width = (s.round_active && expected > 0 ? 100 * got / expected : 0) + "%";
    text("round-detail", s.round_active ? got + " of " + expected + " updates" :
         (s.checked_in > 0 ? s.checked_in + " checked in" : "between rounds"));
    text("version", String(s.model_version));
    text("connected", String(s.connected));
    text("devices-detail", s.registered + " registered, " + s.paused + " paused");
    var last = null;
    s.rounds.forEach(function (r) { if (r.test_accuracy !== null) last = r; });
    text("accuracy", last ? pct(last.test_accuracy) : "-");
    if (s.epsilon_budget > 0) {
      text("epsilon", s.epsilon_spent.toFixed(2) + " of " + s.epsilon_budget);
      el("epsilon-bar").style.width = Math.min(100, 100 * s.epsilon_spent / s.epsilon_budget) + "%";
    }
    drawChart(s.rounds);
    var recent = s.rounds.slice(-10).reverse();
    table("rounds", ["round", "outcome", "updates", "accuracy", "seconds"], recent.map(function (r) {
      return [r.round, r.completed ? "completed" : "failed", r.received + "/" + r.selected,
              r.test_accuracy === null ? "-" : pct(r.test_accuracy), r.seconds.toFixed(1)];
    }));
    var versions = s.rounds.filter(function (r) { return r.completed; }).slice(-10).reverse();
    table("versions", ["version", "round", "signed by key"], versions.map(function (r) {
      return [r.model_version, r.round, s.signing_key_fingerprint];
    }));
    var reasons = Object.keys(s.rejected).sort();
    table("rejected", ["reason", "count"], reasons.map(function (k) { return [k, s.rejected[k]]; }));
    text("error", "");
    document.body.dataset.loaded = "1";
  }

  function poll() {
    var headers = token ? { "Authorization": "Bearer " + token } : {};
    fetch("api/state", { headers: headers, cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) throw new Error("401: open this page with ?token=YOUR_TOKEN");
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(render)
      .catch(function (e) { text("error", "cannot read the aggregator's state: " + e.message); })
      .finally(function () { window.setTimeout(poll, 1000); });
  }
  poll();
})();

// Draws a Flotilla run report with uPlot from the runs' JSON in
// #report-data (written by report/html.cc; fields in report/run_data.h).
// When every chart is drawn it adds #report-ok; if anything throws, it
// shows #report-error with the message (the browser test looks for both).
(function () {
  'use strict';

  var PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
                 '#bcbd22', '#17becf'];
  // Ticks on the round axis: whole rounds only.
  var ROUND_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];
  // Participation and round-time series within one run.
  var STAGE_COLORS = ['#444444', '#2ca02c', '#ff7f0e', '#d62728', '#9467bd'];

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function fail(message) {
    if (document.getElementById('report-error')) return;
    var e = el('div', {id: 'report-error'}, 'The report could not be drawn: ' + message);
    document.body.insertBefore(e, document.body.firstChild);
  }
  window.addEventListener('error', function (ev) { fail(ev.message); });

  function hasValues(values) {
    return !!values && values.some(function (v) { return v !== null; });
  }
  function scaled(values, factor) {
    return values.map(function (v) { return v === null ? null : v * factor; });
  }
  function lastValue(values) {
    if (!values) return null;
    for (var i = values.length - 1; i >= 0; --i) if (values[i] !== null) return values[i];
    return null;
  }
  function sum(values) {
    if (!values) return null;
    return values.reduce(function (a, v) { return a + (v === null ? 0 : v); }, 0);
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || (typeof v === 'number' && !isFinite(v))) return '–';
    if (typeof v !== 'number') return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e6) return String(v);
    return v.toPrecision(digits || 4).replace(/\.?0+$/, '');
  }

  function chartWidth(small) {
    var full = Math.max(360, Math.min(1100, document.documentElement.clientWidth - 70));
    return small ? Math.max(360, Math.floor((full - 24) / 2)) : full;
  }

  // lines: [{label, x, y, color, dash}], each on its run's rounds.
  // fromZero: the y axis starts at 0 (counts, bytes, seconds, epsilon).
  function drawChart(parent, title, yLabel, lines, small, fromZero) {
    var box = el('div', {'class': 'chart'});
    parent.appendChild(box);
    if (title) box.appendChild(el('h3', null, title));
    var data = uPlot.join(lines.map(function (l) { return [l.x, l.y]; }));
    var series = [{label: 'round'}].concat(lines.map(function (l) {
      return {
        label: l.label, stroke: l.color, width: 1.6, dash: l.dash, spanGaps: true,
        points: {size: 4}, value: function (u, v) { return fmt(v); }
      };
    }));
    var opts = {
      width: chartWidth(small), height: small ? 220 : 280,
      scales: fromZero ? {x: {time: false}, y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.08 : 1]; }}}
                       : {x: {time: false}},
      axes: [{label: 'round', incrs: ROUND_STEPS}, {label: yLabel, size: 64}],
      series: series,
      legend: {live: true},
      cursor: {drag: {x: true, y: false}}
    };
    return new uPlot(opts, data, box);
  }

  function missingNotes(parent, runs, key) {
    runs.forEach(function (run) {
      if (run.missing && run.missing[key]) {
        parent.appendChild(el('div', {'class': 'missing'},
                              (runs.length > 1 ? run.label + ': ' : 'Not in this run: ') + run.missing[key]));
      }
    });
  }

  // A section with one chart of every run's lines (overlay), or one chart
  // per run (perRun) when a run has several series of its own.
  function section(root, runs, key, heading, yLabel, linesOf, perRun, fromZero) {
    root.appendChild(el('h2', null, heading));
    var notes = el('div');
    root.appendChild(notes);
    missingNotes(notes, runs, key);
    var present = runs.filter(function (run) { return !(run.missing && run.missing[key]); });
    var charts = el('div', {'class': 'charts'});
    root.appendChild(charts);
    var drawn = 0;
    if (perRun) {
      present.forEach(function (run) {
        var lines = linesOf(run, runs.indexOf(run));
        if (lines.length) {
          drawChart(charts, runs.length > 1 ? run.label : null, yLabel, lines, runs.length > 1, fromZero);
          ++drawn;
        }
      });
    } else {
      var lines = [];
      present.forEach(function (run) { lines = lines.concat(linesOf(run, runs.indexOf(run))); });
      if (lines.length) {
        drawChart(charts, null, yLabel, lines, false, fromZero);
        ++drawn;
      }
    }
    if (!drawn && !notes.childNodes.length) notes.appendChild(el('div', {'class': 'missing'}, 'Nothing to plot here.'));
    return drawn;
  }

  function line(run, index, name, label, dash, factor) {
    var y = run.series[name];
    if (!hasValues(y)) return [];
    return [{x: run.rounds, y: factor ? scaled(y, factor) : y, label: label, color: PALETTE[index % PALETTE.length],
             dash: dash}];
  }
  function named(runs, run, what) { return runs.length > 1 ? run.label + ' ' + what : what; }

  function summaryTable(table, runs) {
    var head = el('tr');
    ['run', 'source', 'rounds', 'strategy', 'partition', 'DP', 'final test accuracy', 'epsilon spent / budget',
     'MB in / out', 'seconds'].forEach(function (h) { head.appendChild(el('th', null, h)); });
    table.appendChild(head);
    runs.forEach(function (run, i) {
      var s = run.summary || {};
      var tr = el('tr');
      var name = el('td');
      name.appendChild(el('span', {'class': 'swatch', style: 'background:' + PALETTE[i % PALETTE.length]}));
      name.appendChild(document.createTextNode(run.label));
      name.title = run.dir;
      tr.appendChild(name);
      var accuracy = s.final_test_accuracy !== undefined ? s.final_test_accuracy : lastValue(run.series.test_accuracy);
      var epsilon = s.epsilon_spent ? s.epsilon_spent : lastValue(run.series.epsilon);
      var bytesIn = s.bytes_in !== undefined ? s.bytes_in : sum(run.series.bytes_in);
      var bytesOut = s.bytes_out !== undefined ? s.bytes_out : sum(run.series.bytes_out);
      var seconds = s.seconds !== undefined ? s.seconds : sum(run.series.seconds);
      [run.source, run.rounds.length, s.strategy, s.partition, s.dp,
       fmt(accuracy), fmt(epsilon) + ' / ' + fmt(run.epsilon_budget),
       bytesIn === null ? '–' : fmt(bytesIn / 1e6, 3) + ' / ' + fmt(bytesOut / 1e6, 3), fmt(seconds, 3)]
          .forEach(function (v) { tr.appendChild(el('td', null, v === undefined ? '–' : fmt(v))); });
      table.appendChild(tr);
    });
  }

  function draw() {
    var runs = JSON.parse(document.getElementById('report-data').textContent);
    document.getElementById('subtitle').textContent =
        runs.length > 1 ? runs.length + ' runs overlaid' : '1 run: ' + runs[0].dir;
    summaryTable(document.getElementById('runs'), runs);
    var root = document.getElementById('plots');
    var charts = 0;

    charts += section(root, runs, 'accuracy', 'Test accuracy', 'accuracy', function (run, i) {
      return line(run, i, 'test_accuracy', run.label);
    });
    charts += section(root, runs, 'loss', 'Loss', 'loss', function (run, i) {
      return line(run, i, 'test_loss', named(runs, run, 'test'))
          .concat(line(run, i, 'train_loss', named(runs, run, 'train'), [6, 4]));
    });
    charts += section(root, runs, 'participation', 'Participation and dropouts', 'devices', function (run) {
      var out = [];
      [['selected', 'selected'], ['received', 'received'], ['declined', 'declined'], ['refused', 'refused'],
       ['unreported', 'unreported']].forEach(function (pair, k) {
        if (run.series[pair[0]]) {
          out.push({x: run.rounds, y: run.series[pair[0]], label: pair[1], color: STAGE_COLORS[k],
                    dash: k === 0 ? [6, 4] : undefined});
        }
      });
      return out;
    }, true, true);
    charts += section(root, runs, 'bytes', 'Bytes on the wire (aggregator)', 'MB', function (run, i) {
      return line(run, i, 'bytes_in', named(runs, run, 'in'), undefined, 1e-6)
          .concat(line(run, i, 'bytes_out', named(runs, run, 'out'), [6, 4], 1e-6));
    }, false, true);
    charts += section(root, runs, 'round_time', 'Round time', 'seconds', function (run) {
      var out = [];
      [['selection_seconds', 'waiting (selection)'], ['train_seconds', 'training'], ['merge_seconds', 'merging'],
       ['seconds', 'total']].forEach(function (pair, k) {
        if (hasValues(run.series[pair[0]])) {
          out.push({x: run.rounds, y: run.series[pair[0]], label: pair[1], color: STAGE_COLORS[(k + 1) % 5],
                    dash: pair[0] === 'seconds' ? [6, 4] : undefined});
        }
      });
      return out;
    }, true, true);
    charts += section(root, runs, 'epsilon', 'Privacy: epsilon spent', 'epsilon', function (run, i) {
      var out = line(run, i, 'epsilon', named(runs, run, 'epsilon'));
      if (run.epsilon_budget !== null && out.length) {
        out.push({x: run.rounds, y: run.rounds.map(function () { return run.epsilon_budget; }),
                  label: named(runs, run, 'budget'), color: PALETTE[i % PALETTE.length], dash: [2, 4]});
      }
      return out;
    }, false, true);

    var ok = el('div', {id: 'report-ok', hidden: ''});
    ok.setAttribute('data-charts', String(charts));
    document.body.appendChild(ok);
  }

  try {
    draw();
  } catch (e) {
    fail(e && e.stack ? e.stack : String(e));
  }
})();

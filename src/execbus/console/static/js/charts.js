// The charts, drawn with the vendored uPlot (a global from uPlot.iife.min.js).
const RESULT_COLOURS = {
  new: "#5b8def", ok: "#2e9d5b", nonzero: "#d9822b", signalled: "#b04fc2", timed_out: "#c9a400", failed: "#d64545",
};

let rate = null;
let latency = null;

function width(node) {
  return Math.max(320, node.clientWidth || 800);
}

function series(name, colour, label, points = false) {
  return { label: label || name, stroke: colour, width: 1.5, spanGaps: points, points: { show: points, size: 5 } };
}

function make(node, opts, data) {
  node.replaceChildren();
  return new window.uPlot({ width: width(node), height: 220, ...opts }, data, node);
}

function countPoints(data) {
  let n = 0;
  for (let s = 1; s < data.length; s++) for (const v of data[s]) if (v !== null && v > 0) n++;
  return n;
}

export function drawCharts(stats) {
  if (!window.uPlot || !stats) return;
  const rateNode = document.getElementById("chart-rate");
  const latNode = document.getElementById("chart-latency");
  if (!rateNode || rateNode.offsetParent === null) return; // hidden: draw when shown
  const r = stats.rate;
  const keys = ["new", "ok", "nonzero", "signalled", "timed_out", "failed"];
  const rateData = [r.t, ...keys.map((k) => r[k])];
  if (!rate) {
    rate = make(rateNode, {
      series: [{}, ...keys.map((k) => series(k, RESULT_COLOURS[k], k === "new" ? "new execs/s" : `${k}/s`))],
      axes: [{}, { label: "per second" }],
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    }, rateData);
  } else rate.setData(rateData);
  rateNode.dataset.points = String(countPoints(rateData));
  const l = stats.latency;
  const latData = [l.t, l.p50, l.p90, l.p99, l.e2e_p99];
  if (!latency) {
    latency = make(latNode, {
      series: [{}, series("p50", "#2e9d5b", "p50", true), series("p90", "#d9822b", "p90", true),
        series("p99", "#d64545", "p99", true), series("e2e p99", "#5b8def", "created→exit p99", true)],
      axes: [{}, { label: "seconds" }],
      scales: { y: { range: (u, min, max) => [0, Math.max(0.001, max || 0)] } },
    }, latData);
  } else latency.setData(latData);
  latNode.dataset.points = String(countPoints(latData));
}

export function resizeCharts() {
  for (const [chart, id] of [[rate, "chart-rate"], [latency, "chart-latency"]]) {
    const node = document.getElementById(id);
    if (chart && node) chart.setSize({ width: width(node), height: 220 });
  }
}

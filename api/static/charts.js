// The job page's curves: one uPlot chart per figure, step on the x axis, fed row by row (history from
// GET /v1/jobs/{id}/metrics, then each `metrics` event) without reloading anything.
import { formatNumber, h, replace } from "./dom.js";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d"];

// What the worker writes (grpo_core/trainer.py step_metrics, evaluate): train rows every step, eval rows before
// training (step 0), every eval_every steps and after the last.
export const CHARTS = [
  {
    key: "reward",
    title: "Reward",
    kind: "train",
    names: (keys) => ["reward_mean", ...keys.filter((k) => k.startsWith("reward/")).sort()],
  },
  { key: "kl", title: "KL to the reference", kind: "train", names: () => ["kl"] },
  {
    key: "length",
    title: "Completion length (tokens)",
    kind: "train",
    names: () => ["completion_length_mean", "completion_length_max"],
  },
  { key: "clip", title: "Clip fraction", kind: "train", names: () => ["clip_fraction_low", "clip_fraction_high"] },
  { key: "lr", title: "Learning rate", kind: "train", names: () => ["learning_rate"] },
  {
    key: "heldout",
    title: "Held-out reward",
    kind: "eval",
    names: (keys) => keys.filter((k) => k.startsWith("eval_reward_")).sort(),
  },
];

class StepChart {
  constructor(spec, rows) {
    this.spec = spec;
    this.rows = rows; // Map step -> values, shared by every chart of the same kind
    this.names = [];
    this.plot = null;
    this.emptyText = "No points yet.";
    this.plotArea = h("div", { class: "plot" });
    this.latest = h("p", { class: "latest" });
    this.figure = h(
      "figure",
      { class: "chart", dataset: { chart: spec.key, points: "0" } },
      h("figcaption", {}, spec.title),
      this.plotArea,
      this.latest,
    );
  }

  update(keys) {
    const names = this.spec.names(keys);
    const steps = [...this.rows.keys()].filter((step) => names.some((n) => this.rows.get(step)[n] != null));
    steps.sort((a, b) => a - b);
    const data = [steps, ...names.map((n) => steps.map((step) => this.rows.get(step)[n] ?? null))];
    if (names.join() !== this.names.join()) this.build(names);
    if (this.plot) this.plot.setData(data);
    this.figure.dataset.points = String(steps.length);
    const last = steps.at(-1);
    replace(
      this.latest,
      last === undefined
        ? this.emptyText
        : [`Step ${last}: `, names.map((n, i) => `${i ? ", " : ""}${n} ${formatNumber(this.rows.get(last)[n])}`)],
    );
  }

  build(names) {
    this.names = names;
    this.plot?.destroy();
    this.plot = null;
    if (!names.length || typeof uPlot === "undefined") return;
    const sparse = this.spec.kind === "eval";
    this.plot = new uPlot(
      {
        width: this.width(),
        height: 190,
        scales: { x: { time: false } },
        legend: { live: false }, // names and colours only; the latest values are written under the chart
        axes: [{ label: "step" }, { size: 60, values: (_u, ticks) => ticks.map(formatNumber) }],
        series: [
          { label: "step" },
          ...names.map((name, i) => ({
            label: name,
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
            spanGaps: true,
            ...(sparse && { points: { show: true } }), // else uPlot's own rule: dots while they are far apart
            value: (_u, v) => formatNumber(v),
          })),
        ],
      },
      [[], ...names.map(() => [])],
      this.plotArea,
    );
  }

  width() {
    return Math.max(240, this.plotArea.clientWidth || 420);
  }

  resize() {
    this.plot?.setSize({ width: this.width(), height: 190 });
  }

  destroy() {
    this.plot?.destroy();
  }
}

/** The job's charts: add(kind, step, values) per metrics row; every chart of that kind redraws. */
export class JobCharts {
  constructor(container) {
    this.rows = { train: new Map(), eval: new Map() };
    this.keys = { train: new Set(), eval: new Set() };
    this.charts = CHARTS.map((spec) => new StepChart(spec, this.rows[spec.kind]));
    replace(
      container,
      this.charts.map((c) => c.figure),
    );
    this.resizer = new ResizeObserver(() => this.charts.forEach((c) => c.resize()));
    this.resizer.observe(container);
    this.charts.forEach((c) => c.update([]));
  }

  add(kind, step, values) {
    this.load([{ kind, step, values }]);
  }

  /** Many rows at once (a page of history): each chart redraws once, not once per row. */
  load(rows) {
    const touched = new Set();
    for (const { kind, step, values } of rows) {
      if (!this.rows[kind]) continue;
      this.rows[kind].set(step, values);
      Object.keys(values).forEach((k) => this.keys[kind].add(k));
      touched.add(kind);
    }
    for (const kind of touched) {
      const keys = [...this.keys[kind]];
      this.charts.filter((c) => c.spec.kind === kind).forEach((c) => c.update(keys));
    }
  }

  /** What the chart says while it has no points, for a chart this job will never fill. */
  explainEmpty(key, text) {
    const chart = this.charts.find((c) => c.spec.key === key);
    chart.emptyText = text;
    chart.update([...this.keys[chart.spec.kind]]);
  }

  destroy() {
    this.resizer.disconnect();
    this.charts.forEach((c) => c.destroy());
  }
}

// Building the page from data. Tenant text (prompts, completions, names, errors) only ever goes in as text nodes
// (textContent), never as HTML, so nothing a tenant wrote can run or restyle the page.

/** h("td", {class: "num", dataset: {step: 3}, onclick: f}, "text", node, [more]) */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A number for people: three significant digits, exponents for the very large and very small. */
export function formatNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return String(value);
  const size = Math.abs(value);
  if (size !== 0 && (size >= 1e5 || size < 1e-3)) return value.toExponential(2);
  return String(Number(value.toPrecision(3)));
}

export function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let size = bytes;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return `${unit ? size.toFixed(1) : size} ${units[unit]}`;
}

export function formatTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** A tiny inline SVG line of `values` (nulls skipped), for the jobs list. */
export function sparkline(values, { width = 96, height = 24, label = "" } = {}) {
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("class", "sparkline");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const points = values.map((v, i) => [i, v]).filter(([, v]) => v !== null && Number.isFinite(v));
  svg.dataset.points = String(points.length);
  if (points.length < 2) return svg;
  const ys = points.map(([, v]) => v);
  const low = Math.min(...ys);
  const span = Math.max(...ys) - low || 1;
  const last = values.length - 1 || 1;
  const line = document.createElementNS(svgNS, "polyline");
  line.setAttribute(
    "points",
    points
      .map(
        ([i, v]) =>
          `${((i / last) * (width - 2) + 1).toFixed(1)},${(height - 2 - ((v - low) / span) * (height - 4)).toFixed(1)}`,
      )
      .join(" "),
  );
  svg.append(line);
  return svg;
}

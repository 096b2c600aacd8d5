// The dashboard: a single page with hash routes (#/jobs, #/jobs/<id>, #/new), plain modules, no build step.
import {
  ApiError,
  followEvents,
  forgetKey,
  getJSON,
  getKey,
  isTerminal,
  postJSON,
  request,
  setKey,
  whenUnauthorized,
} from "./api.js";
import { JobCharts } from "./charts.js";
import { formatBytes, formatNumber, formatTime, h, replace, sparkline } from "./dom.js";
import { STATUSES } from "./statuses.js";

const PAGE = 20;
const view = document.getElementById("view");
const signin = document.getElementById("signin");
const nav = document.getElementById("nav");
let current = null; // the shown view's AbortController: leaving a page stops its stream and timers

// --- signing in -----------------------------------------------------------------------------------------------------

function showSignin(message = "") {
  current?.abort();
  nav.hidden = true;
  view.replaceChildren();
  signin.hidden = false;
  document.getElementById("signin-error").textContent = message;
  document.getElementById("api-key").focus();
}

whenUnauthorized((error) => {
  forgetKey();
  showSignin(`The API refused this key (401): ${error.message}. Sign in again with a valid key.`);
});

document.getElementById("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("api-key");
  const message = document.getElementById("signin-error");
  message.textContent = "Checking the key…";
  setKey(input.value.trim());
  try {
    await getJSON("/v1/jobs?limit=1");
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      forgetKey();
      message.textContent = `Could not reach the API: ${error.message}`;
    }
    return; // a 401 has already said so (whenUnauthorized)
  }
  input.value = "";
  message.textContent = "";
  signin.hidden = true;
  nav.hidden = false;
  route();
});

document.getElementById("sign-out").addEventListener("click", () => {
  forgetKey();
  showSignin("Signed out.");
});

// --- routing ----------------------------------------------------------------------------------------------------------

function route() {
  if (!getKey()) return showSignin();
  current?.abort();
  current = new AbortController();
  const signal = current.signal;
  signin.hidden = true;
  nav.hidden = false;
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query);
  const job = path.match(/^\/jobs\/([\w-]+)$/);
  view.replaceChildren();
  const shown = job ? jobPage(job[1], signal) : path === "/new" ? newJobPage(signal) : jobsPage(params, signal);
  shown.catch((error) => {
    if (signal.aborted || (error instanceof ApiError && error.status === 401)) return;
    view.append(h("p", { class: "error", role: "alert" }, `Could not load this page: ${error.message}`));
  });
}

window.addEventListener("hashchange", route);
// The skip link moves focus without touching the hash, which holds the route.
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("main").focus();
});
// A link to the page already shown starts it afresh (an empty form, a reloaded list), as a new page would.
nav.addEventListener("click", (event) => {
  if (event.target.matches("a") && event.target.getAttribute("href") === location.hash) route();
});

function heading(text) {
  const title = h("h1", { tabindex: "-1" }, text);
  view.append(title);
  title.focus({ preventScroll: true });
  return title;
}

const statusBadge = (status) => h("span", { class: `status status-${status}`, dataset: { status } }, status);

// --- jobs list ------------------------------------------------------------------------------------------------------

async function jobsPage(params, signal) {
  heading("Jobs");
  const status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
  const offset = Math.max(0, Number.parseInt(params.get("offset") || "0", 10) || 0);
  const filter = h(
    "select",
    {
      id: "status-filter",
      onchange: (e) => {
        location.hash = `#/jobs${e.target.value ? `?status=${e.target.value}` : ""}`;
      },
    },
    h("option", { value: "" }, "all"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)),
  );
  const body = h("tbody");
  const pager = h("p", { class: "pager" });
  view.append(
    h(
      "div",
      { class: "toolbar" },
      h("label", { for: "status-filter" }, "Status "),
      filter,
      h("a", { class: "button", href: "#/new" }, "New job"),
    ),
    h(
      "table",
      { class: "jobs" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Job", "Status", "Model", "Progress", "Latest reward", "Created"].map((t) => h("th", { scope: "col" }, t)),
        ),
      ),
      body,
    ),
    pager,
  );
  const sparklines = new Map(); // job id -> {step, values}: a finished job's line is fetched once

  async function refresh() {
    const query = new URLSearchParams({ limit: PAGE, offset });
    if (status) query.set("status", status);
    const page = await getJSON(`/v1/jobs?${query}`, { signal });
    await Promise.all(page.data.map((job) => rewardLine(job, sparklines, signal)));
    replace(
      body,
      page.data.length
        ? page.data.map((job) => jobRow(job, sparklines.get(job.id)))
        : h("tr", {}, h("td", { colspan: 6 }, "No jobs yet.")),
    );
    const link = (label, to) =>
      h("a", { href: `#/jobs?${new URLSearchParams({ ...(status && { status }), offset: to })}` }, label);
    replace(
      pager,
      `${page.count ? offset + 1 : 0}–${offset + page.data.length} of ${page.count} `,
      offset > 0 ? link("Newer", Math.max(0, offset - PAGE)) : null,
      " ",
      offset + PAGE < page.count ? link("Older", offset + PAGE) : null,
    );
    return page.data.some((job) => !isTerminal(job.status));
  }

  // Polled while any job shown may still change; the job page itself follows the event stream instead.
  while (!signal.aborted && (await refresh())) {
    await new Promise((resolve) => setTimeout(resolve, 3000));
  }
}

/** The last 100 steps' mean reward of one job shown in the list (one bounded request, none for a queued job). */
async function rewardLine(job, cache, signal) {
  const known = cache.get(job.id);
  if (job.progress.step === 0 || (known && known.step === job.progress.step)) return;
  const after = Math.max(-1, job.progress.step - 101);
  const page = await getJSON(`/v1/jobs/${job.id}/metrics?after_step=${after}&limit=100`, { signal });
  const values = page.data.filter((row) => row.kind === "train").map((row) => row.values.reward_mean ?? null);
  cache.set(job.id, { step: job.progress.step, values });
}

function jobRow(job, line) {
  const { step, max_steps: maxSteps } = job.progress;
  const latest = line?.values.at(-1);
  return h(
    "tr",
    { dataset: { jobId: job.id } },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)),
    h("td", {}, statusBadge(job.status)),
    h("td", {}, job.base_model),
    h(
      "td",
      {},
      h("progress", { max: maxSteps, value: step, "aria-label": `step ${step} of ${maxSteps}` }),
      ` ${step} / ${maxSteps}`,
    ),
    h(
      "td",
      { class: "reward" },
      latest === undefined ? "–" : formatNumber(latest),
      " ",
      line ? sparkline(line.values, { label: `reward_mean over the last ${line.values.length} steps` }) : null,
    ),
    h("td", {}, formatTime(job.created_at)),
  );
}

// --- job page ---------------------------------------------------------------------------------------------------------

async function jobPage(jobId, signal) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}`;
  let job = await getJSON(path, { signal });
  heading(`Job ${job.id}`);
  const status = h("span", { id: "job-status" });
  const progress = h("span", { id: "job-progress" });
  const streamState = h("span", { id: "stream-state", class: "muted" });
  const error = h("pre", { id: "job-error", class: "error", role: "alert", hidden: true });
  const stoppedEarly = h("p", { id: "job-stopped-early", role: "status", hidden: true });
  const cancel = h("button", { type: "button", id: "cancel-job", class: "danger" }, "Cancel job");
  const warnings = h("ul", { id: "job-warnings", class: "warnings" });
  const chartsArea = h("div", { class: "charts" });
  const checkpointRows = h("tbody", { id: "checkpoints" });
  const samples = samplesSection(jobId, signal);
  const spec = h("div", { id: "spec" });
  view.append(
    h(
      "div",
      { class: "summary" },
      h("p", { "aria-live": "polite" }, "Status: ", status, " · Progress: ", progress, " · ", streamState),
      cancel,
    ),
    error,
    stoppedEarly,
    warnings,
    h("h2", {}, "Curves"),
    chartsArea,
    h("h2", {}, "Checkpoints"),
    h(
      "table",
      { class: "checkpoints" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Step", "Size", "sha256", "Created", ""].map((t) => h("th", { scope: "col" }, t)),
        ),
      ),
      checkpointRows,
    ),
    samples.section,
    h("h2", {}, "Spec"),
    spec,
  );

  function showJob() {
    replace(status, statusBadge(job.status));
    replace(progress, `step ${job.progress.step} / ${job.progress.max_steps}`);
    error.hidden = !job.error;
    error.textContent = job.error || "";
    // A guardrail (stop_when) ended the job: say which, and which checkpoint is its adapter.
    stoppedEarly.hidden = !job.stopped_early;
    if (job.stopped_early) {
      const adapter = job.adapter_step === null ? "its last checkpoint" : `the checkpoint of step ${job.adapter_step}`;
      stoppedEarly.textContent =
        `Stopped early at step ${job.stopped_early.step} (${job.stopped_early.reason}): ` +
        `${job.stopped_early.message}. Its adapter is ${adapter}.`;
    }
    cancel.disabled = isTerminal(job.status) || job.cancel_requested;
    cancel.textContent = job.cancel_requested && !isTerminal(job.status) ? "Cancelling…" : "Cancel job";
    samples.setLastStep(job.progress.step);
    replace(spec, specList(job));
  }
  cancel.addEventListener("click", async () => {
    if (!window.confirm(`Cancel job ${job.id}? Its last checkpoint stays downloadable.`)) return;
    cancel.disabled = true;
    try {
      job = await postJSON(`${path}/cancel`);
      showJob();
    } catch (failure) {
      cancel.disabled = false;
      if (failure.status !== 401) window.alert(`Could not cancel: ${failure.message}`);
    }
  });
  showJob();

  const charts = new JobCharts(chartsArea);
  if (!job.eval_dataset_id || !job.hyperparameters.eval_every) {
    charts.explainEmpty(
      "heldout",
      "This job has no held-out evaluation: give it a held-out dataset and eval_every > 0.",
    );
  }
  signal.addEventListener("abort", () => charts.destroy());
  const checkpoints = new Map();
  const addCheckpoint = (checkpoint) => {
    if (checkpoints.has(checkpoint.step)) return;
    checkpoints.set(checkpoint.step, checkpoint);
    replace(
      checkpointRows,
      [...checkpoints.values()].sort((a, b) => a.step - b.step).map((c) => checkpointRow(jobId, c)),
    );
  };

  // History first, in pages; then the stream, which replays every event from the start (metrics rows are keyed
  // by step, so a replayed one only redraws the same point).
  for (let after = -1; after !== null && !signal.aborted; ) {
    const page = await getJSON(`${path}/metrics?after_step=${after}&limit=1000`, { signal });
    charts.load(page.data);
    after = page.next_after_step;
  }
  (await getJSON(`${path}/checkpoints`, { signal })).data.forEach(addCheckpoint);
  if (!checkpoints.size) replace(checkpointRows, h("tr", {}, h("td", { colspan: 5 }, "None yet.")));
  if (isTerminal(job.status)) return;

  await followEvents(jobId, {
    signal,
    onState: (state) => {
      streamState.textContent = { live: "live", reconnecting: "reconnecting…", ended: "finished" }[state];
    },
    onEvent: async ({ event, data }) => {
      streamState.dataset.events = String(Number(streamState.dataset.events || 0) + 1); // read by the browser test
      if (event === "metrics") {
        charts.add(data.kind, data.step, data.values);
        if (data.kind === "train" && data.step > job.progress.step) {
          job.progress.step = data.step;
          showJob();
        }
      } else if (event === "checkpoint") {
        (await getJSON(`${path}/checkpoints`, { signal })).data.forEach(addCheckpoint); // with its created_at
      } else if (event === "warning") {
        warnings.append(h("li", {}, data.message));
      } else if (event === "status") {
        job = await getJSON(path, { signal }); // the error, times and progress as the API states them
        showJob();
      }
    },
  });
  if (signal.aborted) return;
  // The stream has ended because the job has. A status event's own read of the job can have failed (the API was
  // restarting just then) and the stream resumes after that event, so read the final state once more.
  job = await getJSON(path, { signal });
  showJob();
}

function specList(job) {
  const rows = [
    ["Model", job.base_model],
    ["Hardware", job.hardware],
    ["Dataset", job.dataset_id],
    ["Held-out dataset", job.eval_dataset_id || "none"],
    [
      "Rewards",
      job.rewards
        .map((r) => `${r.name} × ${r.weight}${Object.keys(r.params).length ? ` ${JSON.stringify(r.params)}` : ""}`)
        .join("; "),
    ],
    ["Worker", job.worker_host || "–"],
    ["Created", formatTime(job.created_at)],
    ["Started", formatTime(job.started_at)],
    ["Finished", formatTime(job.finished_at)],
  ];
  const flat = (object, prefix = "") =>
    Object.entries(object).flatMap(([k, v]) =>
      v && typeof v === "object" && !Array.isArray(v) ? flat(v, `${prefix}${k}.`) : [[`${prefix}${k}`, v]],
    );
  const value = (v) => (Array.isArray(v) ? v.join(", ") : v === null ? "null" : String(v));
  return h(
    "dl",
    { class: "spec", id: "hyperparameters" },
    [...rows, ...flat(job.hyperparameters)].map(([k, v]) => [h("dt", {}, k), h("dd", {}, value(v))]),
  );
}

function checkpointRow(jobId, checkpoint) {
  const result = h("span", { class: "download-result", role: "status" });
  const button = h(
    "button",
    { type: "button", dataset: { step: checkpoint.step } },
    `Download step ${checkpoint.step}`,
  );
  button.addEventListener("click", () => download(jobId, checkpoint, button, result));
  return h(
    "tr",
    { dataset: { step: checkpoint.step } },
    h("td", {}, checkpoint.step),
    h("td", {}, formatBytes(checkpoint.bytes)),
    h("td", {}, h("code", { class: "sha256" }, checkpoint.sha256)),
    h("td", {}, formatTime(checkpoint.created_at)),
    h("td", {}, button, " ", result),
  );
}

/** A plain link cannot send the Authorization header: fetch the archive with it, check its sha256 where the
 * browser offers WebCrypto (a secure context: https or localhost), and hand it over as a Blob URL. */
async function download(jobId, checkpoint, button, result) {
  button.disabled = true;
  result.textContent = "downloading…";
  try {
    const response = await request(`/v1/jobs/${encodeURIComponent(jobId)}/checkpoints/${checkpoint.step}/adapter`);
    const blob = await response.blob();
    if (crypto.subtle) {
      const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
      const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
      result.textContent = hex === checkpoint.sha256 ? "sha256 verified" : `sha256 MISMATCH: got ${hex}`;
      result.dataset.sha256 = hex;
    } else {
      result.textContent = "saved (this browser cannot check the sha256 here: compare it with sha256sum)";
    }
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: `${jobId}-step-${checkpoint.step}.tar.gz` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (error) {
    if (error.status !== 401) result.textContent = `failed: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

// --- samples ----------------------------------------------------------------------------------------------------------

function samplesSection(jobId, signal) {
  const step = h("input", { id: "sample-step", type: "number", min: 1, step: 1, inputmode: "numeric" });
  const output = h("div", { id: "samples", "aria-live": "polite" });
  let cursor = null;
  const more = h("button", { type: "button", hidden: true }, "More samples");

  async function load(fresh) {
    const query = new URLSearchParams({ step: step.value, limit: 100 });
    if (!fresh && cursor !== null) query.set("after", cursor);
    if (fresh) replace(output, "Loading…");
    try {
      const page = await getJSON(`/v1/jobs/${encodeURIComponent(jobId)}/samples?${query}`, { signal });
      if (fresh) output.replaceChildren();
      cursor = page.next_cursor;
      more.hidden = cursor === null;
      if (fresh && !page.data.length) output.append(h("p", {}, `No samples stored for step ${step.value}.`));
      output.append(...renderSamples(page));
    } catch (error) {
      if (error.status !== 401) replace(output, h("p", { class: "error", role: "alert" }, error.message));
    }
  }
  more.addEventListener("click", () => load(false));
  const form = h(
    "form",
    {
      class: "inline",
      onsubmit: (e) => {
        e.preventDefault();
        if (step.value) load(true);
      },
    },
    h("label", { for: "sample-step" }, "Step "),
    step,
    h("button", { type: "submit" }, "Show samples"),
  );
  return {
    section: h(
      "section",
      { "aria-labelledby": "samples-title" },
      h("h2", { id: "samples-title" }, "Sampled completions"),
      form,
      output,
      more,
    ),
    setLastStep(last) {
      step.max = String(Math.max(1, last));
      if (!step.value && last > 0) step.value = String(last);
    },
  };
}

function promptText(prompt) {
  if (typeof prompt === "string") return prompt;
  return prompt
    .map((m) => `${m.role ?? "?"}: ${typeof m.content === "string" ? m.content : JSON.stringify(m.content)}`)
    .join("\n");
}

function renderSamples(page) {
  const groups = new Map();
  for (const sample of page.data) {
    const key = `${sample.step}/${sample.group}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(sample);
  }
  const blocks = [...groups.values()].map((samples) => {
    const first = samples[0];
    const names = [...new Set(samples.flatMap((s) => Object.keys(s.scores)))];
    return h(
      "article",
      { class: "sample-group", dataset: { step: first.step, group: first.group } },
      h("h3", {}, `Step ${first.step}, group ${first.group}`),
      h("pre", { class: "prompt" }, promptText(first.prompt)),
      h(
        "table",
        { class: "samples" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["#", "Completion", "Reward", "Advantage", ...names].map((t) => h("th", { scope: "col" }, t)),
          ),
        ),
        h(
          "tbody",
          {},
          samples.map((s) =>
            h(
              "tr",
              { class: "sample" },
              h("td", {}, s.index),
              h(
                "td",
                {},
                h("pre", { class: "completion" }, s.completion),
                Object.entries(s.errors).map(([n, e]) => h("p", { class: "error" }, `${n}: ${e}`)),
              ),
              h("td", { class: "num" }, formatNumber(s.reward)),
              h("td", { class: "num" }, formatNumber(s.advantage)),
              names.map((n) => h("td", { class: "num" }, formatNumber(s.scores[n]))),
            ),
          ),
        ),
      ),
    );
  });
  const outputs = Object.entries(page.outputs).flatMap(([step, byReward]) =>
    Object.entries(byReward).map(([reward, text]) =>
      h("details", {}, h("summary", {}, `What ${reward} printed at step ${step}`), h("pre", {}, text)),
    ),
  );
  return [...blocks, ...outputs];
}

// --- new job ----------------------------------------------------------------------------------------------------------

async function newJobPage(signal) {
  heading("New job");
  const [models, rewards, datasets, openapi] = await Promise.all([
    getJSON("/v1/models", { signal }),
    getJSON("/v1/rewards", { signal }),
    getJSON("/v1/datasets", { signal }),
    fetch("/openapi.json", { signal }).then((r) => r.json()),
  ]);
  const schemas = openapi.components.schemas;
  const errorSlots = new Map(); // field path -> its error element
  const field = (path, label, control, help) => {
    const id = control.id;
    const slot = h("p", { class: "field-error", id: `${id}-error`, role: "alert", dataset: { field: path } });
    errorSlots.set(path, { slot, control });
    control.setAttribute("aria-describedby", `${id}-error${help ? ` ${id}-help` : ""}`);
    return h(
      "div",
      { class: "field", dataset: { field: path } },
      h("label", { for: id }, label),
      control,
      help ? h("small", { id: `${id}-help` }, help) : null,
      slot,
    );
  };

  // Dataset: upload one, or pick one uploaded before.
  const datasetSelect = h("select", { id: "dataset" });
  const evalSelect = h("select", { id: "eval-dataset" });
  const fillDatasets = (list, chosen) => {
    const option = (d) =>
      h("option", { value: d.id, selected: d.id === chosen }, `${d.name} (${d.rows} rows, ${d.id})`);
    replace(datasetSelect, h("option", { value: "" }, "— choose or upload —"), list.map(option));
    replace(
      evalSelect,
      h("option", { value: "" }, "none"),
      list.map((d) => h("option", { value: d.id }, `${d.name} (${d.rows} rows, ${d.id})`)),
    );
  };
  let datasetList = datasets.data;
  fillDatasets(datasetList);
  const file = h("input", { id: "dataset-file", type: "file", accept: ".jsonl,.json,application/jsonl,text/plain" });
  const uploadResult = h("p", { id: "upload-result", role: "status" });
  const upload = h("button", { type: "button", id: "upload-dataset" }, "Upload");
  upload.addEventListener("click", async () => {
    if (!file.files.length) {
      uploadResult.textContent = "Choose a JSONL file first.";
      return;
    }
    const form = new FormData();
    form.append("file", file.files[0]);
    upload.disabled = true;
    uploadResult.textContent = "Uploading…";
    try {
      const dataset = await (await request("/v1/datasets", { method: "POST", form })).json();
      datasetList = [dataset, ...datasetList];
      fillDatasets(datasetList, dataset.id);
      uploadResult.textContent = `Uploaded ${dataset.name}: ${dataset.rows} rows, fields ${dataset.fields.join(", ")} (${dataset.id}).`;
    } catch (error) {
      if (error.status !== 401)
        uploadResult.textContent = `Upload refused (${error.status}): ${[error.message, ...error.errors].join(" ")}`;
    } finally {
      upload.disabled = false;
    }
  });

  const modelSelect = h(
    "select",
    { id: "base-model" },
    models.data.map((m) => h("option", { value: m.name }, `${m.name} — ${m.description}`)),
  );
  const hardware = h(
    "select",
    { id: "hardware" },
    h("option", { value: "" }, "the model's default"),
    h("option", { value: "cpu" }, "cpu"),
    h("option", { value: "gpu" }, "gpu"),
  );

  // Rewards: a checkbox per catalog entry, with its weight and params.
  const rewardControls = rewards.data.map((reward, i) => {
    const name = reward.id || reward.name;
    const use = h("input", { type: "checkbox", id: `reward-${i}`, dataset: { reward: name } });
    const weight = h("input", {
      type: "number",
      id: `reward-${i}-weight`,
      value: 1,
      step: "any",
      "aria-label": `${name} weight`,
    });
    const params = h("input", {
      type: "text",
      id: `reward-${i}-params`,
      placeholder: "params as JSON, e.g. {}",
      "aria-label": `${name} params (JSON)`,
      spellcheck: "false",
    });
    return {
      name,
      use,
      weight,
      params,
      row: h(
        "tr",
        {},
        h(
          "td",
          {},
          use,
          " ",
          h("label", { for: use.id }, reward.name),
          reward.kind === "uploaded" ? h("small", {}, ` (uploaded, ${reward.id})`) : null,
        ),
        h("td", {}, reward.description),
        h("td", {}, weight),
        h("td", {}, params),
      ),
    };
  });
  const rewardSlot = h("p", {
    class: "field-error",
    id: "rewards-error",
    role: "alert",
    dataset: { field: "rewards" },
  });
  errorSlots.set("rewards", { slot: rewardSlot, control: null });

  // Hyperparameters: from the OpenAPI schema, which the API generates from the trainer's config (types, ranges,
  // defaults and the text under each field), so the form cannot drift from what the API accepts.
  const hyperparameters = [
    ...hyperparameterFields(schemas.Hyperparameters, ""),
    ...hyperparameterFields(schemas.LoraHyperparameters, "lora."),
  ];
  const targetModules = hyperparameters.find((p) => p.path === "lora.target_modules");
  const showModelDefaults = () => {
    const model = models.data.find((m) => m.name === modelSelect.value);
    if (model && targetModules) targetModules.setDefault(model.default_target_modules.join(", "));
  };
  modelSelect.addEventListener("change", showModelDefaults);
  showModelDefaults();
  const generalError = h("div", { id: "form-error", class: "error", role: "alert" });
  const submit = h("button", { type: "submit", id: "submit-job" }, "Create job");
  const form = h(
    "form",
    { id: "new-job", novalidate: true },
    h(
      "fieldset",
      {},
      h("legend", {}, "Dataset"),
      h(
        "div",
        { class: "field" },
        h("label", { for: "dataset-file" }, "Upload a JSONL file (one object per line with a prompt or messages)"),
        file,
        " ",
        upload,
        uploadResult,
      ),
      field("dataset_id", "Training dataset", datasetSelect),
      field("eval_dataset_id", "Held-out dataset (optional, with eval_every > 0)", evalSelect),
    ),
    h(
      "fieldset",
      {},
      h("legend", {}, "Model"),
      field("base_model", "Base model", modelSelect),
      field("hardware", "Hardware", hardware),
    ),
    h(
      "fieldset",
      {},
      h("legend", {}, "Rewards"),
      h(
        "table",
        { class: "rewards" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Reward", "What it scores", "Weight", "Params"].map((t) => h("th", { scope: "col" }, t)),
          ),
        ),
        h(
          "tbody",
          {},
          rewardControls.map((r) => r.row),
        ),
      ),
      rewardSlot,
    ),
    h(
      "fieldset",
      { class: "hyperparameters" },
      h("legend", {}, "Hyperparameters (defaults filled in)"),
      hyperparameters.map((p) => field(`hyperparameters.${p.path}`, p.path, p.control, p.help)),
    ),
    generalError,
    submit,
  );
  view.append(form);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorSlots.forEach(({ slot, control }) => {
      slot.textContent = "";
      control?.removeAttribute("aria-invalid");
    });
    generalError.replaceChildren();
    const spec = {
      base_model: modelSelect.value,
      dataset_id: datasetSelect.value,
      rewards: [],
      hyperparameters: {},
    };
    if (hardware.value) spec.hardware = hardware.value;
    if (evalSelect.value) spec.eval_dataset_id = evalSelect.value;
    const local = [];
    for (const r of rewardControls.filter((c) => c.use.checked)) {
      const ref = { name: r.name, weight: Number(r.weight.value) };
      try {
        if (r.params.value.trim()) ref.params = JSON.parse(r.params.value);
      } catch {
        local.push(`rewards: the params of ${r.name} are not valid JSON`);
      }
      spec.rewards.push(ref);
    }
    for (const p of hyperparameters) {
      const value = p.read();
      if (value === undefined) continue; // unchanged: the API fills in the default
      const [head, tail] = p.path.split(".");
      if (tail) (spec.hyperparameters[head] ??= {})[tail] = value;
      else spec.hyperparameters[head] = value;
    }
    if (local.length) return showErrors(local, "Fix these first:");
    submit.disabled = true;
    try {
      const job = await postJSON("/v1/jobs", spec);
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      if (error.status !== 401)
        showErrors(
          error.errors.length ? error.errors : [],
          `The API refused the job (${error.status}): ${error.message}`,
        );
    } finally {
      submit.disabled = false;
    }
  });

  /** Each problem next to the field it names ("hyperparameters.group_size: ..." goes under group_size); what
   * names no field shown goes at the top of the list at the bottom of the form. */
  function showErrors(problems, summary) {
    const unplaced = [];
    let first = null;
    for (const problem of problems) {
      const path = fieldOf(problem, [...errorSlots.keys()]);
      if (!path) {
        unplaced.push(problem);
        continue;
      }
      const { slot, control } = errorSlots.get(path);
      slot.textContent = slot.textContent ? `${slot.textContent} ${problem}` : problem;
      control?.setAttribute("aria-invalid", "true");
      first ??= control;
    }
    replace(
      generalError,
      h("p", {}, summary),
      unplaced.length
        ? h(
            "ul",
            {},
            unplaced.map((p) => h("li", {}, p)),
          )
        : null,
    );
    (first || generalError).focus?.();
  }
}

/** The form field a problem from the API names: pydantic's start with the field's path ("hyperparameters.lora.r:
 * ...", "rewards.0.weight: ..."), the service's checks with the field and a value ("eval_dataset_id ds_...: ...",
 * "reward 'length_target': param ...", "unknown base_model ..."). The longest path that fits wins. */
function fieldOf(problem, paths) {
  const subject = problem.replace(/^unknown /, "").replace(/^reward\b/, "rewards");
  return paths
    .filter((path) => subject === path || new RegExp(`^${path.replace(/[.]/g, "\\.")}(?=[.\\[:\\s])`).test(subject))
    .sort((a, b) => b.length - a.length)[0];
}

/** One input per property of a hyperparameter object schema, prefilled with its default; read() gives the value
 * to send, or undefined when it still holds the default. A value the browser cannot parse as a number is sent
 * as typed, so the API's own message names the field and the value. */
function hyperparameterFields(schema, prefix) {
  return Object.entries(schema.properties)
    .filter(([, property]) => !("$ref" in property) && !(property.anyOf || []).some((s) => "$ref" in s))
    .map(([name, property]) => {
      const path = `${prefix}${name}`;
      const typed = property.anyOf ? property.anyOf.find((s) => s.type !== "null") : property;
      const nullable = Boolean(property.anyOf?.some((s) => s.type === "null"));
      const fallback = "default" in property ? property.default : null;
      const id = `hp-${path.replace(".", "-")}`;
      let control;
      if (typed.enum) {
        control = h(
          "select",
          { id },
          typed.enum.map((v) => h("option", { value: v, selected: v === fallback }, v)),
        );
      } else if (typed.type === "integer" || typed.type === "number") {
        control = h("input", {
          id,
          type: "text",
          inputmode: "decimal",
          value: fallback ?? "",
          placeholder: nullable ? "empty: null" : "",
        });
      } else {
        control = h("input", {
          id,
          type: "text",
          value: Array.isArray(fallback) ? fallback.join(", ") : (fallback ?? ""),
          spellcheck: "false",
        });
      }
      let initial = control.value;
      // A default that depends on another choice (lora.target_modules: the chosen model's) replaces the schema's.
      const setDefault = (value) => {
        control.value = initial = value;
      };
      const read = () => {
        if (control.value === initial) return undefined;
        const text = control.value.trim();
        if (typed.type === "array")
          return text
            .split(",")
            .map((s) => s.trim())
            .filter(Boolean);
        if (typed.type === "integer" || typed.type === "number") {
          if (text === "" && nullable) return null;
          const number = Number(text);
          return text !== "" && Number.isFinite(number) ? number : text;
        }
        return control.value;
      };
      const range = [
        "minimum" in typed && typed.minimum > -(2 ** 31) ? `≥ ${typed.minimum}` : null,
        "exclusiveMinimum" in typed ? `> ${typed.exclusiveMinimum}` : null,
        "maximum" in typed && typed.maximum < 2 ** 31 - 1 ? `≤ ${typed.maximum}` : null,
        "exclusiveMaximum" in typed ? `< ${typed.exclusiveMaximum}` : null,
      ].filter(Boolean);
      const help = `${(property.description || "").replace(/\s+/g, " ")}${range.length ? ` (${range.join(", ")})` : ""}`;
      return { path, control, read, setDefault, help };
    });
}

// --- start ------------------------------------------------------------------------------------------------------------

if (getKey()) {
  route();
} else {
  showSignin();
}

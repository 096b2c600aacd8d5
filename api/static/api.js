// The REST API as the dashboard uses it: every call sends the key as a Bearer token, errors become ApiError with
// the API's own body ({detail, errors}), and the event stream is read with fetch().

import { TERMINAL_STATUSES } from "./statuses.js";

const KEY_NAME = "grpo.apiKey";
const TERMINAL = new Set(TERMINAL_STATUSES);

export const isTerminal = (status) => TERMINAL.has(status);
export const getKey = () => sessionStorage.getItem(KEY_NAME);
export const setKey = (key) => sessionStorage.setItem(KEY_NAME, key);
export const forgetKey = () => sessionStorage.removeItem(KEY_NAME);

export class ApiError extends Error {
  constructor(status, body, headers) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.errors = Array.isArray(body?.errors) ? body.errors : [];
    this.headers = headers;
  }
}

// Called on any 401: the key was revoked or mistyped; the app signs out and says so.
let onUnauthorized = () => {};
export const whenUnauthorized = (handler) => {
  onUnauthorized = handler;
};

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${getKey()}`, ...extra };
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = { detail: `${response.status} ${response.statusText}` };
  }
  const error = new ApiError(response.status, body, response.headers);
  if (response.status === 401) onUnauthorized(error);
  return error;
}

/** fetch() against the API with the key; throws ApiError unless the answer is 2xx. */
export async function request(path, { method = "GET", json, form, signal, headers = {} } = {}) {
  const init = { method, signal, headers: authHeaders(headers), cache: "no-store" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form; // multipart: the browser writes the boundary
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response;
}

export const getJSON = async (path, options) => (await request(path, options)).json();
export const postJSON = async (path, json) => (await request(path, { method: "POST", json })).json();

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });

/**
 * Follow a job's Server-Sent Events, calling onEvent({id, event, data}) for each, until the job is finished or
 * `signal` aborts. onState("live" | "reconnecting" | "ended") tells the page how the stream is doing.
 *
 * Why fetch() and not EventSource: EventSource cannot send an Authorization header, and the alternatives put the
 * key where it does not belong (a query string lands in access logs and browser history; a cookie would make the
 * API accept ambient credentials, and so cross-site requests). fetch() sends the same Bearer header as every other
 * call and exposes the body as a ReadableStream, which is parsed here as the SSE format says. What EventSource
 * would do for us is done here too: after a drop the stream is reopened with the Last-Event-ID header, so it
 * resumes after the last event seen, with a growing pause between tries (and Retry-After on a 429).
 */
export async function followEvents(jobId, { onEvent, onState = () => {}, signal }) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}/events`;
  let lastEventId = null;
  let pause = 1000;
  while (!signal.aborted) {
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
      const response = await fetch(path, { headers, signal, cache: "no-store" });
      if (response.status === 429) {
        const seconds = Number(response.headers.get("Retry-After")) || 5;
        onState("reconnecting");
        await sleep(seconds * 1000, signal);
        continue;
      }
      if (!response.ok) throw await failure(response);
      onState("live");
      pause = 1000;
      await readEvents(response.body, (event) => {
        if (event.id !== undefined) lastEventId = event.id;
        onEvent(event);
      });
      // The API ends a stream once the job is finished and every event is sent; a stream cut by a restart or a
      // proxy ends the same way, so ask the job itself before deciding.
      const job = await getJSON(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal });
      if (isTerminal(job.status)) {
        onState("ended");
        return;
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status !== 429 && error.status < 500) throw error; // 401, 404: final
    }
    onState("reconnecting");
    await sleep(pause, signal);
    pause = Math.min(pause * 2, 15000);
  }
}

/** Parse an SSE body (text/event-stream) from a ReadableStream of bytes; calls dispatch per complete event. */
async function readEvents(body, dispatch) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split("\n");
    buffer = lines.pop(); // an incomplete line waits for the next chunk
    for (let line of lines) {
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (event.data.length) {
          dispatch({ id: event.id, event: event.event || "message", data: JSON.parse(event.data.join("\n")) });
        }
        event = { data: [] };
        continue;
      }
      if (line.startsWith(":")) continue; // a keep-alive comment
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") event.data.push(value);
      else if (field === "id" || field === "event") event[field] = value;
    }
  }
}

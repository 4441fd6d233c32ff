// The live page of one execution (served by noteburst/api/live.py).
//
// The server embeds the execution and its notebook (the submitted one while
// it runs, the executed one once terminal) in #noteburst-data.  While it
// runs, this script subscribes to executionStatus over graphql-transport-ws
// (the vendored graphql-ws client) from afterSequence 0 and applies every
// event in sequence order, CELL_OUTPUTS as the schema says:
// outputs[outputStart:] = event.outputs, every cell starting empty at each
// RUNNING event.  When the socket drops it subscribes again after the last
// sequence it applied, so nothing is lost, and ignores any event at or
// before it, so nothing is applied twice.  At the FINISHED event it reads
// the stored notebook with a GraphQL query and draws that: the final page
// is the executed notebook, whatever happened on the way.
//
// Hand-written (not a library): the event loop above and the choice of
// MIME type, which are Noteburst's protocol and a dozen lines.  Rendering
// HTML, markdown and ANSI text is left to the vendored libraries.

import { AnsiUp } from "./vendor/ansi_up@6.0.6/ansi_up.js";

const TOKEN_KEY = "noteburst-token";

const ERROR_FIELDS = "error { code message cellIndex ename evalue traceback }";
const EXECUTION_FIELDS = `status progress { cellsTotal cellsDone } ${ERROR_FIELDS}`;

const WATCH = `subscription LivePage($id: ID!, $after: Int) {
  executionStatus(id: $id, afterSequence: $after) {
    sequence kind status cellIndex message outputStart outputs
    execution { ${EXECUTION_FIELDS} }
  }
}`;

const RESULT = `query LivePageResult($id: ID!) {
  execution(id: $id) { ${EXECUTION_FIELDS} notebook }
}`;

// The richest representation first, as JupyterLab orders them (minus
// JavaScript, which the page's Content-Security-Policy would not run).
const MIME_ORDER = [
  "text/html",
  "text/markdown",
  "image/svg+xml",
  "image/png",
  "image/jpeg",
  "image/gif",
  "text/latex",
  "application/json",
  "text/plain",
];

const STATE_LABELS = {
  queued: "queued",
  running: "running",
  done: "done",
  error: "error",
  skipped: "not run",
};

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function authHeaders() {
  const value = token();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

function text(value) {
  // nbformat multiline strings are a string or a list of lines.
  return Array.isArray(value) ? value.join("") : (value ?? "");
}

function element(tag, className, content) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (content !== undefined) node.textContent = content;
  return node;
}

function ansiBlock(value, className) {
  // ansi_up escapes the text before adding colour spans: plain text stays
  // plain text.  A fresh converter per block: colours do not leak between
  // outputs.
  const converter = new AnsiUp();
  converter.use_classes = true;
  const pre = element("pre", className);
  pre.innerHTML = converter.ansi_to_html(value);
  return pre;
}

function markdown(source) {
  const div = element("div", "markdown");
  // The user's own notebook, rendered as JupyterLab renders markdown it
  // trusts; the page's Content-Security-Policy keeps scripts from running.
  div.innerHTML = globalThis.marked.parse(source);
  return div;
}

function renderMime(data) {
  const mime = MIME_ORDER.find((type) => type in data);
  if (mime === undefined) {
    return element("pre", "unsupported", `[${Object.keys(data).join(", ")}]`);
  }
  const value = data[mime];
  let node;
  switch (mime) {
    case "text/html":
      node = element("div", "html");
      node.innerHTML = text(value);
      break;
    case "text/markdown":
      node = markdown(text(value));
      break;
    case "image/svg+xml":
      node = element("img");
      node.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(text(value))}`;
      break;
    case "image/png":
    case "image/jpeg":
    case "image/gif":
      node = element("img");
      node.src = `data:${mime};base64,${text(value).replace(/\s/g, "")}`;
      break;
    case "application/json":
      node = element("pre", "json", JSON.stringify(value, null, 2));
      break;
    default:
      node = ansiBlock(text(value), "plain");
  }
  node.dataset.mime = mime;
  return node;
}

function renderOutput(output) {
  const box = element("div", "output");
  box.dataset.outputType = output.output_type;
  switch (output.output_type) {
    case "stream":
      box.dataset.stream = output.name;
      box.append(ansiBlock(text(output.text), `stream ${output.name}`));
      break;
    case "error":
      box.append(ansiBlock((output.traceback ?? []).join("\n"), "traceback"));
      break;
    case "execute_result":
    case "display_data":
      box.append(renderMime(output.data ?? {}));
      break;
    default:
      box.append(element("pre", "unsupported", `[${output.output_type}]`));
  }
  return box;
}

class LivePage {
  constructor(data) {
    this.execution = data.execution;
    this.id = data.execution.id;
    this.notebook = data.notebook;
    this.lastSequence = 0;
    this.finished = false;
    this.retries = 0;
    this.client = null;
    this.cells = [];
    // For tests and debugging: after which sequence each subscription
    // started, and the outputs the events had built when FINISHED came.
    this.subscriptions = [];
    this.liveOutputsAtFinish = null;
  }

  start() {
    this.build(this.notebook);
    if (this.execution.terminal) {
      this.showFinal(this.execution, this.notebook);
      return;
    }
    // Outputs come from the events only (a submitted notebook may hold
    // old ones).
    for (const cell of this.cells) this.setOutputs(cell, 0, []);
    this.showExecution(this.execution);
    this.root.dataset.phase = "live";
    this.setConnection("connecting");
    const url = new URL("../graphql", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    this.client = globalThis.graphqlWs.createClient({
      url: url.href,
      // The token (tokens mode) travels in connection_init, not the URL.
      connectionParams: () => authHeaders(),
      // Resuming is ours, from the last sequence applied (see resume()).
      retryAttempts: 0,
      keepAlive: 10_000,
      on: {
        connected: () => this.setConnection("live"),
        closed: () => {
          if (!this.finished) this.setConnection("reconnecting");
        },
      },
    });
    this.subscribe();
  }

  build(notebook) {
    const page = document.getElementById("page");
    page.replaceChildren();
    this.root = element("article", "execution");
    this.root.dataset.executionId = this.id;
    const header = element("header", "execution-header");
    const title = element("h1", null, "Execution ");
    title.append(element("code", null, this.id));
    this.statusEl = element("span", "status");
    this.progressEl = element("progress");
    this.progressText = element("span", "progress-text");
    this.connectionEl = element("span", "connection");
    const summary = element("p", "summary");
    summary.append(this.statusEl, " ", this.progressEl, " ", this.progressText, " ",
      this.connectionEl);
    this.messageEl = element("p", "message");
    this.messageEl.hidden = true;
    header.append(title, summary, this.messageEl);
    this.errorEl = element("section", "execution-error");
    this.errorEl.hidden = true;
    this.cellsEl = element("div", "cells");
    this.root.append(header, this.errorEl, this.cellsEl);
    page.append(this.root);
    this.buildCells(notebook);
  }

  buildCells(notebook) {
    this.cellsEl.replaceChildren();
    this.cells = (notebook?.cells ?? []).map((source, index) => {
      const el = element("section", `cell ${source.cell_type}`);
      el.id = `cell-${index}`;
      el.dataset.index = String(index);
      el.dataset.cellType = source.cell_type;
      const cell = { el, index, type: source.cell_type, outputs: [] };
      if (source.cell_type === "markdown") {
        el.append(markdown(text(source.source)));
      } else if (source.cell_type === "code") {
        const head = element("div", "cell-head");
        cell.promptEl = element("span", "prompt", "[ ]");
        cell.stateEl = element("span", "state");
        head.append(cell.promptEl, cell.stateEl);
        const code = element("pre", "source");
        code.append(element("code", null, text(source.source)));
        cell.outputsEl = element("div", "outputs");
        el.append(head, code, cell.outputsEl);
        this.setState(cell, "queued");
      } else {
        el.append(element("pre", "raw", text(source.source)));
      }
      this.cellsEl.append(el);
      return cell;
    });
  }

  subscribe() {
    const after = this.lastSequence;
    this.subscriptions.push(after);
    let ended = false;
    this.client.subscribe(
      { query: WATCH, variables: { id: this.id, after } },
      {
        next: (result) => {
          if (result.errors?.length) {
            ended = true;
            this.stop(result.errors[0].message);
            return;
          }
          this.retries = 0;
          this.onEvent(result.data.executionStatus);
        },
        error: (error) => {
          if (ended) return;
          ended = true;
          if (Array.isArray(error)) {
            // The server refused the operation itself: retrying cannot help.
            this.stop(error.map((e) => e.message).join("; "));
          } else if (error?.code === 4403) {
            this.stop("The server refused the connection: sign in again.");
          } else {
            this.resume();
          }
        },
        complete: () => {
          if (ended) return;
          ended = true;
          // Complete before FINISHED: the socket went away mid-stream.
          if (!this.finished) this.resume();
        },
      },
    );
  }

  resume() {
    if (this.finished) return;
    this.setConnection("reconnecting");
    const delay = Math.min(250 * 2 ** this.retries, 5_000);
    this.retries += 1;
    setTimeout(() => this.subscribe(), delay);
  }

  onEvent(event) {
    if (this.finished || event.sequence <= this.lastSequence) return;
    this.lastSequence = event.sequence;
    this.root.dataset.sequence = String(event.sequence);
    this.showExecution(event.execution);
    switch (event.kind) {
      case "RUNNING":
        // A new attempt draws every cell afresh.
        for (const cell of this.cells) {
          this.setOutputs(cell, 0, []);
          this.setState(cell, "queued");
        }
        this.showMessage(null);
        break;
      case "LAB_STARTING":
        this.showMessage(event.message);
        break;
      case "CELL_STARTED":
        this.showMessage(null);
        this.setState(this.cells[event.cellIndex], "running");
        break;
      case "CELL_FINISHED":
        this.setState(this.cells[event.cellIndex], "done");
        break;
      case "CELL_OUTPUTS":
        this.setOutputs(this.cells[event.cellIndex], event.outputStart, event.outputs);
        break;
      case "FINISHED":
        this.finish();
        break;
      default:
        break;
    }
  }

  async finish() {
    this.finished = true;
    this.liveOutputsAtFinish = this.outputs();
    this.client?.dispose();
    this.setConnection("finished");
    try {
      const response = await fetch(new URL("../graphql", location.href), {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify({ query: RESULT, variables: { id: this.id } }),
      });
      const result = await response.json();
      const execution = result.data?.execution;
      if (!execution) throw new Error(result.errors?.[0]?.message ?? "not found");
      this.showFinal({ ...execution, terminal: true }, execution.notebook);
    } catch (error) {
      this.showMessage(`Could not read the executed notebook: ${error.message}`);
    }
  }

  showFinal(execution, notebook) {
    if ((notebook?.cells ?? []).length !== this.cells.length) this.buildCells(notebook);
    const failed = execution.error?.cellIndex;
    for (const cell of this.cells) {
      if (cell.type !== "code") continue;
      const stored = notebook.cells[cell.index];
      this.setOutputs(cell, 0, stored.outputs ?? []);
      if (cell.index === failed) this.setState(cell, "error");
      else if (stored.execution_count != null || execution.status === "SUCCEEDED") {
        this.setState(cell, "done");
      } else this.setState(cell, "skipped");
      const count = stored.execution_count;
      cell.promptEl.textContent = count == null ? "[ ]" : `[${count}]`;
    }
    this.showExecution(execution);
    this.setConnection("finished");
    this.root.dataset.phase = "final";
  }

  stop(message) {
    this.finished = true;
    this.client?.dispose();
    this.setConnection("stopped");
    this.showMessage(message);
  }

  setOutputs(cell, start, outputs) {
    if (!cell || cell.type !== "code") return;
    cell.outputs.splice(start, cell.outputs.length - start, ...outputs);
    const box = cell.outputsEl;
    while (box.children.length > start) box.lastElementChild.remove();
    for (const output of outputs) box.append(renderOutput(output));
  }

  setState(cell, state) {
    if (!cell || cell.type !== "code") return;
    cell.el.dataset.state = state;
    cell.stateEl.textContent = STATE_LABELS[state];
    if (state === "running") cell.promptEl.textContent = "[*]";
    else if (state === "queued") cell.promptEl.textContent = "[ ]";
  }

  showExecution(execution) {
    this.root.dataset.status = execution.status;
    this.statusEl.textContent = execution.status.toLowerCase();
    this.statusEl.dataset.status = execution.status;
    const { cellsDone, cellsTotal } = execution.progress;
    this.root.dataset.cellsDone = String(cellsDone);
    this.progressEl.max = Math.max(cellsTotal, 1);
    this.progressEl.value = cellsDone;
    this.progressText.textContent = `${cellsDone} / ${cellsTotal} cells`;
    this.showError(execution.error);
  }

  showError(error) {
    this.errorEl.hidden = !error;
    if (!error) return;
    const heading = element("h2", null, `${error.code.toLowerCase().replace(/_/g, " ")}: `);
    heading.append(element("span", "error-message", error.message));
    const parts = [heading];
    if (error.cellIndex != null) {
      const link = element("a", "error-cell", `cell ${error.cellIndex}`);
      link.href = `#cell-${error.cellIndex}`;
      const where = element("p", null, "In ");
      where.append(link);
      parts.push(where);
    }
    if (error.traceback?.length) {
      parts.push(ansiBlock(error.traceback.join("\n"), "traceback"));
    }
    this.errorEl.replaceChildren(...parts);
  }

  showMessage(message) {
    this.messageEl.hidden = !message;
    this.messageEl.textContent = message ?? "";
  }

  setConnection(state) {
    this.root.dataset.connection = state;
    this.connectionEl.textContent = state;
  }

  outputs() {
    const byCell = {};
    for (const cell of this.cells) {
      if (cell.type === "code" && cell.outputs.length) {
        byCell[cell.index] = structuredClone(cell.outputs);
      }
    }
    return byCell;
  }
}

function readData(doc) {
  return JSON.parse(doc.getElementById("noteburst-data").textContent);
}

async function fetchWithToken(form) {
  const note = form.querySelector(".hint");
  const response = await fetch(location.href, {
    headers: { Accept: "text/html", ...authHeaders() },
    cache: "no-store",
  });
  const doc = new DOMParser().parseFromString(await response.text(), "text/html");
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    note.textContent = "That token was refused: it is unknown, expired or revoked.";
    return;
  }
  document.title = doc.title;
  document.getElementById("page").replaceWith(document.adoptNode(doc.getElementById("page")));
  const data = readData(doc);
  if (data.execution) startPage(data);
}

function tokenForm() {
  const form = document.getElementById("token-form");
  if (!form) return;
  const input = form.querySelector("#token");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    fetchWithToken(form);
  });
  if (token()) fetchWithToken(form);
}

function startPage(data) {
  const page = new LivePage(data);
  globalThis.noteburstLive = page;
  page.start();
}

const SUBMIT = `mutation LivePageSubmit($notebook: JSON!) {
  submitExecution(input: { notebook: $notebook }) {
    __typename
    ... on Execution { id }
    ... on InvalidNotebook { message }
    ... on UnknownKernel { message }
    ... on InvalidInput { message }
    ... on InvalidParameters { message }
    ... on LimitExceeded { message }
    ... on WebhookRefused { message }
  }
}`;

function submitForm() {
  // The optional form at ./executions: submit a notebook file, then open
  // its live page (relative URLs: this page is one level above it).
  const form = document.getElementById("submit-form");
  const message = form.querySelector(".form-message");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const tokenInput = form.querySelector("#token");
    if (tokenInput?.value.trim()) {
      sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
      tokenInput.value = "";
    }
    message.textContent = "Submitting…";
    try {
      const file = form.querySelector("#notebook-file").files[0];
      const notebook = JSON.parse(await file.text());
      const response = await fetch(new URL("graphql", location.href), {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify({ query: SUBMIT, variables: { notebook } }),
      });
      const result = await response.json();
      const payload = result.data?.submitExecution;
      if (payload?.__typename === "Execution") {
        location.assign(new URL(`executions/${encodeURIComponent(payload.id)}`, location.href));
        return;
      }
      message.textContent = payload?.message ?? result.errors?.[0]?.message ?? "Refused.";
    } catch (error) {
      message.textContent = `Not submitted: ${error.message}`;
    }
  });
}

const initial = readData(document);
if (initial.execution) startPage(initial);
else if (initial.submit) submitForm();
else if (initial.problem?.tokenForm) tokenForm();

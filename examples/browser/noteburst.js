// A minimal front end for Noteburst on another origin (docs/front-ends.md).
//
// Submits a notebook with the submitExecution mutation (fetch), then
// watches it with the graphql-ws client over the executionStatus
// subscription (graphql-transport-ws), applying CELL_OUTPUTS events as
// README.md describes: outputs[outputStart:] = event.outputs.  Outputs are
// written with textContent only: a notebook's outputs are not this page's
// code.
import { createClient } from "graphql-ws";

const SUBMIT = `
mutation Submit($input: SubmitExecutionInput!) {
  submitExecution(input: $input) {
    __typename
    ... on Execution { id status progress { cellsTotal cellsDone } }
    ... on InvalidNotebook { message }
    ... on UnknownKernel { message availableKernels }
    ... on InvalidParameters { message name }
    ... on InvalidInput { message field }
    ... on LimitExceeded { message limit maximum }
    ... on WebhookRefused { message field }
  }
}`;

const WATCH = `
subscription Watch($id: ID!, $after: Int) {
  executionStatus(id: $id, afterSequence: $after) {
    sequence kind status cellIndex outputStart outputs message
    execution {
      id status
      progress { cellsTotal cellsDone }
      error { code message cellIndex ename evalue }
    }
  }
}`;

const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"]);

// Close codes after which the page opens the subscription again, resuming
// after the last event it applied: the network or the server went away.
// Others (4403: credentials refused, 4400: bad request, ...) are answers.
const RECONNECT_CODES = new Set([1001, 1006, 1012, 1013, 4499]);
const MAX_RECONNECTS = 3;

const DEFAULT_NOTEBOOK = {
  nbformat: 4,
  nbformat_minor: 5,
  metadata: { kernelspec: { name: "python3", display_name: "Python 3", language: "python" } },
  cells: [
    { cell_type: "code", id: "c1", metadata: {}, execution_count: null, outputs: [],
      source: "print('hello from Noteburst')" },
    { cell_type: "code", id: "c2", metadata: {}, execution_count: null, outputs: [],
      source: "sum(n * n for n in range(10))" },
  ],
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- config

function noteburstUrl() {
  return $("noteburst-url").value.trim().replace(/\/+$/, "");
}

function graphqlHttpUrl() {
  return `${noteburstUrl()}/graphql`;
}

function graphqlWsUrl() {
  return graphqlHttpUrl().replace(/^http/, "ws"); // http→ws, https→wss
}

function bearer() {
  const token = $("token").value.trim();
  return token ? `Bearer ${token}` : null;
}

// ---------------------------------------------------------------- display

function setStatus(text) {
  $("status").textContent = text;
}

function showProblem(text) {
  $("problem").textContent = text;
}

function log(text) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
  $("log").append(item);
}

function showProgress(execution) {
  const { cellsDone, cellsTotal } = execution.progress;
  $("progress").textContent = `${cellsDone}/${cellsTotal} cells`;
  $("execution").textContent = `(execution ${execution.id})`;
}

// ---------------------------------------------------------------- cells

/** Each cell: its element and its nbformat outputs, as applied so far. */
const cells = new Map();

function cellAt(index, source = null) {
  let cell = cells.get(index);
  if (!cell) {
    const element = document.createElement("section");
    element.className = "cell";
    element.dataset.index = String(index);
    const pre = document.createElement("pre");
    pre.className = "source";
    pre.textContent = source ?? `cell ${index}`;
    const outputs = document.createElement("div");
    outputs.className = "outputs";
    element.append(pre, outputs);
    const later = [...$("cells").children].find((e) => Number(e.dataset.index) > index);
    $("cells").insertBefore(element, later ?? null);
    cell = { element, outputsElement: outputs, outputs: [] };
    cells.set(index, cell);
  }
  return cell;
}

function joined(text) {
  return Array.isArray(text) ? text.join("") : (text ?? "");
}

const ANSI = /\u001b\[[0-9;]*[A-Za-z]/g;

function outputText(output) {
  switch (output.output_type) {
    case "stream":
      return joined(output.text);
    case "execute_result":
    case "display_data": {
      const data = output.data ?? {};
      if ("text/plain" in data) return joined(data["text/plain"]);
      return `[${Object.keys(data).join(", ")}]`;
    }
    case "error":
      return (output.traceback ?? [`${output.ename}: ${output.evalue}`])
        .join("\n")
        .replace(ANSI, "");
    default:
      return "";
  }
}

function renderOutputs(cell) {
  const nodes = cell.outputs.map((output) => {
    const pre = document.createElement("pre");
    pre.className = "output";
    pre.dataset.outputType = output.output_type;
    if (output.output_type === "stream") pre.dataset.stream = output.name;
    pre.textContent = outputText(output);
    return pre;
  });
  cell.outputsElement.replaceChildren(...nodes);
}

// ---------------------------------------------------------------- events

function applyEvent(event) {
  const { kind, execution } = event;
  setStatus(execution.status);
  showProgress(execution);
  if (kind === "RUNNING") {
    // An attempt starts (again, after a retry): its cells start empty.
    for (const cell of cells.values()) {
      cell.outputs = [];
      renderOutputs(cell);
      delete cell.element.dataset.state;
    }
  } else if (kind === "CELL_STARTED") {
    cellAt(event.cellIndex).element.dataset.state = "running";
  } else if (kind === "CELL_FINISHED") {
    cellAt(event.cellIndex).element.dataset.state = "done";
  } else if (kind === "CELL_OUTPUTS") {
    const cell = cellAt(event.cellIndex);
    // outputs[outputStart:] = event.outputs
    cell.outputs = [...cell.outputs.slice(0, event.outputStart), ...event.outputs];
    renderOutputs(cell);
  } else if (kind === "LAB_STARTING" && event.message) {
    log(`lab: ${event.message}`);
  }
  if (kind === "FINISHED" && execution.error) {
    const { code, message, cellIndex } = execution.error;
    const where = cellIndex == null ? "" : ` (cell ${cellIndex})`;
    showProblem(`${code}${where}: ${message}`);
  }
}

function graphqlErrors(errors) {
  return errors.map((e) => e.message).join("; ");
}

// ---------------------------------------------------------------- subscription

let client = null;

function makeClient() {
  client?.dispose();
  client = createClient({
    url: graphqlWsUrl(),
    // A browser cannot set headers on a websocket: the token goes in
    // connection_init's payload, where Noteburst looks for it.  (Cookies an
    // ingress relies on are sent with the handshake by the browser.)
    connectionParams: () => {
      const authorization = bearer();
      return authorization ? { Authorization: authorization } : {};
    },
    // This page reconnects itself, resuming with afterSequence.
    retryAttempts: 0,
    on: {
      connecting: () => log("websocket: connecting"),
      connected: () => log("websocket: connected"),
      closed: (event) => log(`websocket: closed (code ${event?.code ?? "?"})`),
    },
  });
  return client;
}

/** Watch an execution to its end; reconnect after a drop, losing nothing. */
async function watch(executionId) {
  let after = 0; // every event; then the last one applied
  let reconnects = 0;
  const ws = makeClient();
  for (;;) {
    let dispose = () => {};
    const outcome = await new Promise((resolve) => {
      dispose = ws.subscribe(
        { query: WATCH, variables: { id: executionId, after } },
        {
          next(result) {
            if (result.errors) {
              resolve({ errors: result.errors });
              return;
            }
            const event = result.data.executionStatus;
            if (event.sequence <= after) return; // already applied
            after = event.sequence;
            reconnects = 0;
            applyEvent(event);
          },
          error: (error) => resolve({ error }),
          complete: () => resolve({ complete: true }),
        },
      );
    });
    if (outcome.complete) {
      log(`subscription complete after event ${after}`);
      return;
    }
    dispose(); // a no-op unless the stream is still open (errors in a "next")
    const { error } = outcome;
    const errors = outcome.errors ?? (Array.isArray(error) ? error : null);
    if (errors) {
      // A database outage is retryable (extensions.retryable): resume after
      // the last event applied.  Anything else (an unknown id...) is final.
      const retryable = errors.every((e) => e.extensions?.retryable);
      if (retryable && reconnects < MAX_RECONNECTS) {
        reconnects += 1;
        const seconds = Math.max(...errors.map((e) => e.extensions.retryAfterSeconds ?? 1));
        log(`Noteburst unavailable; resuming after event ${after} in ${seconds} s`);
        await new Promise((resolve) => setTimeout(resolve, 1000 * Math.min(seconds, 30)));
        continue;
      }
      showProblem(`subscription refused: ${graphqlErrors(errors)}`);
      setStatus("error");
      return;
    }
    // A handshake that fails (refused, e.g. for an origin Noteburst does
    // not list, or unreachable) reaches the page as a bare "error" Event,
    // then a close with 1006: browsers do not tell a page why.
    const broken = error instanceof Event && !("code" in error);
    const code = broken ? 1006 : error?.code;
    if (RECONNECT_CODES.has(code) && reconnects < MAX_RECONNECTS) {
      reconnects += 1;
      log(`reconnecting (${reconnects}/${MAX_RECONNECTS}) after event ${after}`);
      await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** reconnects));
      continue;
    }
    if (broken) {
      showProblem(
        "the websocket could not be opened or broke (code 1006; the browser does not " +
          "say why): is this page's origin in NOTEBURST_CORS_ORIGINS, is Noteburst reachable?",
      );
    } else if (code === undefined) {
      showProblem(`subscription failed: ${error}`);
    } else {
      const reason = error.reason ? `: ${error.reason}` : "";
      showProblem(`the subscription was closed (code ${code}${reason})`);
    }
    setStatus("disconnected");
    return;
  }
}

// ---------------------------------------------------------------- mutation

async function submit(notebook) {
  const headers = { "Content-Type": "application/json" };
  const authorization = bearer();
  if (authorization) headers.Authorization = authorization;
  let response;
  try {
    response = await fetch(graphqlHttpUrl(), {
      method: "POST",
      headers,
      // Send the cookies of Noteburst's site (an authenticating ingress's
      // session); Noteburst allows credentials for listed origins only.
      credentials: "include",
      body: JSON.stringify({ query: SUBMIT, variables: { input: { notebook } } }),
    });
  } catch (error) {
    // A refused CORS request looks like a network error to the page: the
    // browser hides the answer (details are in the browser's console).
    throw new Error(
      `Noteburst could not be reached or did not allow this origin (${error.name}: ` +
        `${error.message}); is ${location.origin} in NOTEBURST_CORS_ORIGINS?`,
    );
  }
  const body = await response.json().catch(() => null);
  if (body?.errors) throw new Error(`HTTP ${response.status}: ${graphqlErrors(body.errors)}`);
  if (!response.ok || !body?.data) throw new Error(`HTTP ${response.status}`);
  return body.data.submitExecution;
}

function readNotebook() {
  try {
    return JSON.parse($("notebook").value);
  } catch (error) {
    throw new Error(`the notebook is not JSON: ${error.message}`);
  }
}

function resetCells(notebook) {
  cells.clear();
  $("cells").replaceChildren();
  $("progress").textContent = "";
  $("execution").textContent = "";
  showProblem("");
  (notebook?.cells ?? []).forEach((cell, index) => {
    if (cell.cell_type === "code") cellAt(index, joined(cell.source));
  });
}

async function submitAndWatch() {
  const notebook = readNotebook();
  resetCells(notebook);
  setStatus("submitting");
  const payload = await submit(notebook);
  if (payload.__typename !== "Execution") {
    const detail = payload.availableKernels ? ` (available: ${payload.availableKernels})` : "";
    showProblem(`${payload.__typename}: ${payload.message}${detail}`);
    setStatus("refused");
    return;
  }
  $("execution-id").value = payload.id;
  showProgress(payload);
  setStatus(payload.status);
  await watch(payload.id);
}

async function watchExisting() {
  const id = $("execution-id").value.trim();
  if (!id) return;
  resetCells(null);
  setStatus("connecting");
  await watch(id);
}

function run(action) {
  action().catch((error) => {
    showProblem(error.message);
    setStatus("error");
  });
}

// ---------------------------------------------------------------- start

const params = new URLSearchParams(location.search);
if (params.has("noteburst")) $("noteburst-url").value = params.get("noteburst");
$("notebook").value = JSON.stringify(DEFAULT_NOTEBOOK, null, 1);
$("notebook-file").addEventListener("change", async (event) => {
  const [file] = event.target.files;
  if (file) $("notebook").value = await file.text();
});
$("config").addEventListener("submit", (event) => {
  event.preventDefault();
  run(submitAndWatch);
});
$("watch").addEventListener("click", () => run(watchExisting));
document.body.dataset.ready = "true";

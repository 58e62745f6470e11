// The jobs page: recent jobs followed live, dispatch of each analysis, and finished results.
// Plain browser JavaScript, no build step. The page keeps no token: signing in hands it to the
// API once (POST /api/session), which keeps it in an HttpOnly session cookie that the browser
// sends with every request and event stream from then on. No token is ever in a URL.
"use strict";

(() => {
  const JOB_LIMIT = 30;
  const ENTITY_LIMIT = 500;
  const POLL_MS = 1000;
  const POLL_MAX_MS = 15000;
  const LIST_REFRESH_MS = 10000;
  // A browser opens at most six HTTP/1.1 connections to one host: a few streams, the rest poll.
  const MAX_STREAMS = 4;
  const STREAM_ERRORS_BEFORE_POLLING = 3;

  const DISPATCH = {
    "ai-match": { path: (id) => `/api/gap-analysis/ai-match/${id}`, noun: "mapping" },
    "ai-coverage": { path: (id) => `/api/requirements/${id}/ai-coverage`, noun: "requirement" },
    "ai-map-controls": { path: (id) => `/api/documents/${id}/ai-map-controls`, noun: "document" },
  };

  // -- requests, and the one place that adds credentials -----------------------------------

  let signedIn = false; // this page signed in, so a 401 means the session ran out

  /** A sign-in redirect may hand over a token in the fragment, which is never sent to servers:
   * it is exchanged for the session cookie at once and removed from the address bar. */
  async function takeTokenFromUrl() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    const token = params.get("access_token");
    if (!token) return;
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    await signIn(token);
  }

  /** Hands the token to the API, which answers with the session cookie; true if accepted. */
  async function signIn(token) {
    const response = await fetch("/api/session", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ accessToken: token }),
      cache: "no-store",
      credentials: "same-origin",
    });
    signedIn = response.ok;
    return response.ok;
  }

  /** fetch() for the API, JSON in; the browser adds the session cookie. */
  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    headers.set("Accept", "application/json");
    const response = await fetch(path, {
      ...options, headers, cache: "no-store", credentials: "same-origin",
    });
    if (response.status === 401) askForToken(signedIn);
    return response;
  }

  function askForToken(rejected) {
    const panel = $("#sign-in");
    $("#sign-in-rejected").hidden = !rejected;
    if (panel.hidden) {
      panel.hidden = false;
      $("#token").focus();
    }
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function errorOf(response) {
    let code = "error";
    let message = `${response.status} ${response.statusText}`.trim();
    try {
      const body = await response.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      }
    } catch (_) {
      // not a JSON error body: the status line says enough
    }
    return new ApiError(response.status, code, message);
  }

  async function apiJson(path, options) {
    const response = await api(path, options);
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }

  function describeError(err) {
    if (err instanceof ApiError) return `${err.message} (${err.status} ${err.code})`;
    return `The API could not be reached: ${err && err.message ? err.message : err}`;
  }

  // -- state -------------------------------------------------------------------------------

  const jobs = new Map(); // id -> job JSON
  let order = []; // ids of the table's rows, newest first
  let selected = null; // id of the job in the details panel
  const followers = new Map(); // id -> {kind: "stream" | "poll", stop()}
  let streamsBroken = !("EventSource" in window);
  const entities = { mappings: new Map(), requirements: new Map(), documents: new Map() };
  const controlNames = new Map(); // job id -> Map(control id -> {code, title})

  const $ = (selector) => document.querySelector(selector);

  const isFinished = (job) => job.status === "completed" || job.status === "failed";

  /** A job's updatedAt in microseconds, to keep the newest of two copies of a job. */
  function stamp(iso) {
    if (!iso) return -Infinity;
    const fraction = /\.(\d+)/.exec(iso);
    const micros = fraction ? Number((fraction[1] + "000000").slice(0, 6)) : 0;
    return Math.floor(Date.parse(iso) / 1000) * 1e6 + micros;
  }

  // -- DOM helpers -------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
  const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
    dateStyle: "medium",
    timeStyle: "medium",
  });

  function timeEl(iso) {
    if (!iso) return h("span", { class: "muted" }, "—");
    const date = new Date(iso);
    const today = date.toDateString() === new Date().toDateString();
    return h(
      "time",
      { datetime: iso, title: dateTimeFormat.format(date) },
      today ? timeFormat.format(date) : dateTimeFormat.format(date),
    );
  }

  function seconds(fromIso, toIso) {
    const ms = Date.parse(toIso) - Date.parse(fromIso);
    return Number.isFinite(ms) ? `${(ms / 1000).toFixed(1)} s` : null;
  }

  function entityLabel(job) {
    const id = job.entityId;
    if (job.jobType === "ai-match") {
      const m = entities.mappings.get(id);
      return m ? `${m.requirementCode} ↔ ${m.documentTitle}` : `Mapping #${id}`;
    }
    if (job.jobType === "ai-coverage") {
      const r = entities.requirements.get(id);
      return r ? `${r.code} ${r.title}` : `Requirement #${id}`;
    }
    const d = entities.documents.get(id);
    return d ? d.title : `Document #${id}`;
  }

  function badge(job) {
    return h("span", { class: `badge badge-${job.status}` }, job.status);
  }

  /** A progress bar: determinate with progress, full when completed, else indeterminate. */
  function progressBar(job) {
    const progress = job.progress;
    const known = progress && progress.total > 0 && progress.current !== null;
    const bar = h("div", {
      class: `progress progress-${job.status}`,
      role: "progressbar",
      "aria-label": `Progress of ${job.jobType}`,
    });
    const fill = h("div", { class: "progress-fill" });
    bar.append(fill);
    if (known) {
      const current = Math.min(progress.current, progress.total);
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", String(progress.total));
      bar.setAttribute("aria-valuenow", String(current));
      bar.setAttribute("aria-valuetext", `${current} of ${progress.total}`);
      fill.style.width = `${(100 * current) / progress.total}%`;
    } else if (job.status === "completed") {
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "1");
      bar.setAttribute("aria-valuenow", "1");
      bar.setAttribute("aria-valuetext", "done");
      fill.style.width = "100%";
    } else if (job.status === "failed") {
      bar.setAttribute("aria-valuetext", "failed");
    } else {
      bar.classList.add("indeterminate");
      bar.setAttribute("aria-valuetext", job.status === "pending" ? "waiting" : "working");
    }
    return bar;
  }

  function progressMessage(job) {
    if (job.status === "failed") return job.errorMessage || "Failed";
    if (job.progressMessage) return job.progressMessage;
    if (job.status === "pending") return "Waiting for a worker…";
    if (job.status === "completed") return "Done";
    return "Working…";
  }

  function shortId(id) {
    return id.slice(0, 8);
  }

  // -- the table ---------------------------------------------------------------------------

  const rows = new Map(); // id -> <tr>

  function renderRow(job) {
    let tr = rows.get(job.id);
    if (!tr) {
      tr = h("tr", { "data-job-id": job.id });
      tr.addEventListener("click", (event) => {
        if (!event.target.closest("button")) showJob(job.id);
      });
      rows.set(job.id, tr);
    }
    tr.dataset.jobType = job.jobType;
    tr.dataset.status = job.status;
    tr.classList.toggle("selected", job.id === selected);
    tr.replaceChildren(
      h(
        "td",
        {},
        h(
          "button",
          {
            type: "button",
            class: "job-link",
            "aria-controls": "detail",
            "aria-current": job.id === selected ? "true" : null,
            title: `Show job ${job.id}`,
            onclick: () => showJob(job.id),
          },
          job.jobType,
        ),
        h("span", { class: "job-id" }, shortId(job.id)),
      ),
      h("td", { class: "entity col-entity" }, entityLabel(job)),
      h("td", {}, badge(job)),
      h(
        "td",
        { class: "col-progress" },
        progressBar(job),
        h("span", { class: `progress-message${job.status === "failed" ? " failed" : ""}` },
          progressMessage(job)),
      ),
      h("td", { class: "created col-created" }, timeEl(job.createdAt)),
    );
    return tr;
  }

  function renderTable() {
    const body = $("#jobs tbody");
    const wanted = new Set(order);
    for (const [id, tr] of rows) {
      if (!wanted.has(id)) {
        tr.remove();
        rows.delete(id);
      }
    }
    for (const id of order) body.append(rows.get(id) || renderRow(jobs.get(id)));
    $("#jobs-empty").hidden = order.length > 0;
  }

  function renderAll() {
    for (const id of order) renderRow(jobs.get(id));
    renderTable();
    renderDetail();
  }

  // -- following jobs: EventSource, else polling -------------------------------------------

  function streamCount() {
    let count = 0;
    for (const f of followers.values()) if (f.kind === "stream") count += 1;
    return count;
  }

  function follow(id) {
    if (followers.has(id)) return;
    const live = !streamsBroken && streamCount() < MAX_STREAMS;
    followers.set(id, live ? streamFollower(id) : pollFollower(id));
    showConnection();
  }

  function unfollow(id) {
    const follower = followers.get(id);
    if (!follower) return;
    follower.stop();
    followers.delete(id);
    // A stream slot came free: a job that polls for want of one gets it.
    if (follower.kind === "stream" && !streamsBroken) {
      for (const [other, f] of followers) {
        if (f.kind === "poll") {
          f.stop();
          followers.set(other, streamFollower(other));
          break;
        }
      }
    }
    showConnection();
  }

  function fallBackToPolling(id) {
    const follower = followers.get(id);
    if (follower) follower.stop();
    followers.set(id, pollFollower(id));
    showConnection();
  }

  function streamFollower(id) {
    const source = new EventSource(`/api/ai-jobs/${encodeURIComponent(id)}/events`);
    let errors = 0;
    source.addEventListener("job", (event) => {
      errors = 0;
      let job;
      try {
        job = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      receive(job);
    });
    // The model's text as it is written: not in the log, so a reconnect does not replay it.
    source.addEventListener("delta", (event) => {
      let delta;
      try {
        delta = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      receiveDelta(delta);
    });
    source.addEventListener("error", () => {
      if (followers.get(id) !== follower) return;
      errors += 1;
      if (source.readyState === EventSource.CLOSED) {
        // The server refused the stream (an error status) or said it was over: ask directly.
        fallBackToPolling(id);
      } else if (errors >= STREAM_ERRORS_BEFORE_POLLING) {
        streamsBroken = true;
        fallBackToPolling(id);
      }
    });
    const follower = { kind: "stream", stop: () => source.close() };
    return follower;
  }

  function pollFollower(id) {
    let stopped = false;
    let timer = null;
    let etag = null;
    let failures = 0;

    async function poll() {
      let delay = POLL_MS;
      try {
        const headers = etag ? { "If-None-Match": etag } : {};
        const response = await api(`/api/ai-jobs/${encodeURIComponent(id)}`, { headers });
        if (stopped) return;
        const retryAfter = Number(response.headers.get("Retry-After"));
        if (retryAfter > 0) delay = retryAfter * 1000;
        if (response.status === 200) {
          failures = 0;
          etag = response.headers.get("ETag");
          receive(await response.json());
        } else if (response.status === 304) {
          failures = 0;
        } else if (response.status === 404) {
          gone(id);
          return;
        } else {
          failures += 1;
          delay = Math.max(delay, Math.min(POLL_MS * 2 ** failures, POLL_MAX_MS));
        }
      } catch (_) {
        failures += 1;
        delay = Math.min(POLL_MS * 2 ** failures, POLL_MAX_MS);
      }
      if (!stopped && followers.get(id) === follower) timer = setTimeout(poll, delay);
    }

    const follower = {
      kind: "poll",
      stop: () => {
        stopped = true;
        clearTimeout(timer);
      },
    };
    timer = setTimeout(poll, 0);
    return follower;
  }

  // The text of running jobs as the model writes it: id -> {attempt, streams: key -> stream}.
  const liveText = new Map();

  function streamKey(delta) {
    return `${delta.part || ""}|${delta.controlId ?? ""}|${delta.field}`;
  }

  /**
   * Text a running job's model wrote since the last delta. A new attempt starts afresh, and so
   * does a text whose delta does not start where it ends (offset 0 and no text: the answer is
   * being written again, what was shown of it goes).
   */
  function receiveDelta(delta) {
    let live = liveText.get(delta.jobId);
    if (live && delta.attempt < live.attempt) return;
    if (!live || delta.attempt > live.attempt) {
      live = { attempt: delta.attempt, streams: new Map(), latest: null };
      liveText.set(delta.jobId, live);
    }
    const key = streamKey(delta);
    const known = live.streams.get(key);
    const stream = known && known.end === delta.offset
      ? known
      : { field: delta.field, part: delta.part, controlId: delta.controlId, text: "", end: delta.offset };
    stream.text += delta.text;
    stream.end += delta.text.length;
    live.streams.set(key, stream);
    if (delta.text) live.latest = key;
    if (delta.jobId === selected) renderLiveText(delta.jobId);
  }

  /** What the selected job's model is writing: the text it wrote to last. */
  function liveTextSection(id) {
    const live = liveText.get(id);
    const stream = live && live.streams.get(live.latest);
    if (!stream) return null;
    return h("section", { class: "live-text", "aria-label": "Being written" },
      h("h3", {}, "Being written"),
      h("p", { class: "live-stream", "data-field": stream.field },
        stream.part ? h("span", { class: "muted" }, `${stream.part.replace(/-/g, " ")}: `) : null,
        stream.controlId != null ? h("span", { class: "code" }, `#${stream.controlId} `) : null,
        stream.text));
  }

  function renderLiveText(id) {
    const section = liveTextSection(id);
    const current = $("#detail-body .live-text");
    if (current && section) current.replaceWith(section);
    else renderDetail();
  }

  /** The controls the finished batches of a running ai-map-controls job have mapped. */
  function partialControls(job) {
    const partial = job.partialResult;
    if (!partial) return null;
    const mapped = partial.mappedControls || [];
    return h("section", { class: "partial-result", "aria-label": "Found so far" },
      h("h3", {}, "Found so far"),
      h("p", { class: "summary" },
        h("strong", { class: "mapped-count" }, String(mapped.length)),
        ` control${mapped.length === 1 ? "" : "s"} mapped by ${partial.batchesDone} finished batch${partial.batchesDone === 1 ? "" : "es"}.`),
      mapped.length
        ? h("table", { class: "result-table controls" },
          h("thead", {}, h("tr", {},
            h("th", { scope: "col" }, "Control"),
            h("th", { scope: "col", class: "num" }, "Confidence"),
            h("th", { scope: "col" }, "Rationale"))),
          h("tbody", {}, mapped.map((c) => h("tr", { "data-control-id": c.controlId },
            h("td", {}, h("span", { class: "code" }, `#${c.controlId}`)),
            h("td", { class: "num" }, h("span", { class: "confidence" }, `${c.confidence}%`)),
            h("td", { class: "rationale" }, c.rationale)))))
        : null);
  }

  /** A newer state of a job, from a stream, a poll, the list or a dispatch. */
  function receive(job) {
    const known = jobs.get(job.id);
    if (known && stamp(known.updatedAt) > stamp(job.updatedAt)) return; // an older copy
    jobs.set(job.id, job);
    if (isFinished(job)) liveText.delete(job.id);
    if (rows.has(job.id) || order.includes(job.id)) renderRow(job);
    if (job.id === selected) renderDetail();
    if (isFinished(job)) unfollow(job.id);
    else follow(job.id);
  }

  function gone(id) {
    unfollow(id);
    jobs.delete(id);
    order = order.filter((other) => other !== id);
    if (selected === id) selected = null;
    renderTable();
    renderDetail();
  }

  function showConnection() {
    const streams = streamCount();
    const polls = followers.size - streams;
    const el = $("#connection");
    let text;
    let mode;
    if (followers.size === 0) {
      text = "Up to date";
      mode = "idle";
    } else if (polls === 0) {
      text = `Live: following ${streams} job${streams === 1 ? "" : "s"}`;
      mode = "live";
    } else {
      text = `Following ${followers.size} job${followers.size === 1 ? "" : "s"}`
        + (streams ? ` (${polls} by polling)` : " by polling");
      mode = "polling";
    }
    el.dataset.mode = mode;
    $("#connection-text").textContent = text;
  }

  // -- loading -----------------------------------------------------------------------------

  let listLoading = null;

  async function loadJobs() {
    if (listLoading) return listLoading;
    listLoading = (async () => {
      const error = $("#jobs-error");
      try {
        const list = await apiJson(`/api/ai-jobs?limit=${JOB_LIMIT}`);
        error.hidden = true;
        const ids = list.map((job) => job.id);
        const listed = new Set(ids);
        // Jobs dispatched while the list was on its way are newer than all of it.
        const newest = list.length ? stamp(list[0].createdAt) : -Infinity;
        const fresh = order.filter((id) => {
          const job = jobs.get(id);
          return !listed.has(id) && job && (!job.createdAt || stamp(job.createdAt) > newest);
        });
        for (const id of order) {
          if (!listed.has(id) && !fresh.includes(id) && id !== selected) unfollow(id);
        }
        order = [...fresh, ...ids];
        for (const job of list) receive(job);
        renderTable();
      } catch (err) {
        error.textContent = `Could not load the jobs. ${describeError(err)}`;
        error.hidden = false;
      } finally {
        listLoading = null;
      }
    })();
    return listLoading;
  }

  function fillSelect(select, items, label, what) {
    const previous = select.value;
    const form = select.form;
    if (items.length === 0) {
      select.replaceChildren(h("option", { value: "" }, `No ${what} yet`));
      select.disabled = true;
      form.querySelector("button").disabled = true;
      return;
    }
    select.replaceChildren(...items.map((item) => h("option", { value: item.id }, label(item))));
    if (previous && items.some((item) => String(item.id) === previous)) select.value = previous;
    select.disabled = false;
    form.querySelector("button").disabled = false;
  }

  async function loadEntities() {
    const error = $("#dispatch-error");
    try {
      const [mappings, requirements, documents] = await Promise.all([
        apiJson(`/api/gap-analysis/mappings?limit=${ENTITY_LIMIT}`),
        apiJson(`/api/requirements?limit=${ENTITY_LIMIT}`),
        apiJson(`/api/documents?limit=${ENTITY_LIMIT}`),
      ]);
      for (const [map, list] of [
        [entities.mappings, mappings],
        [entities.requirements, requirements],
        [entities.documents, documents],
      ]) {
        map.clear();
        for (const item of list) map.set(item.id, item);
      }
      fillSelect($("#pick-mapping"), mappings,
        (m) => `${m.requirementCode} ${m.requirementTitle} ↔ ${m.documentTitle}`, "mappings");
      fillSelect($("#pick-requirement"), requirements, (r) => `${r.code} ${r.title}`,
        "requirements");
      fillSelect($("#pick-document"), documents,
        (d) => `${d.title} (${d.length.toLocaleString()} characters)`, "documents");
      if (!mappings.length && !requirements.length && !documents.length) {
        say("There is nothing to analyse yet: `aijobs demo` loads a sample data set.");
      }
      renderAll();
    } catch (err) {
      for (const select of document.querySelectorAll("form.card select")) {
        select.replaceChildren(h("option", { value: "" }, "Unavailable"));
      }
      error.textContent = `Could not load the entities. ${describeError(err)}`;
      error.hidden = false;
    }
  }

  // -- dispatch ----------------------------------------------------------------------------

  function say(text) {
    $("#dispatch-message").textContent = text;
  }

  async function dispatch(form) {
    const jobType = form.dataset.jobType;
    const select = form.querySelector("select");
    const button = form.querySelector("button");
    const error = $("#dispatch-error");
    const entityId = Number(select.value);
    if (!entityId) return;
    error.hidden = true;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    say(`Starting ${jobType}…`);
    try {
      const response = await api(DISPATCH[jobType].path(entityId), { method: "POST" });
      if (response.status !== 202) throw await errorOf(response);
      const { jobId, status } = await response.json();
      const already = jobs.has(jobId);
      if (!already) {
        jobs.set(jobId, {
          id: jobId, jobType, entityId, status, progressMessage: null, progress: null,
          result: null, errorMessage: null, attempts: 0, maxAttempts: null,
          createdAt: null, updatedAt: null,
        });
      }
      order = [jobId, ...order.filter((id) => id !== jobId)];
      renderRow(jobs.get(jobId));
      renderTable();
      selectJob(jobId);
      if (!isFinished(jobs.get(jobId))) follow(jobId);
      say(already
        ? `This ${DISPATCH[jobType].noun} is already being analysed: following job ${shortId(jobId)}.`
        : `Started ${jobType} as job ${shortId(jobId)}.`);
    } catch (err) {
      say("");
      error.textContent = `Could not start ${jobType}: ${describeError(err)}`;
      error.hidden = false;
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  // -- the details panel -------------------------------------------------------------------

  /** Show a job in the details panel, and take the reader there. */
  function showJob(id) {
    selectJob(id);
    $("#detail-title").focus({ preventScroll: true });
    if (window.matchMedia("(max-width: 1099px)").matches) {
      $("#detail").scrollIntoView({ behavior: "smooth", block: "start" });
    }
  }

  function selectJob(id) {
    const previous = selected;
    selected = id;
    for (const other of [previous, id]) {
      if (other && jobs.has(other) && rows.has(other)) renderRow(jobs.get(other));
    }
    renderDetail();
  }

  function definitionList(pairs) {
    return h("dl", { class: "meta" },
      pairs.filter(([, value]) => value !== null && value !== undefined).map(([term, value]) => [
        h("dt", {}, term),
        h("dd", {}, value),
      ]));
  }

  function scoreBlock(label, score) {
    return h("div", { class: "score" },
      h("span", { class: "score-label" }, label),
      h("span", { class: "score-value", "data-score": score }, String(score)),
      h("span", { class: "score-of" }, "/ 100"),
      h("meter", { min: 0, max: 100, low: 50, high: 75, optimum: 100, value: score,
        "aria-label": `${label}: ${score} of 100` }));
  }

  function list(items, empty) {
    if (!items || items.length === 0) return h("p", { class: "muted" }, empty);
    return h("ul", { class: "items" }, items.map((item) => h("li", {}, item)));
  }

  function analyzerLine(result) {
    const usage = result.usage || {};
    const who = result.analyzer === "offline"
      ? "the offline analyzer"
      : `Claude${result.model ? ` (${result.model})` : ""}`;
    const calls = usage.calls ? ` in ${usage.calls} call${usage.calls === 1 ? "" : "s"}` : "";
    return h("p", { class: "analyzer" }, `Answered by ${who}${calls}.`);
  }

  function matchResult(result) {
    return [
      scoreBlock("Match score", result.aiMatchScore),
      h("h4", {}, "Rationale"),
      h("p", { class: "prose" }, result.aiMatchRationale),
      h("h4", {}, "Recommendations"),
      list(result.aiMatchRecommendations, "No recommendations."),
    ];
  }

  function coverageResult(result) {
    const documents = result.documents || [];
    return [
      scoreBlock("Coverage", result.coverageScore),
      h("h4", {}, "Summary"),
      h("p", { class: "prose" }, result.summary),
      h("h4", {}, "Gaps"),
      list(result.gaps, "No gaps found."),
      h("h4", {}, "Documents"),
      documents.length
        ? h("table", { class: "result-table" },
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Document"),
            h("th", { scope: "col", class: "num" }, "Score"))),
          h("tbody", {}, documents.map((d) => {
            const doc = entities.documents.get(d.documentId);
            return h("tr", {}, h("td", {}, doc ? doc.title : `Document #${d.documentId}`),
              h("td", { class: "num" }, String(d.score)));
          })))
        : h("p", { class: "muted" }, "No documents are mapped to this requirement."),
    ];
  }

  function mapControlsResult(job) {
    const result = job.result;
    const mapped = result.mappedControls || [];
    const names = controlNames.get(job.id);
    const summary = h("p", { class: "summary" },
      h("strong", { class: "mapped-count" }, String(mapped.length)),
      ` control${mapped.length === 1 ? "" : "s"} mapped, in ${result.batches} batch${result.batches === 1 ? "" : "es"}.`);
    if (!mapped.length) return [summary];
    if (!names) return [summary, h("p", { class: "muted" }, "Loading the controls…")];
    return [
      summary,
      h("table", { class: "result-table controls" },
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Control"),
          h("th", { scope: "col", class: "num" }, "Confidence"),
          h("th", { scope: "col" }, "Rationale"))),
        h("tbody", {}, mapped.map((c) => {
          const name = names && names.get(c.controlId);
          return h("tr", { "data-control-id": c.controlId },
            h("td", {}, name
              ? [h("span", { class: "code" }, name.code), " ", name.title]
              : h("span", { class: "code" }, `#${c.controlId}`)),
            h("td", { class: "num" }, h("span", { class: "confidence" }, `${c.confidence}%`)),
            h("td", { class: "rationale" }, c.rationale));
        }))),
    ];
  }

  const controlNamesLoading = new Set();

  /** Codes and titles of the controls a finished ai-map-controls job mapped. */
  async function loadControlNames(job) {
    if (controlNames.has(job.id) || controlNamesLoading.has(job.id)) return;
    controlNamesLoading.add(job.id);
    try {
      const mapped = await apiJson(`/api/documents/${job.entityId}/controls`);
      controlNames.set(job.id, new Map(mapped.map((c) => [c.controlId, c])));
    } catch (_) {
      controlNames.set(job.id, new Map()); // the table shows the ids
    } finally {
      controlNamesLoading.delete(job.id);
    }
    if (selected === job.id) renderDetail();
  }

  function resultOf(job) {
    const result = job.result || {};
    let body;
    if (job.jobType === "ai-match") body = matchResult(result);
    else if (job.jobType === "ai-coverage") body = coverageResult(result);
    else body = mapControlsResult(job);
    return h("section", { class: "result", "data-result": job.jobType, "aria-label": "Result" },
      h("h3", {}, "Result"), body, analyzerLine(result));
  }

  function renderDetail() {
    const container = $("#detail-body");
    const job = selected && jobs.get(selected);
    if (!job) {
      container.replaceChildren(
        h("p", { class: "empty" }, "Choose a job to see its progress and its result."));
      return;
    }
    if (job.status === "completed" && job.jobType === "ai-map-controls") loadControlNames(job);
    const took = job.startedAt && job.finishedAt ? seconds(job.startedAt, job.finishedAt) : null;
    const parts = [
      h("div", { class: "detail-head", "data-job-id": job.id, "data-status": job.status },
        h("h3", {}, job.jobType), badge(job)),
      h("p", { class: "detail-entity" }, entityLabel(job)),
      h("div", { class: "detail-progress" },
        progressBar(job),
        h("span", { class: "progress-message" }, job.status === "failed" ? "Failed" : progressMessage(job))),
      job.status === "failed"
        ? h("div", { class: "error-box", role: "alert" },
          h("strong", {}, "The job failed. "), job.errorMessage || "No reason was given.")
        : null,
      job.status === "completed" ? resultOf(job) : null,
      job.status === "processing" ? partialControls(job) : null,
      job.status === "processing" ? liveTextSection(job.id) : null,
      definitionList([
        ["Job id", h("code", {}, job.id)],
        ["Attempts", job.maxAttempts ? `${job.attempts} of ${job.maxAttempts}` : null],
        ["Created", job.createdAt ? timeEl(job.createdAt) : null],
        ["Started", job.startedAt ? timeEl(job.startedAt) : null],
        ["Finished", job.finishedAt ? timeEl(job.finishedAt) : null],
        ["Took", took],
      ]),
    ];
    container.replaceChildren(...parts.filter(Boolean));
  }

  // -- start -------------------------------------------------------------------------------

  async function start() {
    $("#sign-in-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = $("#token");
      const accepted = await signIn(input.value.trim());
      input.value = "";
      if (!accepted) {
        askForToken(true);
        return;
      }
      $("#sign-in").hidden = true;
      loadEntities();
      loadJobs();
    });
    for (const form of document.querySelectorAll("form.card")) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        dispatch(form);
      });
    }
    $("#refresh").addEventListener("click", () => {
      loadEntities();
      loadJobs();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") loadJobs();
    });
    setInterval(() => {
      if (document.visibilityState === "visible") loadJobs();
    }, LIST_REFRESH_MS);
    showConnection();
    await takeTokenFromUrl();
    loadEntities();
    loadJobs();
  }

  start();
})();

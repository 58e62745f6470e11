/** useAiJob: live from the event stream, polling only as the fallback, stopping when done and
 * on 401, 403 and 404. In jsdom on the API's origin, signed in by the session cookie. */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { afterEach, test } from "node:test";

import { AiJobsError, dispatch } from "../src/index.js";
import { useAiJob } from "../src/react.js";
import { anonToken, count, entities, renderJob, signIn, signOut, sleep, until } from "./fixtures.js";
import { requests } from "./setup.js";

afterEach(signOut);

test("useAiJob is updated live from the event stream, and reads the job once", async () => {
  await signIn();
  const { jobId } = await dispatch("ai-map-controls", entities.document);
  const rendered = renderJob(useAiJob, jobId);
  try {
    await until(() => rendered.result.current.data?.status === "completed", "completed");
    const final = rendered.result.current.data!;
    assert.equal(final.result?.mappedControls?.length, entities.mapped);
    assert.equal(final.result?.batches, 3);
    // Every step of the progress reached the cache, in order: the stream, not a 2 s poll.
    const steps = rendered.cached.filter((job) => job.status === "processing");
    const messages = steps.map((job) => job.progressMessage);
    assert.ok(messages.includes("Analyzing batch 1 of 3..."), messages.join(" | "));
    assert.ok(messages.includes("Analyzed 3 of 3 batches"), messages.join(" | "));
    const done = steps.map((job) => job.progress?.current ?? 0);
    assert.deepEqual(done, [...done].sort((a, b) => a - b));
    assert.ok(new Set(rendered.seen.map((job) => job.progressMessage)).size >= 2);
    assert.equal(count(`/api/ai-jobs/${jobId}`), 1);
    assert.equal(count(`/api/ai-jobs/${jobId}/events`), 1);
  } finally {
    rendered.unmount();
  }
});

test("useAiJob polls at the server's Retry-After when there is no EventSource", async () => {
  await signIn();
  const { jobId } = await dispatch("ai-map-controls", entities.document);
  const rendered = renderJob((id) => useAiJob(id, { EventSource: null }), jobId);
  try {
    await until(() => rendered.result.current.data?.status === "completed", "completed");
    assert.ok(count(`/api/ai-jobs/${jobId}`) >= 2);
    assert.equal(count(`/api/ai-jobs/${jobId}/events`), 0);
    const polls = count(`/api/ai-jobs/${jobId}`);
    await sleep(1500);
    assert.equal(count(`/api/ai-jobs/${jobId}`), polls, "polled after the end");
  } finally {
    rendered.unmount();
  }
});

async function assertStops(jobId: string, status: number): Promise<void> {
  const rendered = renderJob(useAiJob, jobId);
  try {
    await until(() => rendered.result.current.isError, `an error ${status}`);
    const error = rendered.result.current.error;
    assert.ok(error instanceof AiJobsError, String(error));
    assert.equal(error.status, status);
    const reads = count(`/api/ai-jobs/${jobId}`);
    const streams = count(`/api/ai-jobs/${jobId}/events`);
    const log = requests.filter((r) => r.includes(jobId)).join(", ");
    assert.ok(reads <= 2 && streams <= 1, `${reads} reads, ${streams} streams: ${log}`);
    // Neither polling nor reopening the stream: 2.5 s is more than one Retry-After and
    // one EventSource retry.
    await sleep(2500);
    assert.equal(count(`/api/ai-jobs/${jobId}`), reads);
    assert.equal(count(`/api/ai-jobs/${jobId}/events`), streams);
  } finally {
    rendered.unmount();
  }
}

test("useAiJob stops on 404: no such job, or not yours", async () => {
  await signIn();
  await assertStops(randomUUID(), 404);
});

test("useAiJob stops on 401: not signed in", async () => {
  await signIn();
  const { jobId } = await dispatch("ai-match", entities.mapping);
  signOut();
  await assertStops(jobId, 401);
});

test("useAiJob stops on 403: a token of a role the API does not serve", async () => {
  await signIn();
  const { jobId } = await dispatch("ai-match", entities.mapping);
  signOut();
  const { dom } = await import("./setup.js");
  dom.cookieJar.setCookieSync(`aijobs_token=${anonToken}; Path=/`, dom.window.location.href);
  await assertStops(jobId, 403);
});

/** dispatch and followJob as a client on another origin uses them: a bearer token, the base
 * URL, EventSource with the token in the query, and polling when streams do not work. */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import {
  type AiJob,
  AiJobsError,
  dispatch,
  type EventSourceClass,
  type EventSourceLike,
  followJob,
} from "../src/index.js";
import { entities, token } from "./fixtures.js";
import { baseUrl, requests } from "./setup.js";

const options = { baseUrl, token };

function follow(jobId: string, extra: Parameters<typeof followJob>[2] = {}): Promise<AiJob[]> {
  return new Promise((resolve, reject) => {
    const seen: AiJob[] = [];
    const timer = setTimeout(() => reject(new Error(`not finished: ${JSON.stringify(seen.at(-1))}`)), 30_000);
    followJob(
      jobId,
      (job) => {
        seen.push(job);
        if (job.status === "completed" || job.status === "failed") {
          clearTimeout(timer);
          resolve(seen);
        }
      },
      { ...options, ...extra, onError: (error) => reject(error) },
    );
  });
}

test("dispatch answers at once with the job id; followJob streams it to the end", async () => {
  const dispatched = await dispatch("ai-map-controls", entities.document, options);
  assert.equal(dispatched.status, "pending");
  assert.match(dispatched.jobId, /^[0-9a-f-]{36}$/);
  const seen = await follow(dispatched.jobId);
  const final = seen.at(-1)!;
  assert.equal(final.status, "completed");
  assert.equal(final.result?.mappedControls?.length, entities.mapped);
  assert.ok(seen.filter((job) => job.status === "processing").length >= 4);
  assert.equal(requests.filter((r) => r === `GET /api/ai-jobs/${dispatched.jobId}`).length, 0);
  // The bearer token went in the stream's query, the one route that takes it there.
  assert.ok(requests.some((r) => r.startsWith(`GET /api/ai-jobs/${dispatched.jobId}/events?access_token=`)));
});

test("the same Idempotency-Key answers with the same job", async () => {
  const key = randomUUID();
  const first = await dispatch("ai-match", entities.mapping, { ...options, idempotencyKey: key });
  const again = await dispatch("ai-match", entities.mapping, { ...options, idempotencyKey: key });
  assert.equal(again.jobId, first.jobId);
});

test("followJob polls when there is no EventSource", async () => {
  const { jobId } = await dispatch("ai-map-controls", entities.document, options);
  const seen = await follow(jobId, { EventSource: null });
  assert.equal(seen.at(-1)!.status, "completed");
  assert.ok(requests.filter((r) => r === `GET /api/ai-jobs/${jobId}`).length >= 2);
});

/** An EventSource whose connection fails again and again, as behind a proxy that cuts it. */
class FailingEventSource implements EventSourceLike {
  static opened = 0;
  readyState = 0;
  private readonly timer: ReturnType<typeof setInterval>;
  private listeners: ((event: MessageEvent) => void)[] = [];

  constructor(_url: string, _init?: { withCredentials?: boolean }) {
    FailingEventSource.opened += 1;
    this.timer = setInterval(() => {
      for (const listener of this.listeners) listener(new MessageEvent("error"));
    }, 20);
  }

  addEventListener(type: string, listener: (event: MessageEvent) => void): void {
    if (type === "error") this.listeners.push(listener);
  }

  close(): void {
    this.readyState = 2;
    clearInterval(this.timer);
  }
}

test("followJob polls when the stream keeps failing", async () => {
  const { jobId } = await dispatch("ai-map-controls", entities.document, options);
  const seen = await follow(jobId, { EventSource: FailingEventSource as EventSourceClass });
  assert.equal(FailingEventSource.opened, 1);
  assert.equal(seen.at(-1)!.status, "completed");
  assert.ok(requests.filter((r) => r === `GET /api/ai-jobs/${jobId}`).length >= 2);
});

test("followJob stops on 404 and says why; dispatch errors are AiJobsErrors", async () => {
  const error = await follow(randomUUID()).then(
    () => assert.fail("followed a job that does not exist"),
    (reason: unknown) => reason,
  );
  assert.ok(error instanceof AiJobsError);
  assert.equal(error.status, 404);
  assert.equal(error.code, "not_found");

  await assert.rejects(dispatch("ai-match", 999_999_999, options), (reason: unknown) => {
    assert.ok(reason instanceof AiJobsError);
    assert.equal(reason.status, 404);
    return true;
  });
  await assert.rejects(dispatch("ai-match", entities.mapping, { baseUrl, token: "nope" }), {
    status: 401,
  });
});

/** The app's own polling hook, unchanged, against a real API and worker: the session cookie
 * on the same origin is all it needs. */

import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { cancelJob, dispatch, type AiJobType } from "../src/index.js";
import {
  count,
  entities,
  renderJob,
  setSupabaseCookie,
  signIn,
  signOut,
  sleep,
  until,
} from "./fixtures.js";
import { useAiJob } from "./original-hook.js";

afterEach(signOut);

const KINDS: [AiJobType, () => number][] = [
  ["ai-match", () => entities.mapping],
  ["ai-coverage", () => entities.requirement],
  ["ai-map-controls", () => entities.document],
];

for (const session of ["our session cookie", "the @supabase/ssr session cookie"]) {
  test(`the original hook follows all three analyses with ${session}`, async () => {
    if (session === "our session cookie") await signIn();
    else setSupabaseCookie();
    // Dispatched from the page too: a POST with the cookie and the page's Origin.
    const jobs = await Promise.all(KINDS.map(([kind, id]) => dispatch(kind, id())));
    const rendered = jobs.map(({ jobId }) => renderJob(useAiJob, jobId));
    try {
      for (const [index, { result }] of rendered.entries()) {
        await until(() => result.current.data?.status === "completed", `${KINDS[index]![0]} completed`);
      }
      const [match, coverage, mapControls] = rendered.map(({ result }) => result.current.data!);
      assert.equal(match!.jobType, "ai-match");
      assert.equal(typeof match!.result?.aiMatchScore, "number");
      assert.equal(typeof coverage!.result?.coverageScore, "number");
      assert.equal(mapControls!.result?.mappedControls?.length, entities.mapped);
      // It polled: the first read, then every 2 s while the job ran.
      const polls = count(`/api/ai-jobs/${mapControls!.id}`);
      assert.ok(polls >= 2, `${polls} polls`);
      // And stopped once completed.
      await sleep(2500);
      assert.equal(count(`/api/ai-jobs/${mapControls!.id}`), polls);
    } finally {
      for (const { unmount } of rendered) unmount();
    }
  });
}

test("the original hook stops on a cancelled job, failed", async () => {
  await signIn();
  const { jobId } = await dispatch("ai-map-controls", entities.document);
  const rendered = renderJob(useAiJob, jobId);
  try {
    const cancelled = await cancelJob(jobId);
    assert.equal(cancelled.status, "failed");
    await until(() => rendered.result.current.data?.status === "failed", "failed");
    assert.match(rendered.result.current.data!.errorMessage ?? "", /cancel/i);
    const polls = count(`/api/ai-jobs/${jobId}`);
    await sleep(2500);
    assert.equal(count(`/api/ai-jobs/${jobId}`), polls);
  } finally {
    rendered.unmount();
  }
});

/** What the Python side of the test set up (entities, tokens), and helpers over the session. */

import { QueryClient, QueryClientProvider, type UseQueryResult } from "@tanstack/react-query";
import { renderHook, waitFor } from "@testing-library/react";
import { createElement, type ReactNode } from "react";

import type { AiJob } from "../src/index.js";
import { baseUrl, browserFetch, dom, requests } from "./setup.js";

export interface Entities {
  mapping: number;
  requirement: number;
  document: number;
  mapped: number;
}

export const entities = JSON.parse(process.env.AIJOBS_TEST_ENTITIES ?? "{}") as Entities;
export const token = process.env.AIJOBS_TEST_TOKEN ?? "";
export const anonToken = process.env.AIJOBS_TEST_ANON_TOKEN ?? "";

/** Sign in as the page does: the token handed to the API once, for its session cookie. */
export async function signIn(accessToken: string = token): Promise<void> {
  const response = await browserFetch("/api/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ accessToken }),
    credentials: "same-origin",
  });
  if (response.status !== 200) throw new Error(`sign-in: ${response.status} ${await response.text()}`);
}

/** The session cookie @supabase/ssr writes: base64url JSON, split into chunks. */
export function setSupabaseCookie(accessToken: string = token): void {
  const session = {
    access_token: accessToken,
    token_type: "bearer",
    expires_in: 3600,
    refresh_token: "r".repeat(40),
    user: { id: "test-user", aud: "authenticated", email: "someone@example.com" },
  };
  const value = `base64-${Buffer.from(JSON.stringify(session)).toString("base64url")}`;
  const half = Math.ceil(value.length / 2);
  const key = "sb-testprojectref-auth-token";
  dom.cookieJar.setCookieSync(`${key}.0=${value.slice(0, half)}; Path=/; SameSite=Lax`, baseUrl);
  dom.cookieJar.setCookieSync(`${key}.1=${value.slice(half)}; Path=/; SameSite=Lax`, baseUrl);
}

export function signOut(): void {
  dom.cookieJar.removeAllCookiesSync();
}

/** How many requests the browser made for `path` (exactly, query included). */
export function count(path: string, method = "GET"): number {
  return requests.filter((r) => r === `${method} ${path}`).length;
}

export interface Rendered {
  result: { current: UseQueryResult<AiJob, Error> };
  /** Every distinct state of the job the component rendered, in order. */
  seen: AiJob[];
  /** Every state written into the query's cache, in order (React may render fewer). */
  cached: AiJob[];
  unmount: () => void;
}

/** Render a component that uses `hook` for `jobId` in a fresh QueryClient. */
export function renderJob(
  hook: (jobId: string | null) => UseQueryResult<AiJob, Error>,
  jobId: string | null,
): Rendered {
  const client = new QueryClient();
  const wrapper = ({ children }: { children: ReactNode }) =>
    createElement(QueryClientProvider, { client }, children);
  const seen: AiJob[] = [];
  const cached: AiJob[] = [];
  client.getQueryCache().subscribe((event) => {
    if (event.type === "updated" && event.action.type === "success") {
      cached.push(event.query.state.data as AiJob);
    }
  });
  const { result, unmount } = renderHook(
    () => {
      const query = hook(jobId);
      const last = seen[seen.length - 1];
      if (query.data && JSON.stringify(query.data) !== JSON.stringify(last)) seen.push(query.data);
      return query;
    },
    { wrapper },
  );
  return {
    result,
    seen,
    cached,
    unmount: () => {
      unmount();
      client.clear();
    },
  };
}

export async function until(
  check: () => boolean,
  what: string,
  timeout = 30_000,
): Promise<void> {
  await waitFor(
    () => {
      if (!check()) throw new Error(`still waiting for ${what}`);
    },
    { timeout, interval: 25 },
  );
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

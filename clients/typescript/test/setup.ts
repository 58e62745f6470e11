/**
 * A browser on the API's own origin, for the tests: a jsdom document whose URL is the API's
 * base URL (AIJOBS_TEST_BASE_URL), its globals, and the two things jsdom lacks, fetch and
 * EventSource, made to behave as a browser's do: a relative URL resolves against the
 * document's, the cookies of jsdom's cookie jar go along (same origin, or credentials
 * "include"), Set-Cookie answers land in the jar, and a POST carries the page's Origin.
 * Loaded with `node --import` before any test module, so React and Testing Library find it.
 */

import { EventSource as NodeEventSource, type FetchLikeInit } from "eventsource";
import { JSDOM } from "jsdom";

export const baseUrl = required("AIJOBS_TEST_BASE_URL");

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests from tests/test_typescript_client.py`);
  return value;
}

export const dom = new JSDOM("<!doctype html><html><body></body></html>", {
  url: `${baseUrl}/`,
  pretendToBeVisual: true,
});

const globals = globalThis as Record<string, unknown>;
for (const key of Object.getOwnPropertyNames(dom.window)) {
  if (!(key in globals)) globals[key] = (dom.window as unknown as Record<string, unknown>)[key];
}
globals.window = dom.window;
globals.document = dom.window.document;
globals.IS_REACT_ACT_ENVIRONMENT = true;

/** Every request the "browser" made, as `METHOD /path?query`. */
export const requests: string[] = [];

const nodeFetch = globalThis.fetch;

export async function browserFetch(
  input: string | URL | Request,
  init: RequestInit | FetchLikeInit = {},
): Promise<Response> {
  const page = new URL(dom.window.location.href);
  const target = new URL(input instanceof Request ? input.url : String(input), page);
  const given = (init as RequestInit).method;
  const method = (given ?? (input instanceof Request ? input.method : "GET")).toUpperCase();
  const headers = new Headers((init.headers as HeadersInit | undefined) ?? undefined);
  const credentials = init.credentials ?? "same-origin";
  if (credentials === "include" || (credentials === "same-origin" && target.origin === page.origin)) {
    const cookie = dom.cookieJar.getCookieStringSync(target.href);
    if (cookie) headers.set("Cookie", cookie);
  }
  if (method !== "GET" && method !== "HEAD") headers.set("Origin", page.origin);
  requests.push(`${method} ${target.pathname}${target.search}`);
  const response = await nodeFetch(target, {
    method,
    headers,
    body: (init as RequestInit).body ?? null,
    signal: (init.signal as AbortSignal | undefined) ?? null,
    redirect: "follow",
  });
  for (const setCookie of response.headers.getSetCookie()) {
    dom.cookieJar.setCookieSync(setCookie, target.href);
  }
  return response;
}

/** The browser's EventSource: relative URLs, and cookies, as a page's. */
export class BrowserEventSource extends NodeEventSource {
  constructor(url: string | URL, init?: { withCredentials?: boolean }) {
    super(new URL(String(url), dom.window.location.href), {
      withCredentials: init?.withCredentials ?? false,
      fetch: browserFetch,
    });
  }
}

globals.fetch = browserFetch;
globals.EventSource = BrowserEventSource;

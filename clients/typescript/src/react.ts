/**
 * `useAiJob`: a job as React Query state, kept current by the job's event stream.
 *
 * A drop-in for the hook that polls `GET /api/ai-jobs/{jobId}` every 2 s: the same
 * signature, the same query key (`['ai-job', jobId]`), and React Query's result with
 * `data: AiJob`. It reads the job once, then follows its event stream, writing each state into
 * the query's cache; it polls only when there is no stream to be had (no EventSource, the
 * stream refused or failing), at the server's Retry-After. It stops on `completed` or
 * `failed`, and on 401, 403 and 404 (the query's `error` is then an `AiJobsError`).
 */

import { useQuery, useQueryClient, type UseQueryResult } from "@tanstack/react-query";
import { useEffect, useRef, useState } from "react";

import {
  type AiJob,
  AiJobsError,
  type FollowOptions,
  getJob,
  isFinished,
  openJobStream,
} from "./index.js";

export type UseAiJobOptions = Omit<FollowOptions, "onError">;

export function aiJobQueryKey(jobId: string | null): readonly ["ai-job", string | null] {
  return ["ai-job", jobId] as const;
}

function fatal(error: unknown): boolean {
  return error instanceof AiJobsError && error.fatal;
}

export function useAiJob(
  jobId: string | null,
  options: UseAiJobOptions = {},
): UseQueryResult<AiJob, Error> {
  const queryClient = useQueryClient();
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const retryAfterS = useRef<number | null>(null);
  // The job whose stream was given up: it is polled instead.
  const [pollingFor, setPollingFor] = useState<string | null>(null);
  const streaming = jobId !== null && pollingFor !== jobId;

  const query = useQuery<AiJob, Error>({
    queryKey: aiJobQueryKey(jobId),
    queryFn: async ({ signal }) => {
      const read = await getJob(jobId as string, { ...optionsRef.current, signal });
      retryAfterS.current = read.retryAfterS;
      return read.job as AiJob;
    },
    enabled: !!jobId,
    retry: (failures, error) => !fatal(error) && failures < 3,
    refetchInterval: (q) => {
      if (isFinished(q.state.data) || fatal(q.state.error) || streaming) return false;
      const serverSays = retryAfterS.current;
      return serverSays !== null ? serverSays * 1000 : (optionsRef.current.pollIntervalMs ?? 2000);
    },
  });

  const finished = isFinished(query.data);
  const stopped = fatal(query.error);
  useEffect(() => {
    if (!jobId || !streaming || finished || stopped) return;
    return openJobStream(
      jobId,
      (job) => queryClient.setQueryData(aiJobQueryKey(jobId), job),
      (why) => {
        setPollingFor(jobId);
        // A refused stream says no more than that: a read says why (401, 403, 404 stop it).
        if (why === "refused") {
          void queryClient.refetchQueries(
            { queryKey: aiJobQueryKey(jobId) },
            { cancelRefetch: false },
          );
        }
      },
      optionsRef.current,
    );
  }, [jobId, streaming, finished, stopped, queryClient]);

  return query;
}

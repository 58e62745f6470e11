// The web application's own hook, exactly as it is in the app (only the imports added): it
// polls its own origin every 2 s with no headers of its own, so the session cookie is what
// authenticates it.
import { useQuery } from '@tanstack/react-query';
import type { AiJob } from '../src/index.js';

export function useAiJob(jobId: string | null) {
  return useQuery<AiJob>({
    queryKey: ['ai-job', jobId],
    queryFn: async () => {
      const res = await fetch(`/api/ai-jobs/${jobId}`);
      if (!res.ok) throw new Error('Failed to fetch job');
      return res.json();
    },
    enabled: !!jobId,
    refetchInterval: (query) => {
      const s = query.state.data?.status;
      return s === 'completed' || s === 'failed' ? false : 2000;
    },
  });
}

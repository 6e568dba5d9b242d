-- The schedules that drive the worker and the queue's upkeep. Touches pg_cron, so it applies
-- only in the cluster's cron database (scripts/schema-snapshot and bench/ leave it out).

create extension if not exists pg_cron;

-- cron.schedule upserts by job name, so re-applying this file replaces, never duplicates.
select cron.schedule('fetch-emails', '*/5 * * * *', $$select public.call_worker('/fetch-emails')$$);
select cron.schedule('process-queue', '* * * * *', $$select public.call_worker('/process-queue')$$);
select cron.schedule(
  'aggregate-queue-metrics', '*/5 * * * *', $$select public.aggregate_queue_metrics()$$
);
select cron.schedule('queue-retention', '17 3 * * *', $$call public.purge_completed_jobs()$$);

-- The audit trail is append-only, but not forever: public.purge_old_events deletes old events
-- in small committed batches (the metrics and retention file says which it keeps).
select cron.schedule('events-retention', '37 3 * * *', $$call public.purge_old_events()$$);

-- pg_cron records every run in cron.job_run_details and never deletes one: with process-queue
-- every minute that is 1,440 rows a day, forever. A week is what an operator reads when a run
-- failed. net._http_response needs no job: pg_net's worker deletes responses older than
-- pg_net.ttl (6 hours by default) itself.
select cron.schedule(
  'cron-history-retention', '47 3 * * *',
  $$delete from cron.job_run_details where coalesce(end_time, start_time) < now() - interval '7 days'$$
);

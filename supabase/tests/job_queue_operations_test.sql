-- Queue operations: the DLQ listing, job inspection, DLQ purge, stats and metrics aggregation.
begin;
select plan(19);

create function pg_temp.job(p_key text) returns public.job_queue language sql as $$
    select q.* from public.job_queue q where q.idempotency_key = p_key
$$;
grant execute on all functions in schema pg_temp to service_role;
set local role service_role;

-- three dead-letter jobs of two stores, dead-lettered at different times
select public.enqueue_job('t_ops', '{}', 'dl-a1', '00000000-0000-0000-0000-00000000005a');
select public.enqueue_job('t_ops', '{}', 'dl-a2', '00000000-0000-0000-0000-00000000005a');
select public.enqueue_job('t_ops_b', '{}', 'dl-b1', '00000000-0000-0000-0000-00000000005b');
select public.enqueue_job('t_ops', '{}', 'live-1');
select public.dequeue_jobs('w1', 10, 60, array['t_ops', 't_ops_b']);
select public.fail_job((pg_temp.job('dl-a1')).id, 'w1', 'bad', 'permanent');
select public.fail_job((pg_temp.job('dl-a2')).id, 'w1', 'bad', 'permanent');
select public.fail_job((pg_temp.job('dl-b1')).id, 'w1', 'bad', 'permanent');
reset role;
update public.job_queue set dead_lettered_at = now() - interval '1 hour', last_error_type = 'transient'
where idempotency_key = 'dl-a1';
update public.job_queue set dead_lettered_at = now() - interval '10 minutes'
where idempotency_key = 'dl-a2';
set local role service_role;

select is(array(select q.idempotency_key from public.list_dead_letter_jobs() q
                where q.job_type in ('t_ops', 't_ops_b')),
          array['dl-b1', 'dl-a2', 'dl-a1'], 'the DLQ lists newest first');
select is(array(select q.idempotency_key
                from public.list_dead_letter_jobs('00000000-0000-0000-0000-00000000005a') q),
          array['dl-a2', 'dl-a1'], 'filter by store');
select is(array(select q.idempotency_key from public.list_dead_letter_jobs(null, 't_ops_b') q),
          array['dl-b1'], 'filter by job type');
select is(array(select q.idempotency_key
                from public.list_dead_letter_jobs('00000000-0000-0000-0000-00000000005a', null,
                                                  'transient') q),
          array['dl-a1'], 'filter by error type');
select is(array(select q.idempotency_key
                from public.list_dead_letter_jobs('00000000-0000-0000-0000-00000000005a', null,
                                                  null, 1800) q),
          array['dl-a1'], 'filter by minimum age');
select is(array(select q.idempotency_key
                from public.list_dead_letter_jobs('00000000-0000-0000-0000-00000000005a', null,
                                                  null, null, 1) q),
          array['dl-a2'], 'limit');
select ok(not exists (select 1 from public.list_dead_letter_jobs() q
                      where q.status <> 'dead_letter'), 'only dead-letter jobs are listed');

select is((select q.idempotency_key from public.get_job((pg_temp.job('dl-b1')).id) q), 'dl-b1',
          'get_job returns the job');
select is((select count(*)::int from public.get_job(gen_random_uuid())), 0,
          'get_job of an unknown id returns no row');
select is(array(select e.event_type from public.get_job_events((pg_temp.job('dl-b1')).id) e),
          array['job.enqueued', 'job.dead_lettered'],
          'get_job_events returns the history oldest first');

select is(public.purge_dead_letter_jobs(array[(pg_temp.job('dl-a1')).id,
                                              (pg_temp.job('live-1')).id]),
          1, 'purge_dead_letter_jobs deletes dead-letter jobs only');
select is((pg_temp.job('dl-a1')).id, null, 'the purged job is gone');
select isnt((pg_temp.job('live-1')).id, null, 'a live job is kept');
select is((select count(*)::int from public.events e where e.job_id in
           (select e2.job_id from public.events e2
            where e2.detail ->> 'idempotency_key' = 'dl-a1')), 2,
          'the purged job''s events survive (enqueued, dead-lettered)');

-- queue_stats ------------------------------------------------------------------------------------
select public.enqueue_job('t_stats', '{}', 'st-1', null, null, 0, now() - interval '90 seconds');
select public.enqueue_job('t_stats', '{}', 'st-2', null, null, 0, now() + interval '1 hour');
select is((select jsonb_agg(j order by j ->> 'status') from jsonb_array_elements(public.queue_stats() -> 'jobs') j
           where j ->> 'job_type' = 't_stats'),
          '[{"job_type": "t_stats", "status": "pending", "count": 2}]'::jsonb,
          'queue_stats counts jobs by type and status');
select is((public.queue_stats() -> 'oldest_due_seconds' ->> 't_stats')::numeric, 90.000,
          'queue_stats reports the oldest due age');
select ok(jsonb_typeof(public.queue_stats() -> 'breakers') = 'array', 'queue_stats lists breakers');

-- aggregate_queue_metrics ------------------------------------------------------------------------
select public.enqueue_job('t_metrics', '{}', 'm-1');
select public.enqueue_job('t_metrics', '{}', 'm-2');
select public.dequeue_jobs('w1', 2, 60, array['t_metrics']);
select public.enqueue_job('t_metrics', '{}', 'm-3', null, null, 0, now() - interval '30 seconds');
select public.complete_job((pg_temp.job('m-1')).id, 'w1');
select public.complete_job((pg_temp.job('m-2')).id, 'w1');
reset role;
-- place the completions inside the window that ends at the current minute
update public.job_queue
set started_at = date_trunc('minute', now()) - interval '2 minutes',
    completed_at = date_trunc('minute', now()) - interval '2 minutes'
                   + case idempotency_key when 'm-1' then interval '100 ms' else interval '300 ms' end
where idempotency_key in ('m-1', 'm-2');
insert into public.events (job_id, event_type, created_at)
values ((pg_temp.job('m-1')).id, 'job.retry_scheduled', date_trunc('minute', now()) - interval '3 minutes');
set local role service_role;
select public.aggregate_queue_metrics();
select public.aggregate_queue_metrics();
select is((select count(*)::int from public.queue_metrics where job_type = 't_metrics'), 1,
          'one row per job type per window, also when run twice');
select is((select (m.window_start, m.window_end, m.pending_count, m.due_count,
                   m.completed_in_window, m.retried_in_window, m.avg_processing_ms,
                   m.oldest_due_seconds)
           from public.queue_metrics m where m.job_type = 't_metrics'),
          (date_trunc('minute', now()) - interval '5 minutes', date_trunc('minute', now()),
           1, 1, 2, 1, 200::float8, 30::float8),
          'status counts, flows in the window, average processing time, oldest due age');

select * from finish();
rollback;

-- What the queue reports (queue_stats for /metrics, queue_metrics windows) and how its history
-- is bounded (completed jobs and old events are purged in committed batches).

-- Metrics belong to no store, so only service_role sees them.
create table public.queue_metrics (
  job_type text not null,
  window_start timestamptz not null,
  window_end timestamptz not null,
  pending_count int not null default 0,
  due_count int not null default 0,
  processing_count int not null default 0,
  dead_letter_count int not null default 0,
  completed_in_window int not null default 0,
  retried_in_window int not null default 0,
  dead_lettered_in_window int not null default 0,
  avg_processing_ms double precision,
  p95_processing_ms double precision,
  oldest_due_seconds double precision,
  computed_at timestamptz not null default now(),
  primary key (job_type, window_start)
);

alter table public.queue_metrics enable row level security;

revoke all on public.queue_metrics from public, anon, authenticated;
grant all on public.queue_metrics to service_role;

create policy queue_metrics_service_role_all on public.queue_metrics
  for all to service_role using (true) with check (true);

-- Live statuses only: the number of completed rows depends on retention and would cost a scan
-- of the whole history on every /metrics scrape.
create or replace function public.queue_stats()
returns jsonb
language sql
stable
set search_path = ''
as $$
    select jsonb_build_object(
        'jobs', coalesce((
            select jsonb_agg(jsonb_build_object('job_type', s.job_type, 'status', s.status,
                                                'count', s.n)
                             order by s.job_type, s.status)
            from (
                select q.job_type, q.status, count(*) as n
                from public.job_queue q
                where q.status in ('pending', 'processing', 'dead_letter')
                group by q.job_type, q.status
            ) s), '[]'::jsonb),
        'oldest_due_seconds', coalesce((
            select jsonb_object_agg(d.job_type, d.age)
            from (
                select q.job_type,
                       round(extract(epoch from now() - min(q.next_retry_at))::numeric, 3) as age
                from public.job_queue q
                where q.status = 'pending' and q.next_retry_at <= now()
                group by q.job_type
            ) d), '{}'::jsonb),
        'breakers', coalesce((
            select jsonb_agg(jsonb_build_object('service', b.service, 'state', b.state)
                             order by b.service)
            from public.circuit_breakers b), '[]'::jsonb)
    );
$$;

-- One row per job type for the five whole minutes ending at the current minute, upserted on
-- (job_type, window_start) so a per-minute schedule (pg_cron) may run it any number of times.
-- Status counts and the oldest due age are taken now; the flows (completed, retried,
-- dead-lettered, processing time) count what happened inside the window.
create or replace function public.aggregate_queue_metrics()
returns void
language sql
set search_path = ''
as $$
    with bounds as (
        select date_trunc('minute', now()) - interval '5 minutes' as ws,
               date_trunc('minute', now()) as we
    ), live as (
        select q.job_type,
               count(*) filter (where q.status = 'pending') as pending_count,
               count(*) filter (where q.status = 'pending' and q.next_retry_at <= now())
                   as due_count,
               count(*) filter (where q.status = 'processing') as processing_count,
               count(*) filter (where q.status = 'dead_letter') as dead_letter_count,
               extract(epoch from now() - min(q.next_retry_at)
                   filter (where q.status = 'pending' and q.next_retry_at <= now()))::float8
                   as oldest_due_seconds
        from public.job_queue q
        where q.status in ('pending', 'processing', 'dead_letter')
        group by q.job_type
    ), done as (
        select d.job_type, count(*) as completed_in_window, avg(d.ms) as avg_ms,
               percentile_cont(0.95) within group (order by d.ms) as p95_ms
        from (
            select q.job_type,
                   extract(epoch from q.completed_at - q.started_at)::float8 * 1000 as ms
            from public.job_queue q, bounds b
            where q.status = 'completed' and q.completed_at >= b.ws and q.completed_at < b.we
        ) d
        group by d.job_type
    ), flows as (
        select q.job_type,
               count(*) filter (where e.event_type = 'job.retry_scheduled') as retried,
               count(*) filter (where e.event_type = 'job.dead_lettered') as dead_lettered
        from public.events e
        join public.job_queue q on q.id = e.job_id
        cross join bounds b
        where e.event_type in ('job.retry_scheduled', 'job.dead_lettered')
          and e.created_at >= b.ws and e.created_at < b.we
        group by q.job_type
    ), types as (
        select job_type from live
        union
        select job_type from done
        union
        select job_type from flows
    )
    insert into public.queue_metrics as m (
        job_type, window_start, window_end, pending_count, due_count, processing_count,
        dead_letter_count, completed_in_window, retried_in_window, dead_lettered_in_window,
        avg_processing_ms, p95_processing_ms, oldest_due_seconds, computed_at)
    select t.job_type, b.ws, b.we,
           coalesce(l.pending_count, 0), coalesce(l.due_count, 0),
           coalesce(l.processing_count, 0), coalesce(l.dead_letter_count, 0),
           coalesce(d.completed_in_window, 0), coalesce(f.retried, 0),
           coalesce(f.dead_lettered, 0), d.avg_ms, d.p95_ms, l.oldest_due_seconds, now()
    from types t
    cross join bounds b
    left join live l on l.job_type = t.job_type
    left join done d on d.job_type = t.job_type
    left join flows f on f.job_type = t.job_type
    on conflict (job_type, window_start) do update
    set window_end = excluded.window_end,
        pending_count = excluded.pending_count,
        due_count = excluded.due_count,
        processing_count = excluded.processing_count,
        dead_letter_count = excluded.dead_letter_count,
        completed_in_window = excluded.completed_in_window,
        retried_in_window = excluded.retried_in_window,
        dead_lettered_in_window = excluded.dead_lettered_in_window,
        avg_processing_ms = excluded.avg_processing_ms,
        p95_processing_ms = excluded.p95_processing_ms,
        oldest_due_seconds = excluded.oldest_due_seconds,
        computed_at = excluded.computed_at;
$$;

-- Deletes completed jobs older than p_older_than in batches, committing after each batch so
-- the claim path never waits behind one long delete and autovacuum can reclaim space as it goes.
-- Exception to the `set search_path = ''` rule: a routine with a SET clause cannot COMMIT, so
-- every name below is schema-qualified instead. Must be CALLed outside an explicit transaction
-- (pg_cron does that).
create or replace procedure public.purge_completed_jobs(
  p_older_than interval default '7 days',
  p_batch_size int default 5000
)
language plpgsql
as $$
declare
    v_deleted int;
begin
    loop
        delete from public.job_queue q
        where q.id in (
            select c.id from public.job_queue c
            where c.status = 'completed' and c.completed_at < pg_catalog.now() - p_older_than
            order by c.completed_at
            limit p_batch_size
            for update skip locked
        );
        get diagnostics v_deleted = row_count;
        commit;
        exit when v_deleted < p_batch_size;
    end loop;
end;
$$;

-- The audit trail is append-only, but not forever: without a bound, `events` grows with every
-- job (two rows per job from the queue alone) and its indexes slow every write on the claim
-- path. Events older than the retention age are deleted in small committed batches, except
-- those of jobs an operator may still need to read: anything not completed (the dead-letter
-- queue's error history, pending retries).
create or replace procedure public.purge_old_events(
  p_older_than interval default '180 days',
  p_batch_size int default 10000
)
language plpgsql
as $$
declare
    v_deleted int;
begin
    if p_older_than is null or p_older_than < interval '1 day' then
        raise exception 'purge_old_events: keep at least one day of events, not %', p_older_than
            using errcode = 'invalid_parameter_value';
    end if;
    loop
        delete from public.events e
        where e.id in (
            select o.id from public.events o
            where o.created_at < pg_catalog.now() - p_older_than
              and not exists (
                  select 1 from public.job_queue q
                  where q.id = o.job_id and q.status <> 'completed'
              )
            order by o.created_at
            limit p_batch_size
        );
        get diagnostics v_deleted = row_count;
        commit;
        exit when v_deleted < p_batch_size;
    end loop;
end;
$$;

-- Only the owner deletes audit events (pg_cron runs this as the owner); a procedure that
-- commits cannot be security definer, so no API role gets it.
revoke all on procedure public.purge_old_events(interval, int)
  from public, anon, authenticated, service_role;

-- Privileges: these routines are for the worker (service_role) only. Supabase grants EXECUTE
-- to anon and authenticated by default, hence the explicit revoke before each grant.
revoke all on function public.queue_stats() from public, anon, authenticated;
grant execute on function public.queue_stats() to service_role;
revoke all on function public.aggregate_queue_metrics() from public, anon, authenticated;
grant execute on function public.aggregate_queue_metrics() to service_role;
revoke all on procedure public.purge_completed_jobs(interval, int) from public, anon, authenticated;
grant execute on procedure public.purge_completed_jobs(interval, int) to service_role;

-- Queue core: a durable job queue whose semantics live here (issue 2).
--
-- Statuses: pending -> processing -> completed | pending (retry, defer, expired lease)
--           | dead_letter (attempts used up, permanent error) ; dead_letter -> pending (requeue).
-- Every transition appends an event to public.events (set-based inserts, never row by row).
-- store_id and conversation_id are keys, not foreign keys: the queue stays generic and deleting a
-- store never blocks on its job history.
-- Every function runs with `set search_path = ''` and is executable by service_role only.

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------

-- Time-ordered job ids (UUID version 7: 48-bit Unix milliseconds, then random bits). Every
-- transition is a non-HOT update (status is in the partial indexes' predicates), so it inserts a
-- new primary-key entry; with random v4 ids those land on random leaves across the whole
-- history's index, and the claim path's working set grew with history past shared_buffers
-- (claim+complete 2x slower at 1M finished jobs). Time-ordered ids keep the live jobs' keys,
-- and their events' job_id keys, on the rightmost leaves. Postgres 15 has no uuidv7().
create function public.uuid_generate_v7()
returns uuid
language sql
volatile
set search_path = ''
as $$
    -- pg_catalog resolves with an empty search_path; overlay/substring need their SQL syntax
    select encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    placing substring(int8send(
                        (extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
                    from 1 for 6),
            52, 1), 53, 1),
        'hex')::uuid;
$$;

create table public.job_queue (
    id uuid primary key default public.uuid_generate_v7(),
    job_type text not null check (job_type <> ''),
    payload jsonb not null default '{}'::jsonb,
    status text not null default 'pending'
        check (status in ('pending', 'processing', 'completed', 'dead_letter')),
    priority int not null default 0,
    idempotency_key text,
    store_id uuid,
    conversation_id uuid,
    attempt_count int not null default 0 check (attempt_count >= 0),
    max_attempts int not null default 5 check (max_attempts >= 1),
    -- when the job is next due: the requested run_at, then each retry or deferral time
    next_retry_at timestamptz not null default now(),
    locked_by text,
    locked_until timestamptz,
    started_at timestamptz,
    completed_at timestamptz,
    dead_lettered_at timestamptz,
    result jsonb,
    last_error text,
    last_error_type text check (last_error_type in ('transient', 'permanent')),
    last_error_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- Vacuum by absolute churn, not by table size. Every claim and completion leaves a dead entry in
-- the partial claim indexes (the old 'pending' or 'processing' version), and claims walk the head
-- of job_queue_due_idx where those entries pile up; only VACUUM removes them. With the default
-- scale factor (0.2 x rows) a table holding 1M finished jobs waits for 200k dead tuples between
-- vacuums, so the claim got slower as history grew. Vacuum skips the all-visible history pages,
-- so running it often costs little; no cost delay so it keeps up with a busy queue.
alter table public.job_queue set (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 20000
);

comment on table public.job_queue is
    'Durable job queue; mutate only through the queue functions (enqueue_job, dequeue_jobs, ...).';

-- The claim path. Each index covers only the rows it serves, so completed history (the bulk of
-- the table) never enters a claim plan and the indexes stay small as history grows.
create index job_queue_due_idx on public.job_queue (priority desc, next_retry_at, id)
    where status = 'pending';
create index job_queue_lease_idx on public.job_queue (locked_until)
    where status = 'processing';
-- conversation exclusivity check: "is a job of this conversation in flight?"
create index job_queue_inflight_conversation_idx on public.job_queue (conversation_id)
    where status = 'processing';
create unique index job_queue_idempotency_key_idx on public.job_queue (idempotency_key)
    where idempotency_key is not null;
-- DLQ listing (newest first) and retention batches.
create index job_queue_dead_letter_idx on public.job_queue (dead_lettered_at desc)
    where status = 'dead_letter';
create index job_queue_completed_idx on public.job_queue (completed_at)
    where status = 'completed';
-- RLS: an owner's dashboard lists its store's jobs. Store-less jobs (maintenance) are never listed
-- by store, and every non-HOT transition would add an entry to this index for them too.
create index job_queue_store_idx on public.job_queue (store_id, created_at desc)
    where store_id is not null;

create table public.circuit_breakers (
    service text primary key,
    state text not null default 'closed' check (state in ('closed', 'open', 'half_open')),
    consecutive_failures int not null default 0,
    failure_threshold int not null default 5 check (failure_threshold >= 1),
    -- consecutive opens without a success in between; drives the growing cool-down
    open_count int not null default 0,
    base_cooldown_seconds int not null default 30 check (base_cooldown_seconds >= 1),
    max_cooldown_seconds int not null default 900 check (max_cooldown_seconds >= 1),
    -- a half-open probe that never reports back frees the slot after this long
    probe_timeout_seconds int not null default 60 check (probe_timeout_seconds >= 1),
    opened_at timestamptz,
    open_until timestamptz,
    probe_started_at timestamptz,
    last_failure_at timestamptz,
    last_success_at timestamptz,
    updated_at timestamptz not null default now()
);

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

-- ---------------------------------------------------------------------------------------------
-- Row level security: service_role everything; authenticated reads its stores' jobs; anon nothing.
-- circuit_breakers and queue_metrics belong to no store, so only service_role sees them.
-- ---------------------------------------------------------------------------------------------

alter table public.job_queue enable row level security;
alter table public.circuit_breakers enable row level security;
alter table public.queue_metrics enable row level security;

revoke all on public.job_queue, public.circuit_breakers, public.queue_metrics
    from public, anon, authenticated;
grant all on public.job_queue, public.circuit_breakers, public.queue_metrics to service_role;
grant select on public.job_queue to authenticated;

create policy job_queue_service_role_all on public.job_queue
    for all to service_role using (true) with check (true);
create policy job_queue_owner_read on public.job_queue
    for select to authenticated
    using (exists (
        select 1 from public.stores s
        where s.id = job_queue.store_id and s.owner_id = (select auth.uid())
    ));
create policy circuit_breakers_service_role_all on public.circuit_breakers
    for all to service_role using (true) with check (true);
create policy queue_metrics_service_role_all on public.queue_metrics
    for all to service_role using (true) with check (true);

-- ---------------------------------------------------------------------------------------------
-- Enqueue
-- ---------------------------------------------------------------------------------------------

create function public.enqueue_job(
    p_job_type text,
    p_payload jsonb,
    p_idempotency_key text default null,
    p_store_id uuid default null,
    p_conversation_id uuid default null,
    p_priority int default 0,
    p_run_at timestamptz default now(),
    p_max_attempts int default 5
) returns uuid
language plpgsql
set search_path = ''
as $$
declare
    v_id uuid;
begin
    if p_job_type is null or p_job_type = '' then
        raise exception 'enqueue_job: p_job_type is required' using errcode = '22023';
    end if;
    if p_max_attempts is null or p_max_attempts < 1 then
        raise exception 'enqueue_job: p_max_attempts must be >= 1' using errcode = '22023';
    end if;

    -- A concurrent insert of the same key waits on the unique index until the first commits,
    -- then does nothing; the select below (a new snapshot) then sees the winner's row. The loop
    -- covers the rare case where that row was deleted (purged) in between.
    loop
        insert into public.job_queue (job_type, payload, idempotency_key, store_id,
                                      conversation_id, priority, next_retry_at, max_attempts)
        values (p_job_type, coalesce(p_payload, '{}'::jsonb), p_idempotency_key, p_store_id,
                p_conversation_id, coalesce(p_priority, 0), coalesce(p_run_at, now()),
                p_max_attempts)
        on conflict (idempotency_key) where idempotency_key is not null do nothing
        returning id into v_id;

        if v_id is not null then
            insert into public.events (store_id, job_id, conversation_id, event_type, detail)
            values (p_store_id, v_id, p_conversation_id, 'job.enqueued',
                    jsonb_build_object('job_type', p_job_type, 'priority', coalesce(p_priority, 0),
                                       'run_at', coalesce(p_run_at, now()),
                                       'idempotency_key', p_idempotency_key));
            return v_id;
        end if;

        select q.id into v_id from public.job_queue q where q.idempotency_key = p_idempotency_key;
        if v_id is not null then
            return v_id;
        end if;
    end loop;
end;
$$;

-- Many jobs in one call, with enqueue_job's semantics for each element of p_jobs (a JSON array
-- of objects with the keys job_type, payload, idempotency_key, store_id, conversation_id,
-- priority, run_at, max_attempts; only job_type is required). Returns the job ids in input order:
-- an element whose key already exists (or repeats an earlier element's key) gets the existing
-- job's id and creates nothing. One statement inserts every new job and its event, where a loop
-- over enqueue_job would run two statements per job (bench/queue: 3.4x the enqueue rate).
create function public.enqueue_jobs(p_jobs jsonb)
returns uuid[]
language plpgsql
set search_path = ''
as $$
declare
    v_ids uuid[];
    v_conflicts boolean;
begin
    if p_jobs is null or pg_catalog.jsonb_typeof(p_jobs) <> 'array' then
        raise exception 'enqueue_jobs: p_jobs must be a JSON array' using errcode = '22023';
    end if;
    if exists (select 1 from pg_catalog.jsonb_array_elements(p_jobs) j
               where pg_catalog.jsonb_typeof(j) <> 'object' or coalesce(j ->> 'job_type', '') = ''
                  or coalesce((j ->> 'max_attempts')::int, 1) < 1) then
        raise exception 'enqueue_jobs: every job needs a job_type, and max_attempts >= 1'
            using errcode = '22023';
    end if;

    -- Ids are drawn up front, in input order, so the new rows can be matched back to their
    -- elements (RETURNING does not say which input row a row came from).
    with input as (
        select i.ord, public.uuid_generate_v7() as id, j ->> 'job_type' as job_type,
               coalesce(j -> 'payload', '{}'::jsonb) as payload,
               j ->> 'idempotency_key' as idempotency_key,
               (j ->> 'store_id')::uuid as store_id,
               (j ->> 'conversation_id')::uuid as conversation_id,
               coalesce((j ->> 'priority')::int, 0) as priority,
               coalesce((j ->> 'run_at')::timestamptz, now()) as run_at,
               coalesce((j ->> 'max_attempts')::int, 5) as max_attempts
        from pg_catalog.jsonb_array_elements(p_jobs) with ordinality as i (j, ord)
    ), inserted as (
        insert into public.job_queue (id, job_type, payload, idempotency_key, store_id,
                                      conversation_id, priority, next_retry_at, max_attempts)
        select n.id, n.job_type, n.payload, n.idempotency_key, n.store_id, n.conversation_id,
               n.priority, n.run_at, n.max_attempts
        from input n
        -- keys in one global order: two batches sharing keys then wait for each other instead
        -- of deadlocking (each waits at the first key the other holds)
        order by n.idempotency_key nulls last, n.ord
        on conflict (idempotency_key) where idempotency_key is not null do nothing
        returning id, job_type, idempotency_key, store_id, conversation_id, priority,
                  next_retry_at
    ), logged as (
        insert into public.events (store_id, job_id, conversation_id, event_type, detail)
        select r.store_id, r.id, r.conversation_id, 'job.enqueued',
               jsonb_build_object('job_type', r.job_type, 'priority', r.priority,
                                  'run_at', r.next_retry_at,
                                  'idempotency_key', r.idempotency_key)
        from inserted r
    )
    select array_agg(r.id order by n.ord), bool_or(r.id is null)
    into v_ids, v_conflicts
    from input n
    left join inserted r on r.id = n.id;

    -- An element that was not inserted has a key that already exists (or repeats an earlier
    -- element's): enqueue_job returns that job's id, looking in a new snapshot that sees a
    -- concurrent winner once it committed, and enqueues afresh if the job was purged meanwhile.
    if v_conflicts then
        select array_agg(coalesce(x.id, public.enqueue_job(
                   e.j ->> 'job_type', coalesce(e.j -> 'payload', '{}'::jsonb),
                   e.j ->> 'idempotency_key', (e.j ->> 'store_id')::uuid,
                   (e.j ->> 'conversation_id')::uuid, coalesce((e.j ->> 'priority')::int, 0),
                   coalesce((e.j ->> 'run_at')::timestamptz, now()),
                   coalesce((e.j ->> 'max_attempts')::int, 5)))
               order by x.ord)
        into v_ids
        from unnest(v_ids) with ordinality as x (id, ord)
        join pg_catalog.jsonb_array_elements(p_jobs) with ordinality as e (j, ord)
            on e.ord = x.ord;
    end if;
    return coalesce(v_ids, '{}');
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Claim
-- ---------------------------------------------------------------------------------------------

-- Why a transaction-scoped lock: behind PostgREST every RPC is its own transaction on a pooled
-- connection. A session-level advisory lock would outlive the call, stay attached to whichever
-- pooled backend ran it (so the next, unrelated request on that connection would "hold" it),
-- and could only be released by a later call that happens to land on the same backend. An
-- xact lock is released exactly when the claiming transaction commits or rolls back.
-- PL/pgSQL rather than SQL: the claim calls it once per candidate, and a SQL function that cannot
-- be inlined (its SET clause prevents that) is parsed and planned again in every claim.
create function public.try_lock_conversation(p_conversation_id uuid)
returns boolean
language plpgsql
volatile
set search_path = ''
as $$
begin
    return pg_catalog.pg_try_advisory_xact_lock(
        pg_catalog.hashtextextended('job_queue.conversation:' || p_conversation_id::text, 0));
end;
$$;

-- Claim protocol, three statements, each with its own snapshot (READ COMMITTED):
--  0. expired leases: processing jobs whose lease ran out go back to pending (lease_expired) or,
--     when they have used every attempt, to dead_letter, so a job that kills its worker every
--     time cannot loop forever;
--  1. pick due candidates FOR UPDATE SKIP LOCKED (concurrent claimers never see the same row),
--     keep one per conversation and take a transaction-scoped advisory lock on each
--     conversation (try_lock_conversation), dropping candidates whose lock is taken;
--  2. re-check, in a snapshot taken only after those locks are held, that no other job of the
--     conversation is processing, and claim.
-- Statement 2 must be separate: within one statement the snapshot is fixed before the lock is
-- acquired, so a peer that claimed a job of the same conversation and committed (releasing its
-- lock) just before we locked would be invisible, and both jobs would run at once.
--
-- Plan settings: the claim must walk job_queue_due_idx in order and stop after the batch, and
-- statement 2 must fetch its rows by primary key, whatever the statistics say. A burst after a
-- quiet period (or a freshly truncated table) leaves statistics that describe an empty queue;
-- with them the planner chose a bitmap scan of the whole due set plus a sort, and an update
-- that walked the whole due index, 15-25x slower per claim (bench/README.md). With sequential
-- and bitmap scans off, the ordered index scans are the only plans left; the generic plan is
-- then also the right one, so it is kept instead of re-planning on every call.
create function public.dequeue_jobs(
    p_worker_id text,
    p_batch_size int default 50,
    p_lease_seconds int default 300,
    p_job_types text[] default null
) returns setof public.job_queue
language plpgsql
set search_path = ''
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
declare
    v_ids uuid[];
begin
    if p_worker_id is null or p_worker_id = '' then
        raise exception 'dequeue_jobs: p_worker_id is required' using errcode = '22023';
    end if;
    if p_batch_size is null or p_batch_size < 1 or p_lease_seconds is null or p_lease_seconds < 1
    then
        raise exception 'dequeue_jobs: p_batch_size and p_lease_seconds must be >= 1'
            using errcode = '22023';
    end if;

    -- 0. expired leases (an empty index range when nothing has expired)
    with expired as (
        select q.id
        from public.job_queue q
        where q.status = 'processing' and q.locked_until <= now()
          and (p_job_types is null or q.job_type = any (p_job_types))
        order by q.locked_until
        limit p_batch_size
        for update skip locked
    ), moved as (
        update public.job_queue q
        set status = case when q.attempt_count >= q.max_attempts
                          then 'dead_letter' else 'pending' end,
            next_retry_at = now(),
            dead_lettered_at = case when q.attempt_count >= q.max_attempts then now() end,
            last_error = 'lease expired (held by ' || coalesce(q.locked_by, '?') || ')',
            last_error_type = 'transient',
            last_error_at = now(),
            locked_until = null,
            updated_at = now()
        from expired e
        where q.id = e.id
        returning q.id, q.store_id, q.conversation_id, q.status, q.locked_by, q.attempt_count
    )
    insert into public.events (store_id, job_id, conversation_id, event_type, detail)
    select m.store_id, m.id, m.conversation_id, ev.event_type,
           jsonb_build_object('worker_id', m.locked_by, 'attempt', m.attempt_count,
                              'reason', 'lease expired')
    from moved m
    cross join lateral (
        select 'job.lease_expired' as event_type
        union all
        select 'job.dead_lettered' where m.status = 'dead_letter'
    ) ev;

    -- 1. candidates, one per conversation, each conversation advisory-locked
    with candidates as materialized (
        select q.id, q.conversation_id, q.priority, q.next_retry_at
        from public.job_queue q
        where q.status = 'pending' and q.next_retry_at <= now()
          and (p_job_types is null or q.job_type = any (p_job_types))
          -- cheap pre-filter on this (possibly stale) snapshot; statement 2 decides. The OR keeps
          -- it a subplan: as an anti-join the planner scanned the whole in-flight index, dead
          -- entries included, under a nested loop
          and (q.conversation_id is null or not exists (
              select 1 from public.job_queue f
              where f.conversation_id = q.conversation_id and f.status = 'processing'
          ))
        order by q.priority desc, q.next_retry_at, q.id
        limit p_batch_size
        for update skip locked
    ), ranked as materialized (
        select c.id, c.conversation_id,
               row_number() over (partition by c.conversation_id
                                  order by c.priority desc, c.next_retry_at, c.id) as rn
        from candidates c
    )
    select array_agg(r.id) into v_ids
    from ranked r
    -- CASE fixes the evaluation order: only the first candidate of a conversation is locked
    where case
              when r.conversation_id is null then true
              when r.rn = 1 then public.try_lock_conversation(r.conversation_id)
              else false
          end;

    if v_ids is null then
        return;
    end if;

    -- 2. claim, re-checking exclusivity in a snapshot taken after the locks are held
    return query
    with claimed as (
        update public.job_queue q
        set status = 'processing',
            locked_by = p_worker_id,
            locked_until = now() + make_interval(secs => p_lease_seconds),
            started_at = now(),
            attempt_count = q.attempt_count + 1,
            updated_at = now()
        -- no status test: statement 1 locked these rows as pending and we hold the locks, so
        -- they still are; a status test would let the planner scan job_queue_due_idx instead
        -- of the primary key
        where q.id = any (v_ids)
          and (q.conversation_id is null or not exists (
              select 1 from public.job_queue f
              where f.conversation_id = q.conversation_id and f.status = 'processing'
          ))
        returning q.*
    ), logged as (
        insert into public.events (store_id, job_id, conversation_id, event_type, detail)
        select c.store_id, c.id, c.conversation_id, 'job.claimed',
               jsonb_build_object('worker_id', p_worker_id, 'attempt', c.attempt_count,
                                  'lease_seconds', p_lease_seconds)
        from claimed c
    )
    select c.* from claimed c order by c.priority desc, c.next_retry_at, c.id;
end;
$$;

create function public.extend_lease(
    p_worker_id text,
    p_job_ids uuid[],
    p_lease_seconds int default 300
) returns int
language sql
set search_path = ''
as $$
    -- the holder keeps its lease even just past expiry as long as nobody has reclaimed the job
    with extended as (
        update public.job_queue q
        set locked_until = now() + make_interval(secs => p_lease_seconds),
            updated_at = now()
        where q.id = any (p_job_ids) and q.status = 'processing' and q.locked_by = p_worker_id
        returning 1
    )
    select count(*)::int from extended;
$$;

-- ---------------------------------------------------------------------------------------------
-- Outcomes. "Holding the lease" means: status processing and locked_by = the caller. A job whose
-- lease expired but was not reclaimed yet can still be finished by its holder.
-- The outcome functions are PL/pgSQL even where one SQL statement would do: PL/pgSQL keeps each
-- statement's plan for the session, while a SQL-language function that cannot be inlined is
-- parsed and planned on every call (a quarter of the completion's server time).
-- ---------------------------------------------------------------------------------------------

create function public.complete_job(
    p_job_id uuid,
    p_worker_id text,
    p_result jsonb default null
) returns boolean
language plpgsql
set search_path = ''
as $$
declare
    v_done boolean;
begin
    with done as (
        update public.job_queue q
        set status = 'completed', completed_at = now(), result = p_result,
            locked_until = null, updated_at = now()
        where q.id = p_job_id and q.status = 'processing' and q.locked_by = p_worker_id
        returning q.id, q.store_id, q.conversation_id, q.started_at, q.completed_at,
                  q.attempt_count
    ), logged as (
        insert into public.events (store_id, job_id, conversation_id, event_type, detail)
        select d.store_id, d.id, d.conversation_id, 'job.completed',
               jsonb_build_object('worker_id', p_worker_id, 'attempt', d.attempt_count,
                                  'duration_ms',
                                  round(extract(epoch from d.completed_at - d.started_at) * 1000))
        from done d
    )
    select exists (select 1 from done) into v_done;
    return v_done;
end;
$$;

-- Batch acknowledgement: p_results is null or a JSON array aligned with p_job_ids.
-- Returns how many of the jobs this worker still held (and therefore completed).
create function public.complete_jobs(
    p_worker_id text,
    p_job_ids uuid[],
    p_results jsonb default null
) returns int
language plpgsql
set search_path = ''
as $$
declare
    v_count int;
begin
    with input as (
        select i.id, p_results -> (i.ord::int - 1) as result
        from unnest(p_job_ids) with ordinality as i (id, ord)
    ), done as (
        update public.job_queue q
        set status = 'completed', completed_at = now(), result = i.result,
            locked_until = null, updated_at = now()
        from input i
        where q.id = i.id and q.status = 'processing' and q.locked_by = p_worker_id
        returning q.id, q.store_id, q.conversation_id, q.started_at, q.completed_at,
                  q.attempt_count
    ), logged as (
        insert into public.events (store_id, job_id, conversation_id, event_type, detail)
        select d.store_id, d.id, d.conversation_id, 'job.completed',
               jsonb_build_object('worker_id', p_worker_id, 'attempt', d.attempt_count,
                                  'duration_ms',
                                  round(extract(epoch from d.completed_at - d.started_at) * 1000))
        from done d
    )
    select count(*)::int into v_count from done;
    return v_count;
end;
$$;

-- Returns the new status ('pending' when a retry is scheduled, 'dead_letter'), or null when the
-- caller no longer holds the lease (then nothing changes).
create function public.fail_job(
    p_job_id uuid,
    p_worker_id text,
    p_error text,
    p_error_type text default 'transient',
    p_retry_after_seconds int default null
) returns text
language plpgsql
set search_path = ''
as $$
declare
    v_job public.job_queue;
    v_delay double precision;
    v_status text;
begin
    if p_error_type is null or p_error_type not in ('transient', 'permanent') then
        raise exception 'fail_job: p_error_type must be transient or permanent, got %',
            p_error_type using errcode = '22023';
    end if;

    select * into v_job from public.job_queue q
    where q.id = p_job_id and q.status = 'processing' and q.locked_by = p_worker_id
    for update;
    if not found then
        return null;
    end if;

    if p_error_type = 'permanent' or v_job.attempt_count >= v_job.max_attempts then
        v_status := 'dead_letter';
        update public.job_queue q
        set status = 'dead_letter', dead_lettered_at = now(), locked_until = null,
            last_error = p_error, last_error_type = p_error_type, last_error_at = now(),
            updated_at = now()
        where q.id = p_job_id;
        insert into public.events (store_id, job_id, conversation_id, event_type, detail)
        values (v_job.store_id, v_job.id, v_job.conversation_id, 'job.dead_lettered',
                jsonb_build_object('worker_id', p_worker_id, 'attempt', v_job.attempt_count,
                                   'error', p_error, 'error_type', p_error_type));
    else
        -- 2^attempt minutes (attempt_count was incremented by the claim: first failure -> 2 min),
        -- capped at a day, never sooner than the service asked for, plus up to 10% jitter so a
        -- burst of failures does not come back as a burst.
        v_delay := greatest(60 * power(2, least(v_job.attempt_count, 10)),
                            coalesce(p_retry_after_seconds, 0))
                   * (1 + 0.1 * random());
        v_delay := least(v_delay, 86400 * 1.1);
        v_status := 'pending';
        update public.job_queue q
        set status = 'pending', next_retry_at = now() + make_interval(secs => v_delay),
            locked_by = null, locked_until = null,
            last_error = p_error, last_error_type = p_error_type, last_error_at = now(),
            updated_at = now()
        where q.id = p_job_id;
        insert into public.events (store_id, job_id, conversation_id, event_type, detail)
        values (v_job.store_id, v_job.id, v_job.conversation_id, 'job.retry_scheduled',
                jsonb_build_object('worker_id', p_worker_id, 'attempt', v_job.attempt_count,
                                   'error', p_error, 'error_type', p_error_type,
                                   'delay_seconds', round(v_delay::numeric, 3),
                                   'retry_at', now() + make_interval(secs => v_delay)));
    end if;
    return v_status;
end;
$$;

-- Back to pending after p_delay_seconds without spending an attempt (e.g. a circuit is open).
create function public.defer_job(
    p_job_id uuid,
    p_worker_id text,
    p_delay_seconds int,
    p_reason text
) returns boolean
language sql
set search_path = ''
as $$
    with deferred as (
        update public.job_queue q
        set status = 'pending',
            next_retry_at = now() + make_interval(secs => greatest(coalesce(p_delay_seconds, 0), 0)),
            attempt_count = greatest(q.attempt_count - 1, 0),
            locked_by = null, locked_until = null, updated_at = now()
        where q.id = p_job_id and q.status = 'processing' and q.locked_by = p_worker_id
        returning q.id, q.store_id, q.conversation_id, q.next_retry_at
    ), logged as (
        insert into public.events (store_id, job_id, conversation_id, event_type, detail)
        select d.store_id, d.id, d.conversation_id, 'job.deferred',
               jsonb_build_object('worker_id', p_worker_id, 'reason', p_reason,
                                  'delay_seconds', p_delay_seconds, 'run_at', d.next_retry_at)
        from deferred d
    )
    select exists (select 1 from deferred);
$$;

-- ---------------------------------------------------------------------------------------------
-- Dead-letter queue and operations
-- ---------------------------------------------------------------------------------------------

create function public.requeue_dlq_job(
    p_job_id uuid,
    p_reset_attempts boolean default true
) returns boolean
language sql
set search_path = ''
as $$
    with requeued as (
        update public.job_queue q
        set status = 'pending', next_retry_at = now(),
            attempt_count = case when p_reset_attempts then 0 else q.attempt_count end,
            dead_lettered_at = null, locked_by = null, locked_until = null, updated_at = now()
        where q.id = p_job_id and q.status = 'dead_letter'
        returning q.id, q.store_id, q.conversation_id, q.attempt_count
    ), logged as (
        insert into public.events (store_id, job_id, conversation_id, event_type, detail)
        select r.store_id, r.id, r.conversation_id, 'job.requeued',
               jsonb_build_object('reset_attempts', p_reset_attempts,
                                  'attempt_count', r.attempt_count)
        from requeued r
    )
    select exists (select 1 from requeued);
$$;

create function public.list_dead_letter_jobs(
    p_store_id uuid default null,
    p_job_type text default null,
    p_error_type text default null,
    p_min_age_seconds int default null,
    p_limit int default 100
) returns setof public.job_queue
language sql
stable
set search_path = ''
as $$
    select q.*
    from public.job_queue q
    where q.status = 'dead_letter'
      and (p_store_id is null or q.store_id = p_store_id)
      and (p_job_type is null or q.job_type = p_job_type)
      and (p_error_type is null or q.last_error_type = p_error_type)
      and (p_min_age_seconds is null
           or q.dead_lettered_at <= now() - make_interval(secs => p_min_age_seconds))
    order by q.dead_lettered_at desc, q.id
    limit greatest(coalesce(p_limit, 100), 0);
$$;

create function public.get_job(p_job_id uuid)
returns setof public.job_queue
language sql
stable
set search_path = ''
as $$
    select q.* from public.job_queue q where q.id = p_job_id;
$$;

create function public.get_job_events(p_job_id uuid)
returns setof public.events
language sql
stable
set search_path = ''
as $$
    select e.* from public.events e where e.job_id = p_job_id order by e.created_at, e.id;
$$;

-- Deletes dead-letter jobs only (their events stay: the audit trail is append-only).
create function public.purge_dead_letter_jobs(p_job_ids uuid[])
returns int
language sql
set search_path = ''
as $$
    with purged as (
        delete from public.job_queue q
        where q.id = any (p_job_ids) and q.status = 'dead_letter'
        returning 1
    )
    select count(*)::int from purged;
$$;

-- Live statuses only: the number of completed rows depends on retention and would cost a scan
-- of the whole history on every /metrics scrape.
create function public.queue_stats()
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

-- ---------------------------------------------------------------------------------------------
-- Circuit breakers: closed -> open after failure_threshold consecutive failures; open for a
-- cool-down of base * 2^(open_count - 1) seconds capped at max; then half-open: exactly one probe
-- is let through (a probe that never reports frees the slot after probe_timeout_seconds);
-- success anywhere closes and resets; failure in half-open reopens with a longer cool-down.
-- ---------------------------------------------------------------------------------------------

create function public.circuit_allow(p_service text)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
    v_state text;
begin
    -- the common case (closed or unknown service) is a single primary-key read, no write
    select b.state into v_state from public.circuit_breakers b where b.service = p_service;
    if not found or v_state = 'closed' then
        return true;
    end if;

    -- Take the probe slot: the row lock serialises concurrent callers and the losers re-check
    -- the predicate on the updated row, so exactly one caller wins the slot.
    update public.circuit_breakers b
    set state = 'half_open', probe_started_at = now(), updated_at = now()
    where b.service = p_service
      and ((b.state = 'open' and b.open_until <= now())
           or (b.state = 'half_open'
               and b.probe_started_at <= now() - make_interval(secs => b.probe_timeout_seconds)));
    return found;
end;
$$;

-- Records the outcome of a call and returns the breaker's state afterwards.
create function public.circuit_record(p_service text, p_success boolean)
returns text
language plpgsql
set search_path = ''
as $$
declare
    v_b public.circuit_breakers;
    v_cooldown int;
begin
    if p_success then
        -- a success on a healthy (or unknown) breaker is one read and no write, so the hot path
        -- does not serialise callers on the breaker row
        select b.state, b.consecutive_failures into v_b.state, v_b.consecutive_failures
        from public.circuit_breakers b where b.service = p_service;
        if not found or (v_b.state = 'closed' and v_b.consecutive_failures = 0) then
            return 'closed';
        end if;
        select * into v_b from public.circuit_breakers b where b.service = p_service for update;
        update public.circuit_breakers b
        set state = 'closed', consecutive_failures = 0, open_count = 0, opened_at = null,
            open_until = null, probe_started_at = null, last_success_at = now(),
            updated_at = now()
        where b.service = p_service;
        if v_b.state <> 'closed' then
            insert into public.events (event_type, detail)
            values ('circuit.closed',
                    jsonb_build_object('service', p_service, 'from', v_b.state,
                                       'open_count', v_b.open_count));
        end if;
        return 'closed';
    end if;

    insert into public.circuit_breakers (service) values (p_service)
    on conflict (service) do nothing;
    select * into v_b from public.circuit_breakers b where b.service = p_service for update;

    if v_b.state = 'open' then
        -- a straggler that started before the circuit opened: counted, cool-down unchanged
        update public.circuit_breakers b
        set consecutive_failures = b.consecutive_failures + 1, last_failure_at = now(),
            updated_at = now()
        where b.service = p_service;
        return 'open';
    end if;

    if v_b.state = 'half_open' or v_b.consecutive_failures + 1 >= v_b.failure_threshold then
        v_cooldown := least(v_b.base_cooldown_seconds * power(2, least(v_b.open_count, 20))::int,
                            v_b.max_cooldown_seconds);
        update public.circuit_breakers b
        set state = 'open', consecutive_failures = b.consecutive_failures + 1,
            open_count = b.open_count + 1, opened_at = now(),
            open_until = now() + make_interval(secs => v_cooldown),
            probe_started_at = null, last_failure_at = now(), updated_at = now()
        where b.service = p_service;
        insert into public.events (event_type, detail)
        values ('circuit.opened',
                jsonb_build_object('service', p_service, 'from', v_b.state,
                                   'consecutive_failures', v_b.consecutive_failures + 1,
                                   'open_count', v_b.open_count + 1,
                                   'cooldown_seconds', v_cooldown));
        return 'open';
    end if;

    update public.circuit_breakers b
    set consecutive_failures = b.consecutive_failures + 1, last_failure_at = now(),
        updated_at = now()
    where b.service = p_service;
    return 'closed';
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Metrics and retention
-- ---------------------------------------------------------------------------------------------

-- One row per job type for the five whole minutes ending at the current minute, upserted on
-- (job_type, window_start) so a per-minute schedule (pg_cron) may run it any number of times.
-- Status counts and the oldest due age are taken now; the flows (completed, retried,
-- dead-lettered, processing time) count what happened inside the window.
create function public.aggregate_queue_metrics()
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
create procedure public.purge_completed_jobs(
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

-- ---------------------------------------------------------------------------------------------
-- Privileges: queue routines are for the worker (service_role) only. Supabase grants EXECUTE
-- to anon and authenticated by default, hence the explicit revokes.
-- ---------------------------------------------------------------------------------------------

do $$
declare
    v_sig text;
begin
    foreach v_sig in array array[
        'public.enqueue_job(text, jsonb, text, uuid, uuid, int, timestamptz, int)',
        'public.dequeue_jobs(text, int, int, text[])',
        'public.extend_lease(text, uuid[], int)',
        'public.complete_job(uuid, text, jsonb)',
        'public.complete_jobs(text, uuid[], jsonb)',
        'public.enqueue_jobs(jsonb)',
        'public.fail_job(uuid, text, text, text, int)',
        'public.defer_job(uuid, text, int, text)',
        'public.requeue_dlq_job(uuid, boolean)',
        'public.try_lock_conversation(uuid)',
        'public.circuit_allow(text)',
        'public.circuit_record(text, boolean)',
        'public.aggregate_queue_metrics()',
        'public.list_dead_letter_jobs(uuid, text, text, int, int)',
        'public.get_job(uuid)',
        'public.get_job_events(uuid)',
        'public.purge_dead_letter_jobs(uuid[])',
        'public.queue_stats()',
        'public.uuid_generate_v7()'
    ] loop
        execute format('revoke all on function %s from public, anon, authenticated', v_sig);
        execute format('grant execute on function %s to service_role', v_sig);
    end loop;
end;
$$;

revoke all on procedure public.purge_completed_jobs(interval, int) from public, anon, authenticated;
grant execute on procedure public.purge_completed_jobs(interval, int) to service_role;

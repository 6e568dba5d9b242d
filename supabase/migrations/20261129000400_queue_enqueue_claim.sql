-- Putting jobs on the queue (enqueue_job, enqueue_jobs) and claiming them (try_lock_conversation,
-- dequeue_jobs, extend_lease).

-- ---------------------------------------------------------------------------------------------
-- Enqueue
-- ---------------------------------------------------------------------------------------------

create or replace function public.enqueue_job(
  p_job_type text,
  p_payload jsonb,
  p_idempotency_key text default null,
  p_store_id uuid default null,
  p_conversation_id uuid default null,
  p_priority int default 0,
  p_run_at timestamptz default now(),
  p_max_attempts int default null  -- null: the job type's retry policy
)
returns uuid
language plpgsql
set search_path = ''
as $$
declare
    v_id uuid;
begin
    if p_job_type is null or p_job_type = '' then
        raise exception 'enqueue_job: p_job_type is required' using errcode = '22023';
    end if;
    if p_max_attempts < 1 then
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
                coalesce(p_max_attempts, (public.job_retry_policy(p_job_type)).max_attempts))
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
create or replace function public.enqueue_jobs(p_jobs jsonb)
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
    with policies as (
        -- one policy lookup per job type in the batch, not per job
        select t.job_type, (public.job_retry_policy(t.job_type)).max_attempts
        from (select distinct j ->> 'job_type' as job_type
              from pg_catalog.jsonb_array_elements(p_jobs) j) t
    ), input as (
        select i.ord, public.uuid_generate_v7() as id, j ->> 'job_type' as job_type,
               coalesce(j -> 'payload', '{}'::jsonb) as payload,
               j ->> 'idempotency_key' as idempotency_key,
               (j ->> 'store_id')::uuid as store_id,
               (j ->> 'conversation_id')::uuid as conversation_id,
               coalesce((j ->> 'priority')::int, 0) as priority,
               coalesce((j ->> 'run_at')::timestamptz, now()) as run_at,
               coalesce((j ->> 'max_attempts')::int, p.max_attempts) as max_attempts
        from pg_catalog.jsonb_array_elements(p_jobs) with ordinality as i (j, ord)
        join policies p on p.job_type = j ->> 'job_type'
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
                   (e.j ->> 'max_attempts')::int))
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
create or replace function public.try_lock_conversation(p_conversation_id uuid)
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

-- Claim protocol, four statements, each with its own snapshot (READ COMMITTED):
--  0. expired leases: processing jobs whose lease ran out go back to pending (lease_expired) or,
--     when they have used every attempt, to dead_letter, so a job that kills its worker every
--     time cannot loop forever;
--  1. the stores with due jobs (a bounded skip scan, below);
--  2. pick due candidates FOR UPDATE SKIP LOCKED (concurrent claimers never see the same row),
--     fairly across stores, keep one per conversation and take a transaction-scoped advisory
--     lock on each conversation (try_lock_conversation), dropping candidates whose lock is taken;
--  3. re-check, in a snapshot taken only after those locks are held, that no other job of the
--     conversation is processing, and claim.
-- Statement 3 must be separate: within one statement the snapshot is fixed before the lock is
-- acquired, so a peer that claimed a job of the same conversation and committed (releasing its
-- lock) just before we locked would be invisible, and both jobs would run at once.
--
-- Fairness (issue 16): oldest first across all stores let one store's 2,000-email backlog hold
-- every slot while another store's replies waited 26, 57, 86, 117 s. The candidates are now
-- (a) the head of each store that has due jobs, its fair share of the batch
--     (ceil(batch / stores)), read from job_queue_store_due_idx, and
-- (b) the head of the global due order as before (priority, then age), which fills the batch
--     when few stores have work and is where store-less jobs come from;
-- and the batch is taken from them in turns: a candidate's turn is its store's jobs already in
-- flight plus its rank among its store's candidates, so a store with nothing running goes before
-- a store whose backlog holds the slots, even in a claim of one job (the runner claims as many
-- jobs as it has free slots, often one). Priority still comes first. Every read is bounded: at
-- most FAIR_STORES stores with due jobs (or the batch size, if larger) are taken per claim, and
-- at most FAIR_VISITS looked at, starting at a random store id so that beyond those numbers
-- every store gets its turn over successive claims; a store's head is read only up to its
-- share; its in-flight count is read from an index of processing jobs, so it costs at most the
-- slots that store holds (capped). A big store's due set is never walked.
-- Candidates that are not taken are locked only until the claim commits.
--
-- The claim writes no event (issue 14): the job row records it (locked_by, locked_until,
-- started_at, attempt_count), and events record outcomes. A claim event per job cost 6 us of
-- the server's 39 per job (bench/README.md).
--
-- Plan settings: the claim must walk its indexes in order and stop after the batch, and
-- statement 3 must fetch its rows by primary key, whatever the statistics say. A burst after a
-- quiet period (or a freshly truncated table) leaves statistics that describe an empty queue;
-- with them the planner chose a bitmap scan of the whole due set plus a sort, and an update
-- that walked the whole due index, 15-25x slower per claim (bench/README.md). With sequential
-- and bitmap scans off, the ordered index scans are the only plans left; the generic plan is
-- then also the right one, so it is kept instead of re-planning on every call.
create or replace function public.dequeue_jobs(
  p_worker_id text,
  p_batch_size int default 50,
  p_lease_seconds int default 300,
  p_job_types text[] default null
)
returns setof public.job_queue
language plpgsql
set search_path = ''
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_bitmapscan = off
as $$
declare
    -- Stores with due jobs taken per claim (the batch size when larger): enough that a claim of
    -- one job still sees every busy store of a typical deployment.
    FAIR_STORES constant int := 32;
    -- Stores looked at per direction at most, due or not: bounds the scan when many stores wait.
    FAIR_VISITS constant int := 256;
    -- A store's in-flight jobs are counted up to this many: past it, its turn is last anyway.
    INFLIGHT_CAP constant int := 1000;
    v_ids uuid[];
    v_stores uuid[];
    v_start uuid;
    v_share int;
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

    -- 1. stores with due jobs: a loose index scan over job_queue_store_due_idx, one descent per
    -- store however many jobs it has, which also reads the store's earliest due time (so a
    -- store whose jobs all wait for a retry or an open breaker is passed over, not counted).
    -- From a random store id to the end, then from the start; at most FAIR_STORES (or the batch
    -- size) due stores, and at most FAIR_VISITS stores looked at in each direction. Store-less
    -- queues (the benchmarks) find none at once. Only the claimed types count: a lane claiming
    -- emails must not spend its stores on stores whose due jobs are all fetches (one live per
    -- store) or another lane's; each store holds few pending jobs of other types to step over.
    v_start := pg_catalog.gen_random_uuid();
    with recursive after_start as (
        (select q.store_id, q.next_retry_at, 1 as visits
         from public.job_queue q
         where q.status = 'pending' and q.store_id >= v_start
           and (p_job_types is null or q.job_type = any (p_job_types))
         order by q.store_id, q.next_retry_at, q.id
         limit 1)
        union all
        select n.store_id, n.next_retry_at, b.visits + 1
        from after_start b
        cross join lateral (
            select q.store_id, q.next_retry_at
            from public.job_queue q
            where q.status = 'pending' and q.store_id > b.store_id
              and (p_job_types is null or q.job_type = any (p_job_types))
            order by q.store_id, q.next_retry_at, q.id
            limit 1
        ) n
        where b.visits < FAIR_VISITS
    ), before_start as (
        (select q.store_id, q.next_retry_at, 1 as visits
         from public.job_queue q
         where q.status = 'pending' and q.store_id < v_start
           and (p_job_types is null or q.job_type = any (p_job_types))
         order by q.store_id, q.next_retry_at, q.id
         limit 1)
        union all
        select n.store_id, n.next_retry_at, b.visits + 1
        from before_start b
        cross join lateral (
            select q.store_id, q.next_retry_at
            from public.job_queue q
            where q.status = 'pending' and q.store_id > b.store_id and q.store_id < v_start
              and (p_job_types is null or q.job_type = any (p_job_types))
            order by q.store_id, q.next_retry_at, q.id
            limit 1
        ) n
        where b.visits < FAIR_VISITS
    )
    -- evaluated lazily: before_start is read only when after_start had too few due stores
    select coalesce(array_agg(d.store_id), '{}') into v_stores
    from (select b.store_id from (select * from after_start
                                  union all
                                  select * from before_start) b
          where b.next_retry_at <= now()
          limit greatest(p_batch_size, FAIR_STORES)) d;
    v_share := ceil(p_batch_size::numeric / greatest(cardinality(v_stores), 1));

    -- 2. candidates: each store's share and the global head; the batch in turns; one per
    -- conversation, each conversation advisory-locked
    with fair as materialized (
        select h.id, h.store_id, h.conversation_id, h.priority, h.next_retry_at
        from unnest(v_stores) s (store_id)
        cross join lateral (
            select q.id, q.store_id, q.conversation_id, q.priority, q.next_retry_at
            from public.job_queue q
            where q.store_id = s.store_id and q.status = 'pending' and q.next_retry_at <= now()
              and (p_job_types is null or q.job_type = any (p_job_types))
              and (q.conversation_id is null or not exists (
                  select 1 from public.job_queue f
                  where f.conversation_id = q.conversation_id and f.status = 'processing'
              ))
            order by q.next_retry_at, q.id
            limit v_share
            for update skip locked
        ) h
    ), head as materialized (
        select q.id, q.store_id, q.conversation_id, q.priority, q.next_retry_at
        from public.job_queue q
        where q.status = 'pending' and q.next_retry_at <= now()
          and (p_job_types is null or q.job_type = any (p_job_types))
          -- cheap pre-filter on this (possibly stale) snapshot; statement 3 decides. The OR keeps
          -- it a subplan: as an anti-join the planner scanned the whole in-flight index, dead
          -- entries included, under a nested loop
          and (q.conversation_id is null or not exists (
              select 1 from public.job_queue f
              where f.conversation_id = q.conversation_id and f.status = 'processing'
          ))
        order by q.priority desc, q.next_retry_at, q.id
        limit p_batch_size
        for update skip locked
    ), candidates as (
        -- a job in both lists is one candidate (our own row locks do not make SKIP LOCKED skip)
        select * from fair
        union
        select * from head
    ), inflight as materialized (
        select s.store_id,
               (select count(*) from (
                    select 1 from public.job_queue f
                    where f.store_id = s.store_id and f.status = 'processing'
                    limit INFLIGHT_CAP) n) as n
        from (select distinct c.store_id from candidates c where c.store_id is not null) s
    ), picked as materialized (
        select t.id, t.conversation_id, t.priority, t.next_retry_at
        from (
            select c.*,
                   coalesce(i.n, 0) + row_number() over (
                       partition by c.store_id
                       order by c.priority desc, c.next_retry_at, c.id) as turn
            from candidates c
            left join inflight i on i.store_id = c.store_id
        ) t
        order by t.priority desc, t.turn, t.next_retry_at, t.id
        limit p_batch_size
    ), ranked as materialized (
        select p.id, p.conversation_id,
               row_number() over (partition by p.conversation_id
                                  order by p.priority desc, p.next_retry_at, p.id) as rn
        from picked p
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

    -- 3. claim, re-checking exclusivity in a snapshot taken after the locks are held; the row
    -- itself records the claim (no event)
    return query
    with claimed as (
        update public.job_queue q
        set status = 'processing',
            locked_by = p_worker_id,
            locked_until = now() + make_interval(secs => p_lease_seconds),
            started_at = now(),
            attempt_count = q.attempt_count + 1,
            updated_at = now()
        -- no status test: statement 2 locked these rows as pending and we hold the locks, so
        -- they still are; a status test would let the planner scan job_queue_due_idx instead
        -- of the primary key
        where q.id = any (v_ids)
          and (q.conversation_id is null or not exists (
              select 1 from public.job_queue f
              where f.conversation_id = q.conversation_id and f.status = 'processing'
          ))
        returning q.*
    )
    select c.* from claimed c order by c.priority desc, c.next_retry_at, c.id;
end;
$$;

create or replace function public.extend_lease(
  p_worker_id text,
  p_job_ids uuid[],
  p_lease_seconds int default 300
)
returns int
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

-- Privileges: these routines are for the worker (service_role) only. Supabase grants EXECUTE
-- to anon and authenticated by default, hence the explicit revoke before each grant.
revoke all on function public.enqueue_job(text, jsonb, text, uuid, uuid, int, timestamptz, int)
  from public, anon, authenticated;
grant execute on function public.enqueue_job(text, jsonb, text, uuid, uuid, int, timestamptz, int)
  to service_role;
revoke all on function public.enqueue_jobs(jsonb) from public, anon, authenticated;
grant execute on function public.enqueue_jobs(jsonb) to service_role;
revoke all on function public.try_lock_conversation(uuid) from public, anon, authenticated;
grant execute on function public.try_lock_conversation(uuid) to service_role;
revoke all on function public.dequeue_jobs(text, int, int, text[]) from public, anon, authenticated;
grant execute on function public.dequeue_jobs(text, int, int, text[]) to service_role;
revoke all on function public.extend_lease(text, uuid[], int) from public, anon, authenticated;
grant execute on function public.extend_lease(text, uuid[], int) to service_role;

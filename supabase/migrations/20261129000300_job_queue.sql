-- The job queue table: a durable job queue whose semantics live in the queue files that follow
-- (enqueue and claim, outcomes and DLQ, circuit breakers, metrics and retention; issue 2).
--
-- Statuses: pending -> processing -> completed | pending (retry, defer, expired lease)
--           | dead_letter (attempts used up, permanent error) ; dead_letter -> pending (requeue).
-- Every outcome appends an event to public.events (set-based inserts, never row by row); the
-- claim itself is recorded on the job row (locked_by, started_at, attempt_count), which is the
-- claim's only write besides the row lock.
-- store_id and conversation_id are keys, not foreign keys: the queue stays generic and deleting a
-- store never blocks on its job history.
-- Every queue function runs with `set search_path = ''` and is executable by service_role only.

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
  -- The claim is recorded here, not as an event (issue 14): who holds (or last held) the job,
  -- until when, and when its current attempt (attempt_count) was claimed. Each earlier attempt's
  -- worker and number are on its outcome event (retried, deferred, lease expired, ...).
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
-- Fair claims across stores (dequeue_jobs, issue 16): each store's due jobs in due order, so the
-- claim takes a share from every store with work without walking another store's backlog, and
-- the number of a store's jobs in flight, which decides whose turn it is. Store-less jobs
-- (maintenance) are in neither: they are claimed from job_queue_due_idx, and the bench's
-- store-less jobs pay no extra index writes.
create index job_queue_store_due_idx on public.job_queue (store_id, next_retry_at, id)
  where status = 'pending' and store_id is not null;
create index job_queue_inflight_store_idx on public.job_queue (store_id)
  where status = 'processing' and store_id is not null;
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

-- Row level security: service_role everything; authenticated reads its stores' jobs; anon nothing.

alter table public.job_queue enable row level security;

revoke all on public.job_queue from public, anon, authenticated;
grant all on public.job_queue to service_role;
grant select on public.job_queue to authenticated;

create policy job_queue_service_role_all on public.job_queue
  for all to service_role using (true) with check (true);
create policy job_queue_owner_read on public.job_queue
  for select to authenticated
  using (exists (
    select 1 from public.stores s
    where s.id = job_queue.store_id and s.owner_id = (select auth.uid())
  ));

-- ---------------------------------------------------------------------------------------------
-- Retry policy per job type: how soon and how often a failed job of that type runs again.
-- A type without a row gets job_retry_policy()'s defaults (process_email's numbers). fail_job
-- reads base and cap when it schedules a retry; enqueue_job(s) read max_attempts when the caller
-- gives none (a job keeps the max_attempts it was enqueued with).
-- ---------------------------------------------------------------------------------------------

create table public.job_retry_policies (
  job_type text primary key check (job_type <> ''),
  base_seconds int not null check (base_seconds >= 1),  -- the first retry's delay
  cap_seconds int not null,                             -- no retry waits longer (before jitter)
  max_attempts int not null check (max_attempts >= 1),
  check (cap_seconds >= base_seconds)
);

comment on table public.job_retry_policies is
  'Per job type: first retry delay (doubling per attempt), its cap, and attempts before the DLQ.';

alter table public.job_retry_policies enable row level security;

revoke all on public.job_retry_policies from public, anon, authenticated;
grant all on public.job_retry_policies to service_role;

create policy job_retry_policies_service_role_all on public.job_retry_policies
  for all to service_role using (true) with check (true);

-- The policy of one job type: its row, else the defaults (first retry after 2 minutes, doubling,
-- capped at a day, 5 attempts), so the defaults are written in one place.
create or replace function public.job_retry_policy(p_job_type text)
returns public.job_retry_policies
language sql
stable
set search_path = ''
as $$
  select coalesce(
    (select p from public.job_retry_policies p where p.job_type = p_job_type),
    row(p_job_type, 120, 86400, 5)::public.job_retry_policies
  );
$$;

revoke all on function public.job_retry_policy(text) from public, anon, authenticated;
grant execute on function public.job_retry_policy(text) to service_role;

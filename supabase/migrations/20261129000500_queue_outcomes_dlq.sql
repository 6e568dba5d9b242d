-- How a claimed job ends (complete, fail with retry or dead letter, defer) and the dead-letter
-- queue's operations (requeue, list, inspect, purge).

-- ---------------------------------------------------------------------------------------------
-- Outcomes. "Holding the lease" means: status processing and locked_by = the caller. A job whose
-- lease expired but was not reclaimed yet can still be finished by its holder.
-- The outcome functions are PL/pgSQL even where one SQL statement would do: PL/pgSQL keeps each
-- statement's plan for the session, while a SQL-language function that cannot be inlined is
-- parsed and planned on every call (a quarter of the completion's server time).
-- ---------------------------------------------------------------------------------------------

create or replace function public.complete_job(
  p_job_id uuid,
  p_worker_id text,
  p_result jsonb default null
)
returns boolean
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
create or replace function public.complete_jobs(
  p_worker_id text,
  p_job_ids uuid[],
  p_results jsonb default null
)
returns int
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

-- The backoff of a failed attempt, in seconds (pure, so it is tested alone): the base doubled
-- for every attempt after the first, never sooner than the server's Retry-After, capped (also
-- a hostile Retry-After), then stretched by p_jitter, a fraction fail_job draws from 0..0.1 so
-- a burst of failures does not come back as a burst. The exponent is bounded so no attempt
-- count overflows.
create or replace function public.retry_delay(
  p_attempt int,
  p_base_seconds int,
  p_cap_seconds int,
  p_retry_after_seconds int default null,
  p_jitter double precision default 0
)
returns double precision
language sql
immutable
parallel safe
set search_path = ''
as $$
  select least(
           greatest(p_base_seconds * power(2::double precision,
                                            least(greatest(p_attempt, 1), 40) - 1),
                    coalesce(p_retry_after_seconds, 0)),
           p_cap_seconds
         ) * (1 + greatest(coalesce(p_jitter, 0), 0));
$$;

-- Returns the new status ('pending' when a retry is scheduled, 'dead_letter'), or null when the
-- caller no longer holds the lease (then nothing changes).
create or replace function public.fail_job(
  p_job_id uuid,
  p_worker_id text,
  p_error text,
  p_error_type text default 'transient',
  p_retry_after_seconds int default null
)
returns text
language plpgsql
set search_path = ''
as $$
declare
    v_job public.job_queue;
    v_policy public.job_retry_policies;
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
        -- The job type's policy (public.retry_delay): attempt_count was incremented by the claim,
        -- so the first failure waits the base; up to 10% jitter so a burst of failures does not
        -- come back as a burst.
        v_policy := public.job_retry_policy(v_job.job_type);
        v_delay := public.retry_delay(v_job.attempt_count, v_policy.base_seconds,
                                      v_policy.cap_seconds, p_retry_after_seconds,
                                      0.1 * random());
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
create or replace function public.defer_job(
  p_job_id uuid,
  p_worker_id text,
  p_delay_seconds int,
  p_reason text
)
returns boolean
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

create or replace function public.requeue_dlq_job(
  p_job_id uuid,
  p_reset_attempts boolean default true
)
returns boolean
language sql
set search_path = ''
as $$
    with requeued as (
        update public.job_queue q
        set status = 'pending', next_retry_at = now(),
            attempt_count = case when p_reset_attempts then 0 else q.attempt_count end,
            dead_lettered_at = null, locked_by = null, locked_until = null, updated_at = now()
        where q.id = p_job_id and q.status = 'dead_letter'
          -- A store has at most one live fetch job (job_queue_fetch_live_idx, decision 0021);
          -- while it has one, a dead one stays dead: the live one reads the same mailbox.
          and not (q.job_type = 'fetch_mailbox' and exists (
              select 1 from public.job_queue l
              where l.store_id = q.store_id and l.job_type = 'fetch_mailbox'
                and l.status in ('pending', 'processing')))
        returning q.id, q.store_id, q.conversation_id, q.attempt_count
    ), revived as (
        -- The draft that dead-lettering failed (settle_dead_lettered_job) may be sent again.
        update public.replies p
        set status = 'drafted', error = null
        from requeued r
        where p.job_id = r.id and p.status = 'failed' and p.error like 'dead_lettered:%'
        returning p.id
    ), logged as (
        insert into public.events (store_id, job_id, conversation_id, event_type, detail)
        select r.store_id, r.id, r.conversation_id, 'job.requeued',
               jsonb_build_object('reset_attempts', p_reset_attempts,
                                  'attempt_count', r.attempt_count,
                                  'reply_revived', exists (select 1 from revived))
        from requeued r
    )
    select exists (select 1 from requeued);
$$;

create or replace function public.list_dead_letter_jobs(
  p_store_id uuid default null,
  p_job_type text default null,
  p_error_type text default null,
  p_min_age_seconds int default null,
  p_limit int default 100
)
returns setof public.job_queue
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

create or replace function public.get_job(p_job_id uuid)
returns setof public.job_queue
language sql
stable
set search_path = ''
as $$
    select q.* from public.job_queue q where q.id = p_job_id;
$$;

create or replace function public.get_job_events(p_job_id uuid)
returns setof public.events
language sql
stable
set search_path = ''
as $$
    select e.* from public.events e where e.job_id = p_job_id order by e.created_at, e.id;
$$;

-- Deletes dead-letter jobs only (their events stay: the audit trail is append-only).
create or replace function public.purge_dead_letter_jobs(p_job_ids uuid[])
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

-- Privileges: these routines are for the worker (service_role) only. Supabase grants EXECUTE
-- to anon and authenticated by default, hence the explicit revoke before each grant.
revoke all on function public.complete_job(uuid, text, jsonb) from public, anon, authenticated;
grant execute on function public.complete_job(uuid, text, jsonb) to service_role;
revoke all on function public.complete_jobs(text, uuid[], jsonb) from public, anon, authenticated;
grant execute on function public.complete_jobs(text, uuid[], jsonb) to service_role;
revoke all on function public.retry_delay(int, int, int, int, double precision)
  from public, anon, authenticated;
grant execute on function public.retry_delay(int, int, int, int, double precision) to service_role;
revoke all on function public.fail_job(uuid, text, text, text, int)
  from public, anon, authenticated;
grant execute on function public.fail_job(uuid, text, text, text, int) to service_role;
revoke all on function public.defer_job(uuid, text, int, text) from public, anon, authenticated;
grant execute on function public.defer_job(uuid, text, int, text) to service_role;
revoke all on function public.requeue_dlq_job(uuid, boolean) from public, anon, authenticated;
grant execute on function public.requeue_dlq_job(uuid, boolean) to service_role;
revoke all on function public.list_dead_letter_jobs(uuid, text, text, int, int)
  from public, anon, authenticated;
grant execute on function public.list_dead_letter_jobs(uuid, text, text, int, int) to service_role;
revoke all on function public.get_job(uuid) from public, anon, authenticated;
grant execute on function public.get_job(uuid) to service_role;
revoke all on function public.get_job_events(uuid) from public, anon, authenticated;
grant execute on function public.get_job_events(uuid) to service_role;
revoke all on function public.purge_dead_letter_jobs(uuid[]) from public, anon, authenticated;
grant execute on function public.purge_dead_letter_jobs(uuid[]) to service_role;

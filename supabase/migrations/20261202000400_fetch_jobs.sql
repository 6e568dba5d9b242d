-- Fetching a store's mailbox as a job (issue 14, decision 0021). The fetch cron enqueues one
-- 'fetch_mailbox' job per active store per interval (enqueue_fetch_jobs); any worker claims it
-- through dequeue_jobs like any other job; a fetch that leaves mail waiting ends in
-- finish_fetch_job, which completes it and enqueues the store's next fetch in one transaction.
--
-- The unit of exclusivity is the store's mailbox: at most one fetch job of a store is live
-- (pending or processing) at any time. A partial unique index says so, so it holds whoever
-- writes the row (two cron ticks, two machines, a hand-written insert), and the claim needs no
-- change: a store never has two fetch jobs to claim. (A synthetic conversation_id per store
-- would only stop two from running at once, not two from waiting, and the claim would take and
-- re-check a conversation lock per fetch job for nothing.)

create unique index job_queue_fetch_live_idx on public.job_queue (store_id)
  where job_type = 'fetch_mailbox' and status in ('pending', 'processing');

-- A failing mailbox (server down, wrong password) is tried again after 30 s, 60 s, 120 s and
-- 240 s: never later than the next interval (5 minutes), so a store that recovers is fetched
-- as soon as if it had not failed. After four attempts the job is dead-lettered, where an
-- operator sees why, and the next interval enqueues a fresh one. The store's IMAP breaker
-- (decision 0005) stops the retries from hammering a server that keeps refusing: an open
-- breaker defers the job without spending an attempt.
insert into public.job_retry_policies (job_type, base_seconds, cap_seconds, max_attempts)
values ('fetch_mailbox', 30, 240, 4)
on conflict (job_type) do update
  set base_seconds = excluded.base_seconds, cap_seconds = excluded.cap_seconds,
      max_attempts = excluded.max_attempts;

-- When the fetch cron last asked for each store's mailbox (enqueue_fetch_jobs). A fetch job that
-- was claimed no later than its store's tick may have read the mailbox before it, so
-- finish_fetch_job gives the store its next fetch at once. Kept apart from the job rows: a tick
-- then never waits on a running job's row (which the lease heartbeat also locks, in an order of
-- its own), so ticks and heartbeats cannot deadlock.
create table public.mailbox_ticks (
  store_id uuid primary key references public.stores (id) on delete cascade,
  ticked_at timestamptz not null
);

comment on table public.mailbox_ticks is
  'When enqueue_fetch_jobs last asked for each store''s mailbox; read by finish_fetch_job.';

alter table public.mailbox_ticks enable row level security;
revoke all on public.mailbox_ticks from public, anon, authenticated;
grant all on public.mailbox_ticks to service_role;
create policy mailbox_ticks_service_role_all on public.mailbox_ticks
  for all to service_role using (true) with check (true);

-- One fetch job per active store (or per store of p_store_ids that is active), unless the store
-- already has one: a pending one will read the mailbox anyway; a running one may have read it
-- before this call, and the tick recorded here makes finish_fetch_job enqueue the store's next
-- fetch as soon as it ends. Every tick therefore leads to a fetch that starts after it.
--
-- Priority (p_priority, 10 by default; emails are 0): fetch jobs and email jobs are claimed by
-- separate slots of a worker (worker/queue/lanes.py), so neither can starve the other; the
-- priority only puts fetch jobs at the head of the due index, where the fetch lane's claim
-- finds them at once instead of reading past the emails waiting behind them.
--
-- Three statements, each with its own snapshot, none locking a job row: (1) insert the missing
-- jobs, ON CONFLICT DO NOTHING (which takes no lock on the live job it meets), in store id
-- order, so two ticks wait for each other at the first store they share and never deadlock;
-- (2) record the tick for every store; (3) insert again for a store whose job ended between (1)
-- and (2) without seeing the tick (it was not committed yet). A job still running after (2)
-- sees the tick when it finishes.
-- The tick's jobs write no job.enqueued event: with a thousand stores that would be 288,000
-- events a day kept for 180 days for mail that mostly is not there; the job row and
-- mailbox_ticks record the tick, and a fetch that finds nothing leaves nothing (finish_fetch_job).
-- Returns {"stores": active stores considered, "enqueued": new jobs, "rerun": stores whose
-- running job will be followed at once, "job_ids": [new job ids]}.
create or replace function public.enqueue_fetch_jobs(
  p_store_ids uuid[] default null,
  p_priority int default 10
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
    v_stores uuid[];
    v_max int := (public.job_retry_policy('fetch_mailbox')).max_attempts;
    v_ids uuid[];
    v_new uuid[] := '{}';
    v_rerun int := 0;
begin
    select coalesce(array_agg(s.id order by s.id), '{}') into v_stores
    from public.stores s
    where s.active and (p_store_ids is null or s.id = any (p_store_ids));

    for v_pass in 1 .. 2 loop
        with inserted as (
            insert into public.job_queue (job_type, payload, store_id, priority, max_attempts)
            select 'fetch_mailbox', '{}'::jsonb, s.id, coalesce(p_priority, 10), v_max
            from unnest(v_stores) s (id)
            order by s.id
            on conflict (store_id)
                where job_type = 'fetch_mailbox' and status in ('pending', 'processing')
            do nothing
            returning id
        )
        select coalesce(array_agg(i.id), '{}') into v_ids from inserted i;
        v_new := v_new || v_ids;
        exit when v_pass = 2;

        insert into public.mailbox_ticks as t (store_id, ticked_at)
        select s.id, now() from unnest(v_stores) s (id) order by s.id
        on conflict (store_id) do update set ticked_at = excluded.ticked_at;
        select count(*)::int into v_rerun
        from public.job_queue q
        where q.job_type = 'fetch_mailbox' and q.status = 'processing'
          and q.store_id = any (v_stores);
    end loop;

    return jsonb_build_object('stores', cardinality(v_stores), 'enqueued', cardinality(v_new),
                              'rerun', v_rerun, 'job_ids', to_jsonb(v_new));
end;
$$;

-- How a fetch job ends when it did its work: completed (as complete_job does, with the run's
-- summary), and, when the mailbox still holds mail (p_more: the fetch stopped at its per-job
-- bound) or a tick came no earlier than the job was claimed (mailbox_ticks), the store's next
-- fetch job is enqueued at once, due now, in the same transaction: the backlog is drained job by
-- job, each a bounded piece of work that any worker may claim, and the mailbox is never without
-- its job in between. A fetch that found nothing to do (p_idle: no message, no baseline, no
-- UIDVALIDITY change) is deleted instead of completed: no row kept for a week, no job.completed
-- event kept for 180 days, for every store every interval. Returns {"completed": bool,
-- "follow_up": job id or null, "reason": 'backlog' | 'rerun' | null, "kept": bool}; nothing
-- happens when the caller no longer holds the job.
create or replace function public.finish_fetch_job(
  p_job_id uuid,
  p_worker_id text,
  p_result jsonb,
  p_more boolean default false,
  p_idle boolean default false
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
    v_job public.job_queue;
    v_reason text;
    v_follow_up uuid;
begin
    if p_idle and not p_more then
        delete from public.job_queue q
        where q.id = p_job_id and q.status = 'processing' and q.locked_by = p_worker_id
        returning q.* into v_job;
        if not found then
            return jsonb_build_object('completed', false, 'follow_up', null, 'reason', null,
                                      'kept', false);
        end if;
    else
        if not public.complete_job(p_job_id, p_worker_id, p_result) then
            return jsonb_build_object('completed', false, 'follow_up', null, 'reason', null,
                                      'kept', false);
        end if;
        select * into v_job from public.job_queue q where q.id = p_job_id;
    end if;
    v_reason := case
        when p_more then 'backlog'
        -- claimed no later than the tick: its read may predate it (same instant counts)
        when exists (select 1 from public.mailbox_ticks t
                     where t.store_id = v_job.store_id and t.ticked_at >= v_job.started_at)
            then 'rerun'
    end;
    if v_reason is null or v_job.job_type <> 'fetch_mailbox' then
        return jsonb_build_object('completed', true, 'follow_up', null, 'reason', null,
                                  'kept', not p_idle);
    end if;
    insert into public.job_queue (job_type, payload, store_id, priority, max_attempts)
    values ('fetch_mailbox', '{}'::jsonb, v_job.store_id, v_job.priority,
            (public.job_retry_policy('fetch_mailbox')).max_attempts)
    on conflict (store_id)
        where job_type = 'fetch_mailbox' and status in ('pending', 'processing')
    do nothing
    returning id into v_follow_up;
    if v_follow_up is not null then
        insert into public.events (store_id, job_id, event_type, detail)
        values (v_job.store_id, v_follow_up, 'job.enqueued',
                jsonb_build_object('job_type', 'fetch_mailbox', 'priority', v_job.priority,
                                   'run_at', now(), 'reason', v_reason,
                                   'after_job', p_job_id));
    end if;
    return jsonb_build_object('completed', true, 'follow_up', v_follow_up, 'reason', v_reason,
                              'kept', not (p_idle and not p_more));
end;
$$;

revoke all on function public.enqueue_fetch_jobs(uuid[], int) from public, anon, authenticated;
grant execute on function public.enqueue_fetch_jobs(uuid[], int) to service_role;
revoke all on function public.finish_fetch_job(uuid, text, jsonb, boolean, boolean)
  from public, anon, authenticated;
grant execute on function public.finish_fetch_job(uuid, text, jsonb, boolean, boolean)
  to service_role;

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

-- One fetch job per active store (or per store of p_store_ids that is active), unless the store
-- already has one: a pending one will read the mailbox anyway; a running one may have read it
-- before this call, so it is marked 'rerun' and finish_fetch_job enqueues the store's next fetch
-- as soon as it ends. Every tick therefore leads to a fetch that starts after it.
--
-- Priority (p_priority, 10 by default; emails are 0): fetch jobs and email jobs are claimed by
-- separate slots of a worker (worker/process.py lanes), so neither can starve the other; the
-- priority only puts fetch jobs at the head of the due index, where the fetch lane's claim
-- finds them at once instead of reading past the emails waiting behind them.
--
-- Concurrent calls are safe: an insert that meets another call's uncommitted job for the same
-- store waits for it and then does nothing (or marks it); rows are inserted in store id order, so
-- two calls wait for each other rather than deadlock.
-- Returns {"stores": active stores considered, "enqueued": new jobs, "rerun": running jobs
-- marked, "job_ids": [new job ids]}.
create or replace function public.enqueue_fetch_jobs(
  p_store_ids uuid[] default null,
  p_priority int default 10
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
    v_result jsonb;
begin
    with stores as (
        select s.id
        from public.stores s
        where s.active and (p_store_ids is null or s.id = any (p_store_ids))
    ), policy as (
        select (public.job_retry_policy('fetch_mailbox')).max_attempts
    ), written as (
        insert into public.job_queue as q (job_type, payload, store_id, priority, max_attempts)
        select 'fetch_mailbox', '{}'::jsonb, s.id, coalesce(p_priority, 10), p.max_attempts
        from stores s cross join policy p
        order by s.id
        on conflict (store_id)
            where job_type = 'fetch_mailbox' and status in ('pending', 'processing')
        do update set payload = q.payload || '{"rerun": true}'::jsonb, updated_at = now()
            where q.status = 'processing'
        -- a new row is pending; a conflicting row is returned only when it was marked
        returning q.id, q.store_id, q.status, q.priority, q.next_retry_at
    ), logged as (
        insert into public.events (store_id, job_id, event_type, detail)
        select w.store_id, w.id, 'job.enqueued',
               jsonb_build_object('job_type', 'fetch_mailbox', 'priority', w.priority,
                                  'run_at', w.next_retry_at, 'reason', 'interval')
        from written w
        where w.status = 'pending'
    )
    select jsonb_build_object(
               'stores', (select count(*) from stores),
               'enqueued', count(*) filter (where w.status = 'pending'),
               'rerun', count(*) filter (where w.status = 'processing'),
               'job_ids', coalesce(jsonb_agg(w.id) filter (where w.status = 'pending'),
                                   '[]'::jsonb))
    into v_result
    from written w;
    return v_result;
end;
$$;

-- How a fetch job ends when it did its work: completed (as complete_job does, with the run's
-- summary), and, when the mailbox still holds mail (p_more: the fetch stopped at its per-job
-- bound) or an interval's tick came while it ran (payload 'rerun'), the store's next fetch job is
-- enqueued at once, due now, in the same transaction: the backlog is drained job by job, each a
-- bounded piece of work that any worker may claim, and the mailbox is never without its job in
-- between. Returns {"completed": bool, "follow_up": job id or null, "reason": 'backlog' |
-- 'rerun' | null}; nothing happens when the caller no longer holds the job.
create or replace function public.finish_fetch_job(
  p_job_id uuid,
  p_worker_id text,
  p_result jsonb,
  p_more boolean default false
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
    if not public.complete_job(p_job_id, p_worker_id, p_result) then
        return jsonb_build_object('completed', false, 'follow_up', null, 'reason', null);
    end if;
    -- Read after the completion: the row is locked by it, so a tick's 'rerun' mark is either
    -- already in it or is made after this commits, against the follow-up (or a new job).
    select * into v_job from public.job_queue q where q.id = p_job_id;
    v_reason := case
        when p_more then 'backlog'
        when coalesce((v_job.payload ->> 'rerun')::boolean, false) then 'rerun'
    end;
    if v_reason is null or v_job.job_type <> 'fetch_mailbox' then
        return jsonb_build_object('completed', true, 'follow_up', null, 'reason', null);
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
    return jsonb_build_object('completed', true, 'follow_up', v_follow_up, 'reason', v_reason);
end;
$$;

revoke all on function public.enqueue_fetch_jobs(uuid[], int) from public, anon, authenticated;
grant execute on function public.enqueue_fetch_jobs(uuid[], int) to service_role;
revoke all on function public.finish_fetch_job(uuid, text, jsonb, boolean)
  from public, anon, authenticated;
grant execute on function public.finish_fetch_job(uuid, text, jsonb, boolean) to service_role;

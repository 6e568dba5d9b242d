-- Fetching as jobs: enqueue_fetch_jobs gives each active store one live fetch job, never two;
-- finish_fetch_job completes a job and enqueues the store's next fetch when mail is waiting.
-- Concurrent enqueues from separate sessions are proven in tests/integration/test_fetch_jobs.py.
-- Runs as service_role. now() is fixed inside the transaction.
begin;
select plan(37);

set local role service_role;

-- Three stores: two active, one inactive.
create temp table s on commit drop as
select public.admin_create_store(jsonb_build_object(
           'name', 'Fetch job store ' || n, 'support_email', 'support' || n || '@fetchjobs.test',
           'imap_host', '127.0.0.1', 'imap_port', 993, 'imap_user', 'u' || n, 'imap_tls', 'ssl',
           'smtp_host', '127.0.0.1', 'smtp_port', 465, 'smtp_user', 'u' || n, 'smtp_tls', 'ssl'),
       '{"imap_password": "x", "smtp_password": "y"}'::jsonb) as id, n
from generate_series(1, 3) n;
update public.stores set active = false where id = (select id from s where n = 3);
create temp table mine on commit drop as select array_agg(id order by n) as ids from s;

create temp table first_tick on commit drop as
select public.enqueue_fetch_jobs((select ids from mine)) as r;

select is((select (r ->> 'stores')::int from first_tick), 2, 'only active stores are considered');
select is((select (r ->> 'enqueued')::int from first_tick), 2, 'one job per active store');
select is((select jsonb_array_length(r -> 'job_ids') from first_tick), 2, 'their ids are returned');
select is((select count(*)::int from public.job_queue q, mine m
           where q.store_id = any (m.ids) and q.job_type = 'fetch_mailbox'), 2,
          'no job for the inactive store');
select is((select array_agg(distinct (q.status, q.priority, q.max_attempts, q.conversation_id
                                      is null)::text)
           from public.job_queue q, mine m where q.store_id = any (m.ids)),
          array['(pending,10,4,t)'],
          'pending, priority 10, the fetch policy''s 4 attempts, no conversation');
select is((select count(*)::int from public.events e, first_tick f
           where e.job_id in (select (jsonb_array_elements_text(f.r -> 'job_ids'))::uuid)),
          0, 'the tick''s jobs write no event (the job row and mailbox_ticks record it)');

-- A second tick while the jobs are pending changes nothing.
select is(public.enqueue_fetch_jobs((select ids from mine)) - 'job_ids',
          '{"stores": 2, "enqueued": 0, "rerun": 0}'::jsonb,
          'a second tick adds nothing while a job is pending');
select is((select count(*)::int from public.job_queue q, mine m
           where q.store_id = any (m.ids)), 2, 'still one job per store');

-- The index itself refuses a second live fetch job, whoever writes it.
select throws_ok(
    format($$ insert into public.job_queue (job_type, store_id) values ('fetch_mailbox', %L) $$,
           (select id from s where n = 1)),
    '23505', null, 'a second live fetch job of a store is refused by the index');
select lives_ok(
    format($$ insert into public.job_queue (job_type, store_id) values ('process_email', %L) $$,
           (select id from s where n = 1)),
    'other job types of the store are not limited');
delete from public.job_queue q using mine m
 where q.store_id = any (m.ids) and q.job_type = 'process_email';

-- The retry policy: 30 s doubling, capped at 240 s (never beyond the 5-minute interval).
select is((select (p.base_seconds, p.cap_seconds, p.max_attempts)::text
           from public.job_retry_policy('fetch_mailbox') p), '(30,240,4)',
          'fetch_mailbox has its own retry policy');

-- Claim both jobs (dequeue_jobs, as any worker does).
create temp table claimed on commit drop as
select * from public.dequeue_jobs('w1', 10, 60, array['fetch_mailbox']);
create temp table j on commit drop as
select c.id, s.n from claimed c join s on s.id = c.store_id;
select is((select count(*)::int from j), 2, 'fetch jobs are claimed like any other job');

-- A tick while they run adds no second job; it is recorded for the stores instead.
select is(public.enqueue_fetch_jobs((select ids from mine)) - 'job_ids',
          '{"stores": 2, "enqueued": 0, "rerun": 2}'::jsonb,
          'a tick during a running fetch adds nothing and counts it for a rerun');
select is((select count(*)::int from public.mailbox_ticks t, mine m
           where t.store_id = any (m.ids) and t.ticked_at = now()), 2,
          'the tick is recorded for each active store');
select is((select payload from public.job_queue where id = (select id from j where n = 1)),
          '{}'::jsonb, 'the running job itself is not touched (no lock on it)');

-- Finishing store 1's: completed; claimed no later than the tick, it gets its next fetch at
-- once (here the tick and the claim share this transaction's now()).
create temp table fin1 on commit drop as
select public.finish_fetch_job((select id from j where n = 1), 'w1', '{"outcome": "ok"}', false)
       as r;
select is((select r ->> 'completed' from fin1), 'true', 'the holder completes the job');
select is((select r ->> 'reason' from fin1), 'rerun',
          'a job claimed no later than a tick gets a follow-up');
select is((select (status, result ->> 'outcome')::text from public.job_queue
           where id = (select id from j where n = 1)), '(completed,ok)',
          'completed with its summary');
select is((select (q.status, q.next_retry_at = now(), q.priority)::text
           from public.job_queue q, fin1 f where q.id = (f.r ->> 'follow_up')::uuid),
          '(pending,t,10)', 'the follow-up is pending, due now, at the same priority');
select is((select e.detail ->> 'after_job' from public.events e, fin1 f
           where e.job_id = (f.r ->> 'follow_up')::uuid and e.event_type = 'job.enqueued'),
          (select id::text from j where n = 1), 'its event names the job it follows');

-- Store 2's fetch fails: retried later, and it stays the store's one live job.
select is(public.fail_job((select id from j where n = 2), 'w1', 'imap: login failed',
                          'transient', null),
          'pending', 'a failing fetch is retried');
select is(public.enqueue_fetch_jobs((select ids from mine)) - 'job_ids',
          '{"stores": 2, "enqueued": 0, "rerun": 0}'::jsonb,
          'a tick adds nothing while a follow-up or a retry waits');

-- A backlog: p_more enqueues the next fetch; without it, and claimed after the last tick,
-- nothing follows.
create temp table c2 on commit drop as
select * from public.dequeue_jobs('w2', 10, 60, array['fetch_mailbox']);
select is((select array_agg(n) from c2 join s on s.id = c2.store_id), array[1],
          'the follow-up is due at once; the retry is not');
select is(public.finish_fetch_job((select id from c2), 'w2', '{"outcome": "ok"}', true)
            ->> 'reason',
          'backlog', 'a fetch that left mail waiting gets a follow-up');
create temp table c3 on commit drop as
select * from public.dequeue_jobs('w3', 10, 60, array['fetch_mailbox']);
-- From here on, the last tick came before the claims.
update public.mailbox_ticks set ticked_at = now() - interval '1 minute';
select is(public.finish_fetch_job((select id from c3), 'someone-else', '{}', true),
          '{"completed": false, "follow_up": null, "reason": null, "kept": false}'::jsonb,
          'another worker cannot finish it, nor enqueue a follow-up');
select is(public.finish_fetch_job((select id from c3), 'w3', '{"outcome": "ok"}', false),
          '{"completed": true, "follow_up": null, "reason": null, "kept": true}'::jsonb,
          'a drained mailbox claimed after the last tick ends there');
select is((select count(*)::int from public.job_queue q
           where q.store_id = (select id from s where n = 1)
             and q.status in ('pending', 'processing')),
          0, 'store 1 has no live fetch job now');
select is(public.finish_fetch_job((select id from c3), 'w3', '{}', true),
          '{"completed": false, "follow_up": null, "reason": null, "kept": false}'::jsonb,
          'finishing a job no longer held does nothing, not even a follow-up');

-- A fetch that found nothing is deleted, not completed: no row, no event.
select is((public.enqueue_fetch_jobs((select array[id] from s where n = 1)) ->> 'enqueued')::int,
          1, 'store 1 gets its next tick''s job');
create temp table c5 on commit drop as
select * from public.dequeue_jobs('w5', 10, 60, array['fetch_mailbox'])
where store_id = (select id from s where n = 1);
update public.mailbox_ticks set ticked_at = now() - interval '1 minute';
select is(public.finish_fetch_job((select id from c5), 'w5', '{"outcome": "ok"}', false, true),
          '{"completed": true, "follow_up": null, "reason": null, "kept": false}'::jsonb,
          'an idle fetch ends without being kept');
select is((select count(*)::int from public.job_queue where id = (select id from c5)), 0,
          'its row is gone');
select is((select count(*)::int from public.events where job_id = (select id from c5)), 0,
          'and it wrote no event');

-- A dead-lettered fetch job is not live: the next tick enqueues a fresh one.
update public.job_queue set status = 'dead_letter', dead_lettered_at = now()
 where id = (select id from j where n = 2);
select is(public.enqueue_fetch_jobs((select ids from mine)) - 'job_ids',
          '{"stores": 2, "enqueued": 2, "rerun": 0}'::jsonb,
          'stores with no live job (completed, dead-lettered) get a new one');

-- Requeueing a dead fetch job while its store has a live one brings nothing back (the live one
-- reads the same mailbox); once the store has none, it is requeued like any job.
select is(public.requeue_dlq_job((select id from j where n = 2)), false,
          'a dead fetch job is not requeued beside a live one');
select is((select status from public.job_queue where id = (select id from j where n = 2)),
          'dead_letter', 'it stays in the dead-letter queue');
-- The console says why (an operator's requeue).
create temp table dead2 on commit drop as select id from j where n = 2;
grant select on dead2 to authenticated;
set local role authenticated;
set local request.jwt.claims to '{"sub": "00000000-0000-4000-8000-0000000000f1",
  "role": "authenticated", "app_metadata": {"operator": true}}';
select throws_ok(format('select public.console_requeue_dead_letter(%L)',
                        (select id from dead2)),
                 'PT409', format('job %s: its store already has a fetch job waiting or running',
                                 (select id from dead2)),
                 'the console refuses it with the reason');
set local role service_role;
delete from public.job_queue q using s
 where q.store_id = s.id and s.n = 2 and q.status = 'pending';
select is(public.requeue_dlq_job((select id from j where n = 2)), true,
          'without a live fetch job it is requeued');

select * from finish();
rollback;

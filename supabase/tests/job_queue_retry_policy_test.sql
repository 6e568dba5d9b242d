-- Retry policy: the backoff formula (retry_delay) alone, the per-job-type policy, and fail_job
-- and enqueue_job(s) using it. Runs as service_role; now() is fixed inside the transaction.
begin;
select plan(28);

create function pg_temp.job(p_key text) returns public.job_queue language sql as $$
    select q.* from public.job_queue q where q.idempotency_key = p_key
$$;
grant execute on all functions in schema pg_temp to service_role;

-- retry_delay: pure ------------------------------------------------------------------------------
select is(public.retry_delay(1, 120, 86400), 120::double precision,
          'the first retry waits the base');
select is(array[public.retry_delay(2, 120, 86400), public.retry_delay(3, 120, 86400),
                public.retry_delay(4, 120, 86400)],
          array[240, 480, 960]::double precision[], 'and doubles with every attempt');
select is(public.retry_delay(10, 120, 86400), 61440::double precision, 'below the cap it grows');
select is(public.retry_delay(11, 120, 86400), 86400::double precision, 'then is capped');
select is(public.retry_delay(2147483647, 120, 86400), 86400::double precision,
          'any attempt count stays capped (no overflow)');
select is(public.retry_delay(0, 120, 86400), 120::double precision,
          'an attempt count below 1 counts as the first');
select is(public.retry_delay(2, 120, 86400, 1000), 1000::double precision,
          'never sooner than the server''s Retry-After');
select is(public.retry_delay(4, 120, 86400, 10), 960::double precision,
          'a shorter Retry-After does not shorten the backoff');
select is(public.retry_delay(1, 120, 86400, 999999999), 86400::double precision,
          'the cap also bounds a hostile Retry-After');
select is(round(public.retry_delay(1, 120, 86400, null, 0.1)::numeric, 6), 132.0,
          'jitter stretches the delay by its fraction');
select is(round(public.retry_delay(11, 120, 86400, null, 0.1)::numeric, 6), 95040.0,
          'after the cap');
select is((select p.provolatile from pg_catalog.pg_proc p
           where p.oid = 'public.retry_delay(int, int, int, int, double precision)'::regprocedure),
          'i'::"char", 'retry_delay is immutable: the same inputs, the same delay');

-- the policy of a job type -----------------------------------------------------------------------
set local role service_role;
select is(public.job_retry_policy('t_no_policy'),
          row('t_no_policy', 120, 86400, 5)::public.job_retry_policies,
          'a type without a row: first retry after 2 minutes, doubling, capped at a day, 5 attempts');
insert into public.job_retry_policies (job_type, base_seconds, cap_seconds, max_attempts)
values ('t_fast', 10, 15, 2);
select is(public.job_retry_policy('t_fast'),
          row('t_fast', 10, 15, 2)::public.job_retry_policies, 'a type with a row: its row');
select throws_ok($$ insert into public.job_retry_policies values ('t_bad', 60, 30, 3) $$,
                 '23514', null, 'a cap below the base is rejected');

-- enqueue takes max_attempts from the policy unless given --------------------------------------
select public.enqueue_job('t_fast', '{}', 'rp-1');
select public.enqueue_job('t_fast', '{}', 'rp-2', null, null, 0, now(), 7);
select public.enqueue_job('t_no_policy', '{}', 'rp-3');
select is(array[(pg_temp.job('rp-1')).max_attempts, (pg_temp.job('rp-2')).max_attempts,
                (pg_temp.job('rp-3')).max_attempts],
          array[2, 7, 5], 'enqueue_job: the policy''s attempts, the caller''s, the default');
select public.enqueue_jobs($$[{"job_type": "t_fast", "idempotency_key": "rp-b1"},
                              {"job_type": "t_fast", "idempotency_key": "rp-b2", "max_attempts": 4},
                              {"job_type": "t_no_policy", "idempotency_key": "rp-b3"}]$$);
select is(array[(pg_temp.job('rp-b1')).max_attempts, (pg_temp.job('rp-b2')).max_attempts,
                (pg_temp.job('rp-b3')).max_attempts],
          array[2, 4, 5], 'enqueue_jobs: the same per element');

-- fail_job retries by the job type's policy ----------------------------------------------------
-- Jobs enqueued in one transaction share next_retry_at and may share a UUIDv7 millisecond, so
-- their claim order would be a coin toss: each job below is made due first in its turn.
reset role;
update public.job_queue set next_retry_at = now() - interval '10 minutes'
where idempotency_key = 'rp-1';
update public.job_queue set next_retry_at = now() - interval '5 minutes'
where idempotency_key in ('rp-2', 'rp-3');
set local role service_role;
select public.dequeue_jobs('w1', 1, 60, array['t_fast']);
select is(public.fail_job((pg_temp.job('rp-1')).id, 'w1', 'busy'), 'pending',
          'a transient failure with attempts left is retried');
select ok((pg_temp.job('rp-1')).next_retry_at between now() + interval '10 s'
                                               and now() + interval '11 s',
          'after the policy''s base (10 s) plus at most 10% jitter, not 2 minutes');
select ok((select (e.detail ->> 'delay_seconds')::numeric between 10 and 11 from public.events e
           where e.job_id = (pg_temp.job('rp-1')).id and e.event_type = 'job.retry_scheduled'),
          'the retry event carries that delay');
reset role;
update public.job_queue set next_retry_at = now() - interval '10 minutes'
where idempotency_key = 'rp-1';
set local role service_role;
select public.dequeue_jobs('w1', 1, 60, array['t_fast']);
select is(public.fail_job((pg_temp.job('rp-1')).id, 'w1', 'busy'), 'dead_letter',
          'the policy''s last attempt dead-letters');

select public.dequeue_jobs('w1', 1, 60, array['t_fast']);  -- rp-2: 7 attempts
select is(public.fail_job((pg_temp.job('rp-2')).id, 'w1', 'busy', 'transient', 3600), 'pending',
          'retried');
select ok((pg_temp.job('rp-2')).next_retry_at between now() + interval '15 s'
                                               and now() + interval '16.5 s',
          'a Retry-After above the policy''s cap waits the cap');

select public.dequeue_jobs('w1', 1, 60, array['t_no_policy']);  -- rp-3: the defaults
select is(public.fail_job((pg_temp.job('rp-3')).id, 'w1', 'busy'), 'pending', 'retried');
select ok((pg_temp.job('rp-3')).next_retry_at between now() + interval '120 s'
                                               and now() + interval '132 s',
          'without a policy row: 2 minutes plus at most 10% jitter, as before policies');

-- who may read or change policies ----------------------------------------------------------------
reset role;
select ok((select c.relrowsecurity from pg_catalog.pg_class c
           where c.oid = 'public.job_retry_policies'::regclass), 'RLS is on');
select ok(not has_table_privilege('anon', 'public.job_retry_policies', 'select')
          and not has_table_privilege('authenticated', 'public.job_retry_policies', 'select'),
          'neither anon nor authenticated can read policies');
select ok(not has_function_privilege('anon', 'public.job_retry_policy(text)', 'execute')
          and not has_function_privilege('authenticated',
                                         'public.retry_delay(int, int, int, int, double precision)',
                                         'execute'),
          'nor call the policy functions');

select * from finish();
rollback;

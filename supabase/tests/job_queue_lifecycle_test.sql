-- Queue core: every transition of a job and the event it writes.
-- Runs as service_role, the only role the worker uses. now() is fixed inside the transaction,
-- so times are compared exactly; "expired" leases are made by moving locked_until back.
begin;
select plan(79);

create function pg_temp.job(p_key text) returns public.job_queue language sql as $$
    select q.* from public.job_queue q where q.idempotency_key = p_key
$$;
create function pg_temp.events_of(p_key text) returns text[] language sql as $$
    select coalesce(array_agg(e.event_type order by e.id), '{}') from public.events e
    where e.job_id = (select q.id from public.job_queue q where q.idempotency_key = p_key)
$$;
grant execute on all functions in schema pg_temp to service_role;

set local role service_role;

-- enqueue ---------------------------------------------------------------------------------------
select isnt(public.enqueue_job('t_enq', '{"n": 1}', 'enq-1', null, null, 3), null,
            'enqueue returns an id');
select is(public.enqueue_job('t_enq', '{"n": 2}', 'enq-1'), (pg_temp.job('enq-1')).id,
          'the same idempotency key returns the first job''s id');
select is((select count(*)::int from public.job_queue where job_type = 't_enq'), 1,
          'and creates nothing');
select is((pg_temp.job('enq-1')).payload, '{"n": 1}'::jsonb, 'the first payload is kept');
select is((pg_temp.job('enq-1')).priority, 3, 'priority is stored');
select is((pg_temp.job('enq-1')).status, 'pending', 'a new job is pending');
select is((pg_temp.job('enq-1')).next_retry_at, now(), 'due at run_at (default now)');
select is(pg_temp.events_of('enq-1'), array['job.enqueued'], 'one job.enqueued event');
select isnt(public.enqueue_job('t_enq', '{}'), public.enqueue_job('t_enq', '{}'),
            'without a key every call is a new job');
select throws_ok($$ select public.enqueue_job('t_enq', '{}', null, null, null, 0, now(), 0) $$,
                 '22023', null, 'max_attempts below 1 is rejected');
select throws_ok($$ select public.enqueue_job('', '{}') $$, '22023', null,
                 'an empty job type is rejected');

-- claim: priority, age, due time, job types ----------------------------------------------------
select public.enqueue_job('t_order', '{}', 'ord-low-old', null, null, 0, now() - interval '2 min');
select public.enqueue_job('t_order', '{}', 'ord-low-new', null, null, 0, now() - interval '1 min');
select public.enqueue_job('t_order', '{}', 'ord-high', null, null, 5, now());
select public.enqueue_job('t_order', '{}', 'ord-future', null, null, 9, now() + interval '1 hour');
select is(
    array(select q.idempotency_key from public.dequeue_jobs('w1', 10, 60, array['t_order']) q),
    array['ord-high', 'ord-low-old', 'ord-low-new'],
    'claims due jobs only, highest priority first, then oldest');
select is(array(select q.id from public.dequeue_jobs('w1', 10, 60, array['t_order']) q), '{}',
          'a claimed job is not handed out again');
select is((pg_temp.job('ord-future')).status, 'pending', 'a job not yet due stays pending');

select public.enqueue_job('t_fields', '{}', 'f-1');
select is(array(select q.id from public.dequeue_jobs('w1', 10, 60, array['t_other']) q), '{}',
          'p_job_types restricts the claim');
select is((select q.status from public.dequeue_jobs('w1', 10, 120, array['t_fields']) q),
          'processing', 'claim returns the claimed row');
select is((pg_temp.job('f-1')).locked_by, 'w1', 'locked_by is the worker');
select is((pg_temp.job('f-1')).locked_until, now() + interval '120 seconds', 'lease length');
select is((pg_temp.job('f-1')).started_at, now(), 'started_at set');
select is((pg_temp.job('f-1')).attempt_count, 1, 'a claim spends an attempt');
select is(pg_temp.events_of('f-1'), array['job.enqueued'],
          'the claim writes no event: the row records it (who, when, which attempt)');
select throws_ok($$ select * from public.dequeue_jobs('', 1) $$, '22023', null,
                 'a worker id is required');

-- conversation exclusivity -----------------------------------------------------------------------
select public.enqueue_job('t_conv', '{}', 'c1', null, '00000000-0000-0000-0000-0000000000c1', 0,
                          now() - interval '3 min');
select public.enqueue_job('t_conv', '{}', 'c2', null, '00000000-0000-0000-0000-0000000000c1', 0,
                          now() - interval '2 min');
select public.enqueue_job('t_conv', '{}', 'd1', null, '00000000-0000-0000-0000-0000000000d1', 0,
                          now() - interval '1 min');
select public.enqueue_job('t_conv', '{}', 'n1', null, null, 0, now() - interval '1 min');
select public.enqueue_job('t_conv', '{}', 'n2', null, null, 0, now() - interval '1 min');
select set_eq(
    $$ select q.idempotency_key from public.dequeue_jobs('w1', 10, 60, array['t_conv']) q $$,
    array['c1', 'd1', 'n1', 'n2'],
    'one job per conversation per batch; jobs without a conversation are not limited');
select is(array(select q.id from public.dequeue_jobs('w2', 10, 60, array['t_conv']) q), '{}',
          'no job of a conversation with a job in flight is handed out');
select ok(public.complete_job((pg_temp.job('c1')).id, 'w1'), 'c1 completes');
select is(array(select q.idempotency_key from public.dequeue_jobs('w2', 10, 60, array['t_conv']) q),
          array['c2'], 'the next job of the conversation is claimable once the first is done');
select ok(public.try_lock_conversation('00000000-0000-0000-0000-0000000000e1'),
          'try_lock_conversation takes a free lock');
select ok(public.try_lock_conversation('00000000-0000-0000-0000-0000000000e1'),
          'and is re-entrant within the transaction that holds it');

-- extend_lease -----------------------------------------------------------------------------------
select public.enqueue_job('t_lease', '{}', 'l-1');
select public.dequeue_jobs('w1', 1, 60, array['t_lease']);
select is(public.extend_lease('w2', array[(pg_temp.job('l-1')).id], 600), 0,
          'another worker cannot extend the lease');
select is((pg_temp.job('l-1')).locked_until, now() + interval '60 seconds', 'lease unchanged');
select is(public.extend_lease('w1', array[(pg_temp.job('l-1')).id], 600), 1,
          'the holder extends its lease');
select is((pg_temp.job('l-1')).locked_until, now() + interval '600 seconds', 'lease extended');

-- complete_job / complete_jobs -------------------------------------------------------------------
select public.enqueue_job('t_done', '{}', 'done-1');
select public.dequeue_jobs('w1', 1, 60, array['t_done']);
select is(public.complete_job((pg_temp.job('done-1')).id, 'w2', '{"x": 1}'), false,
          'complete_job by a non-holder returns false');
select is((pg_temp.job('done-1')).status, 'processing', 'and changes nothing');
select is(public.complete_job((pg_temp.job('done-1')).id, 'w1', '{"ok": true}'), true,
          'the holder completes');
select is((pg_temp.job('done-1')).status, 'completed', 'status completed');
select is((pg_temp.job('done-1')).result, '{"ok": true}'::jsonb, 'result stored');
select is((pg_temp.job('done-1')).completed_at, now(), 'completed_at set');
select is(pg_temp.events_of('done-1'), array['job.enqueued', 'job.completed'],
          'job.completed event');
select is(public.complete_job((pg_temp.job('done-1')).id, 'w1'), false,
          'completing twice returns false');

select public.enqueue_job('t_batch', '{}', 'b-1', null, null, 2);
select public.enqueue_job('t_batch', '{}', 'b-2', null, null, 1);
select public.enqueue_job('t_batch', '{}', 'b-3', null, null, 0);
select public.dequeue_jobs('w1', 2, 60, array['t_batch']);
select public.dequeue_jobs('w2', 1, 60, array['t_batch']);
select is(public.complete_jobs('w1',
              array[(pg_temp.job('b-2')).id, (pg_temp.job('b-3')).id, (pg_temp.job('b-1')).id],
              '[{"r": 2}, {"r": 3}, {"r": 1}]'),
          2, 'complete_jobs completes only the jobs the worker holds');
select is((pg_temp.job('b-1')).result, '{"r": 1}'::jsonb, 'results align with ids (1)');
select is((pg_temp.job('b-2')).result, '{"r": 2}'::jsonb, 'results align with ids (2)');
select is((pg_temp.job('b-3')).status, 'processing', 'another worker''s job is untouched');
select is(public.complete_jobs('w2', array[(pg_temp.job('b-3')).id]), 1,
          'complete_jobs without results');
select is((select count(*)::int from public.events e join public.job_queue q on q.id = e.job_id
           where q.job_type = 't_batch' and e.event_type = 'job.completed'), 3,
          'one job.completed event per completed job');

-- fail_job ---------------------------------------------------------------------------------------
select public.enqueue_job('t_fail', '{}', 'fail-1', null, null, 0, now(), 3);
select public.dequeue_jobs('w1', 1, 60, array['t_fail']);
select is(public.fail_job((pg_temp.job('fail-1')).id, 'w2', 'nope'), null,
          'fail_job by a non-holder returns null');
select is((pg_temp.job('fail-1')).status, 'processing', 'and changes nothing');
select is(public.fail_job((pg_temp.job('fail-1')).id, 'w1', 'timeout'), 'pending',
          'a transient failure with attempts left schedules a retry');
select ok((pg_temp.job('fail-1')).next_retry_at between now() + interval '120 s'
                                                  and now() + interval '132 s',
          'first failure: 2 minutes plus at most 10% jitter');
select is(((pg_temp.job('fail-1')).last_error, (pg_temp.job('fail-1')).last_error_type,
           (pg_temp.job('fail-1')).last_error_at, (pg_temp.job('fail-1')).locked_by),
          ('timeout'::text, 'transient'::text, now(), null::text), 'error recorded, lock released');
select is(pg_temp.events_of('fail-1'),
          array['job.enqueued', 'job.retry_scheduled'], 'job.retry_scheduled event');
reset role;
update public.job_queue set next_retry_at = now() where idempotency_key = 'fail-1';
set local role service_role;
select public.dequeue_jobs('w1', 1, 60, array['t_fail']);
select is(public.fail_job((pg_temp.job('fail-1')).id, 'w1', 'slow down', 'transient', 1000),
          'pending', 'second failure');
select ok((pg_temp.job('fail-1')).next_retry_at between now() + interval '1000 s'
                                                  and now() + interval '1100 s',
          'never sooner than retry_after (which beats 2^2 minutes here)');
reset role;
update public.job_queue set next_retry_at = now() where idempotency_key = 'fail-1';
set local role service_role;
select public.dequeue_jobs('w1', 1, 60, array['t_fail']);
select is(public.fail_job((pg_temp.job('fail-1')).id, 'w1', 'still failing'), 'dead_letter',
          'a transient failure on the last attempt dead-letters');
select is(((pg_temp.job('fail-1')).status, (pg_temp.job('fail-1')).dead_lettered_at),
          ('dead_letter'::text, now()), 'dead-lettered now');
select is(pg_temp.events_of('fail-1'),
          array['job.enqueued', 'job.retry_scheduled', 'job.retry_scheduled',
                'job.dead_lettered'],
          'the full history is in events');
select is((select array_agg((e.detail ->> 'worker_id') || ':' || (e.detail ->> 'attempt')
                            order by e.id)
           from public.events e
           where e.job_id = (pg_temp.job('fail-1')).id and e.event_type <> 'job.enqueued'),
          array['w1:1', 'w1:2', 'w1:3'],
          'each attempt''s worker and number are on its outcome event');

select public.enqueue_job('t_fail', '{}', 'fail-perm');
select public.dequeue_jobs('w1', 1, 60, array['t_fail']);
select is(public.fail_job((pg_temp.job('fail-perm')).id, 'w1', 'bad address', 'permanent'),
          'dead_letter', 'a permanent failure dead-letters on the first attempt');
select is((pg_temp.job('fail-perm')).last_error_type, 'permanent', 'error type recorded');
select throws_ok($$ select public.fail_job(gen_random_uuid(), 'w1', 'x', 'sometimes') $$,
                 '22023', null, 'an unknown error type is rejected');

-- defer_job --------------------------------------------------------------------------------------
select public.enqueue_job('t_defer', '{}', 'def-1');
select public.dequeue_jobs('w1', 1, 60, array['t_defer']);
select is(public.defer_job((pg_temp.job('def-1')).id, 'w2', 30, 'circuit open'), false,
          'defer_job by a non-holder returns false');
select is(public.defer_job((pg_temp.job('def-1')).id, 'w1', 30, 'circuit open'), true,
          'the holder defers');
select is(((pg_temp.job('def-1')).status, (pg_temp.job('def-1')).attempt_count,
           (pg_temp.job('def-1')).next_retry_at),
          ('pending'::text, 0, now() + interval '30 seconds'),
          'back to pending later, without spending an attempt');
select is((select e.detail ->> 'reason' from public.events e
           where e.job_id = (pg_temp.job('def-1')).id and e.event_type = 'job.deferred'),
          'circuit open', 'job.deferred event with the reason');

-- requeue_dlq_job --------------------------------------------------------------------------------
select is(public.requeue_dlq_job((pg_temp.job('def-1')).id), false,
          'requeue of a job not in the DLQ returns false');
select is(public.requeue_dlq_job((pg_temp.job('fail-perm')).id, false), true,
          'requeue from the DLQ');
select is(((pg_temp.job('fail-perm')).status, (pg_temp.job('fail-perm')).attempt_count,
           (pg_temp.job('fail-perm')).next_retry_at, (pg_temp.job('fail-perm')).dead_lettered_at),
          ('pending'::text, 1, now(), null::timestamptz), 'pending now, attempts kept on request');
select is(public.requeue_dlq_job((pg_temp.job('fail-1')).id), true, 'requeue resetting attempts');
select is((pg_temp.job('fail-1')).attempt_count, 0, 'attempts reset by default');
select is((select count(*)::int from public.events e
           where e.job_id in ((pg_temp.job('fail-1')).id, (pg_temp.job('fail-perm')).id)
             and e.event_type = 'job.requeued'), 2, 'job.requeued events');

-- expired leases ---------------------------------------------------------------------------------
select public.enqueue_job('t_expire', '{}', 'exp-1', null, '00000000-0000-0000-0000-0000000000a1',
                          0, now(), 3);
select public.dequeue_jobs('w1', 1, 60, array['t_expire']);
reset role;
update public.job_queue set locked_until = now() - interval '1 second'
where idempotency_key = 'exp-1';
set local role service_role;
select is(array(select q.idempotency_key from public.dequeue_jobs('w2', 5, 60, array['t_expire']) q),
          array['exp-1'], 'an expired lease is reclaimed by another worker');
select is(((pg_temp.job('exp-1')).locked_by, (pg_temp.job('exp-1')).attempt_count),
          ('w2'::text, 2), 'now held by the new worker, a second attempt');
select is(public.complete_job((pg_temp.job('exp-1')).id, 'w1'), false,
          'the worker that lost its lease cannot complete');
select is(((pg_temp.job('exp-1')).status, (pg_temp.job('exp-1')).locked_by),
          ('processing'::text, 'w2'::text), 'and changed nothing');
select is(pg_temp.events_of('exp-1'),
          array['job.enqueued', 'job.lease_expired'],
          'job.lease_expired event (the new claim is on the row)');

select public.enqueue_job('t_expire', '{}', 'exp-last', null, null, 0, now(), 1);
select public.dequeue_jobs('w1', 1, 60, array['t_expire']);
reset role;
update public.job_queue set locked_until = now() - interval '1 second'
where idempotency_key = 'exp-last';
set local role service_role;
select is(array(select q.id from public.dequeue_jobs('w2', 5, 60, array['t_expire']) q), '{}',
          'an expired job with no attempts left is not handed out again');
select is((pg_temp.job('exp-last')).status, 'dead_letter', 'it goes to the dead-letter queue');
select is(pg_temp.events_of('exp-last'),
          array['job.enqueued', 'job.lease_expired', 'job.dead_lettered'],
          'lease_expired then dead_lettered events');

select * from finish();
rollback;

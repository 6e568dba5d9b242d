-- Queue core: enqueue_jobs, many jobs in one call with enqueue_job's semantics per element.
-- Runs as service_role. now() is fixed inside the transaction.
begin;
select plan(17);

set local role service_role;

create temp table batch1 on commit drop as
select public.enqueue_jobs($$[
    {"job_type": "t_batch", "payload": {"n": 1}, "idempotency_key": "b-1"},
    {"job_type": "t_batch"},
    {"job_type": "t_batch", "payload": {"n": 3}, "idempotency_key": "b-1"},
    {"job_type": "t_batch", "priority": 3, "max_attempts": 2, "run_at": "2030-01-01T00:00:00Z",
     "store_id": "7d3c1b9e-0000-4000-8000-000000000001",
     "conversation_id": "7d3c1b9e-0000-4000-8000-000000000002"}
]$$::jsonb) as ids;

select is((select cardinality(ids) from batch1), 4, 'one id per element, in input order');
select is((select ids[1] = ids[3] from batch1), true,
          'an element repeating an earlier key gets the same job');
select is((select count(distinct x)::int from batch1, unnest(ids) x), 3, 'three distinct jobs');
select is((select count(*)::int from public.job_queue where job_type = 't_batch'), 3,
          'the repeated key created nothing');
select is((select payload from public.job_queue where idempotency_key = 'b-1'), '{"n": 1}'::jsonb,
          'the first element with a key wins');
select is((select payload from public.job_queue q, batch1 b where q.id = b.ids[2]), '{}'::jsonb,
          'payload defaults to {}');
select is((select (q.status, q.priority, q.max_attempts, q.attempt_count)::text
           from public.job_queue q, batch1 b where q.id = b.ids[2]),
          '(pending,0,5,0)', 'defaults as enqueue_job: pending, priority 0, 5 attempts');
select is((select q.next_retry_at from public.job_queue q, batch1 b where q.id = b.ids[2]), now(),
          'due now by default');
select is((select (q.priority, q.max_attempts, q.next_retry_at, q.store_id,
                   q.conversation_id)::text
           from public.job_queue q, batch1 b where q.id = b.ids[4]),
          (3, 2, '2030-01-01T00:00:00Z'::timestamptz, '7d3c1b9e-0000-4000-8000-000000000001'::uuid,
           '7d3c1b9e-0000-4000-8000-000000000002'::uuid)::text,
          'every field of an element is stored');
select is((select count(*)::int from public.events e, batch1 b
           where e.job_id = any (b.ids) and e.event_type = 'job.enqueued'), 3,
          'one job.enqueued event per created job');
select is((select e.store_id from public.events e, batch1 b
           where e.job_id = b.ids[4] and e.event_type = 'job.enqueued'),
          '7d3c1b9e-0000-4000-8000-000000000001'::uuid, 'the event carries the store');

select is(public.enqueue_jobs('[{"job_type": "t_batch", "idempotency_key": "b-1"}]'),
          (select array[ids[1]] from batch1), 'a key from an earlier call returns that job');
select is(public.enqueue_job('t_batch', '{}', 'b-1'), (select ids[1] from batch1),
          'enqueue_job agrees with enqueue_jobs on keys');
select is(public.enqueue_jobs('[]'), '{}'::uuid[], 'an empty batch enqueues nothing');

select throws_ok($$ select public.enqueue_jobs('{"job_type": "t"}') $$, '22023', null,
                 'p_jobs must be an array');
select throws_ok($$ select public.enqueue_jobs('[{"job_type": "t"}, {"payload": {}}]') $$,
                 '22023', null, 'every element needs a job_type (nothing is enqueued)');
select throws_ok($$ select public.enqueue_jobs('[{"job_type": "t", "max_attempts": 0}]') $$,
                 '22023', null, 'max_attempts must be >= 1');

select * from finish();
rollback;

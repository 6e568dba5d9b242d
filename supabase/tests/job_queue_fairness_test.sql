-- Queue core: claims are fair across stores (issue 16). One store's backlog must not hold every
-- slot: a store with nothing in flight is served in the next claim, even a claim of one job,
-- while batches stay full, priority comes first, a conversation still has one job in flight, and
-- the fairness reads stay bounded under statistics that describe an empty queue.
begin;
select plan(18);

set local role postgres;
truncate public.job_queue;
analyze public.job_queue;  -- statistics of an empty table: the plan must not depend on them

set local role service_role;
create temporary table stores (name text primary key, id uuid) on commit drop;
insert into stores values ('A', gen_random_uuid()), ('B', gen_random_uuid()),
                          ('C', gen_random_uuid());
create function pg_temp.store(p_name text) returns uuid language sql
  as $$ select id from stores where name = p_name $$;
create function pg_temp.enqueue(p_store text, p_n int, p_tag text, p_priority int default 0)
returns int language sql as $$
  select cardinality(public.enqueue_jobs(jsonb_agg(jsonb_build_object(
           'job_type', 'fair_test', 'payload', jsonb_build_object('tag', p_tag, 'n', n),
           'store_id', pg_temp.store(p_store), 'conversation_id', gen_random_uuid(),
           'priority', p_priority))))
  from generate_series(1, p_n) n
$$;

-- A store's 2,000-email backlog arrives first; a quiet store's 3 emails after it.
select is(pg_temp.enqueue('A', 2000, 'backlog'), 2000, 'store A: a 2,000-job backlog');
select pg_sleep(0.01);
select is(pg_temp.enqueue('B', 3, 'quiet'), 3, 'store B: 3 jobs, enqueued after the backlog');

create temporary table reads_before on commit drop as
select i.indexrelid, pg_stat_get_xact_tuples_returned(i.indexrelid) as tuples
from pg_index i where i.indrelid = 'public.job_queue'::regclass;

create temporary table first_batch on commit drop as
select * from public.dequeue_jobs('fair-1', 10, 300, array['fair_test']);

create temporary table reads on commit drop as
select b.indexrelid, pg_stat_get_xact_tuples_returned(b.indexrelid) - b.tuples as tuples
from reads_before b;

select is((select count(*)::int from first_batch), 10, 'the batch is full');
select is((select count(*)::int from first_batch where store_id = pg_temp.store('B')), 3,
          'all of the quiet store''s jobs are in the first batch, ahead of 2,000 older ones');
select cmp_ok((select coalesce(sum(tuples), 0) from reads), '<=', 300::numeric,
              'the fair claim read a bounded number of index tuples, not the backlog');
select cmp_ok((select tuples from reads
               where indexrelid = 'public.job_queue_store_due_idx'::regclass), '<=', 50::bigint,
              'each store''s head was read only up to its share');

-- The claim is recorded on the row, not as an event.
select ok((select bool_and(locked_by = 'fair-1' and started_at is not null and attempt_count = 1
                           and locked_until > now())
           from first_batch),
          'the row records the claim: who, when, which attempt, until when');
select is((select array_agg(distinct e.event_type) from public.events e
           where e.job_id in (select id from first_batch)),
          array['job.enqueued'], 'the claim writes no event');

-- Store A now holds 7 slots. A new email of B is claimed next, even by a claim of one job
-- (the runner claims as many jobs as it has free slots, often one).
select pg_sleep(0.01);
select pg_temp.enqueue('B', 1, 'later');
select is((select store_id from public.dequeue_jobs('fair-2', 1, 300, array['fair_test'])),
          pg_temp.store('B'), 'a claim of one: the store with nothing in flight goes first');

-- With nothing of B due, A's backlog still fills a batch (no slot is left idle by fairness).
select is((select count(*)::int from public.dequeue_jobs('fair-3', 20, 300, array['fair_test'])
           where store_id = pg_temp.store('A')),
          20, 'alone, the busy store gets the whole batch');

-- Two busy stores share a batch: each store's share is ceil(batch / busy stores).
select is(pg_temp.enqueue('C', 100, 'second backlog'), 100, 'store C: a 100-job backlog');
create temporary table shared on commit drop as
select * from public.dequeue_jobs('fair-4', 20, 300, array['fair_test']);
select is((select count(*)::int from shared where store_id = pg_temp.store('C')), 10,
          'C, with nothing in flight, gets its full share (half) ahead of A''s older jobs');
create temporary table shared2 on commit drop as
select * from public.dequeue_jobs('fair-5', 20, 300, array['fair_test']);
select ok((select count(*) from shared2 where store_id = pg_temp.store('C')) between 3 and 17,
          'once both hold slots, A and C share the batch');

-- Stores whose jobs all wait (a retry, an open breaker) are passed over, not counted: 40 of
-- them do not crowd out a store with a due job.
select count(public.enqueue_job('fair_test', '{"tag": "waiting"}', null, gen_random_uuid(),
                                gen_random_uuid(), 0, now() + interval '1 hour'))
from generate_series(1, 40);
select public.enqueue_job('fair_test', '{"tag": "due"}', null,
                          '00000000-0000-0000-0000-0000000000dd', gen_random_uuid());
select is((select payload ->> 'tag' from public.dequeue_jobs('fair-9', 1, 300, array['fair_test'])),
          'due', 'a store with a due job is found among 40 stores whose jobs wait');

-- Stores whose due jobs are all of another type (another lane's, as every store's fetch job is
-- for the email lane) take none of a claim's store turns: among 300 of them the quiet store's
-- new email is still found by a claim of one.
select count(public.enqueue_job('other_lane', '{}', null, gen_random_uuid(), gen_random_uuid()))
from generate_series(1, 300);
select pg_temp.enqueue('B', 1, 'between lanes');
select is((select payload ->> 'tag' from public.dequeue_jobs('fair-10', 1, 300, array['fair_test'])),
          'between lanes', 'due jobs of other types do not use up the stores a claim looks at');

-- Priority still comes first.
select pg_temp.enqueue('A', 1, 'urgent', 5);
select is((select payload ->> 'tag' from public.dequeue_jobs('fair-6', 1, 300, array['fair_test'])),
          'urgent', 'a higher priority job goes before any store''s turn');

-- A conversation still has one job in flight: two jobs of one conversation in the quiet store.
select public.enqueue_job('fair_test', '{"tag": "conv"}', null, pg_temp.store('B'),
                          '00000000-0000-0000-0000-0000000000cc');
select public.enqueue_job('fair_test', '{"tag": "conv"}', null, pg_temp.store('B'),
                          '00000000-0000-0000-0000-0000000000cc');
select is((select count(*)::int from public.dequeue_jobs('fair-7', 10, 300, array['fair_test'])
           where conversation_id = '00000000-0000-0000-0000-0000000000cc'),
          1, 'one job of a conversation per claim');
select is((select count(*)::int from public.dequeue_jobs('fair-8', 10, 300, array['fair_test'])
           where conversation_id = '00000000-0000-0000-0000-0000000000cc'),
          0, 'and none while it is in flight');

select * from finish();
rollback;

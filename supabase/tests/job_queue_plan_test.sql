-- Queue core: the claim's cost does not depend on fresh statistics. A burst after a quiet period
-- meets statistics that describe an empty queue; the claim must still walk the due index in
-- order and stop after its batch, and fetch the claimed rows by primary key (bench/README.md).
-- Counted with the current transaction's own index statistics (index tuples read).
begin;
select plan(7);

set local role postgres;
truncate public.job_queue;
analyze public.job_queue;  -- statistics of an empty table

select is((select c.reltuples from pg_class c where c.oid = 'public.job_queue'::regclass), 0::real,
          'the statistics describe an empty queue');

set local role service_role;
select is(
    (select count(public.enqueue_job('plan_test', jsonb_build_object('n', n), null, null,
                                     gen_random_uuid()))::int
     from generate_series(1, 5000) n),
    5000, '5,000 jobs arrive at once');

create temporary table reads_before on commit drop as
select i.indexrelid, pg_stat_get_xact_tuples_returned(i.indexrelid) as tuples
from pg_index i where i.indrelid = 'public.job_queue'::regclass;

create temporary table claimed on commit drop as
select * from public.dequeue_jobs('plan-worker', 20, 300, array['plan_test']);

create temporary table reads on commit drop as
select b.indexrelid,
       pg_stat_get_xact_tuples_returned(b.indexrelid) - b.tuples as tuples
from reads_before b;

select is((select count(*)::int from claimed), 20, 'the claim got its batch');
select cmp_ok((select tuples from reads where indexrelid = 'public.job_queue_due_idx'::regclass), '<=', 100::bigint,
              'the claim read the head of the due index, not the 5,000 due jobs');
select cmp_ok((select tuples from reads where indexrelid = 'public.job_queue_pkey'::regclass), '<=', 100::bigint,
              'the claimed rows were fetched by primary key');
select cmp_ok((select coalesce(sum(tuples), 0) from reads), '<=', 300::numeric,
              'no index was read in full');
select is(
    (select array_agg(c order by c) from pg_proc p, unnest(p.proconfig) c
     where p.oid = 'public.dequeue_jobs(text, int, int, text[])'::regprocedure),
    array['enable_bitmapscan=off', 'enable_seqscan=off', 'plan_cache_mode=force_generic_plan',
          'search_path=""'],
    'dequeue_jobs pins its plan shape');

select * from finish();
rollback;

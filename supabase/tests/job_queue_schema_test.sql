-- Queue core: tables, indexes, RLS switched on, search_path pinned, and who may execute what.
begin;
select plan(43);

select has_table('public', 'job_queue', 'job_queue exists');
select has_table('public', 'circuit_breakers', 'circuit_breakers exists');
select has_table('public', 'queue_metrics', 'queue_metrics exists');
select col_is_pk('public', 'queue_metrics', array['job_type', 'window_start'],
                 'one metrics row per job type per window');

select is(
    (select array_agg(c.relname::text order by c.relname) from pg_class c
     where c.relnamespace = 'public'::regnamespace and c.relkind = 'r' and c.relrowsecurity
       and c.relname in ('job_queue', 'circuit_breakers', 'queue_metrics')),
    array['circuit_breakers', 'job_queue', 'queue_metrics'],
    'RLS is enabled on every queue table');

select has_index('public', 'job_queue', 'job_queue_due_idx', 'partial index on the due set');
select has_index('public', 'job_queue', 'job_queue_lease_idx', 'partial index on leases');
select has_index('public', 'job_queue', 'job_queue_inflight_conversation_idx',
                 'partial index on in-flight conversations');
select has_index('public', 'job_queue', 'job_queue_dead_letter_idx', 'DLQ listing index');
select has_index('public', 'job_queue', 'job_queue_completed_idx', 'retention index');
select is(
    (select pg_get_expr(i.indpred, i.indrelid) from pg_index i
     where i.indexrelid = 'public.job_queue_due_idx'::regclass),
    '(status = ''pending''::text)', 'the due index covers pending rows only');
select ok(
    (select i.indisunique from pg_index i
     where i.indexrelid = 'public.job_queue_idempotency_key_idx'::regclass),
    'idempotency keys are unique');

-- every queue routine pins search_path to ''; the procedure cannot (it commits) and qualifies
-- every name instead
select is(
    (select array_agg(p.proname::text order by p.proname) from pg_proc p
     where p.pronamespace = 'public'::regnamespace and p.prokind = 'f'
       and p.proname in ('enqueue_job', 'enqueue_jobs', 'dequeue_jobs', 'extend_lease',
                         'complete_job', 'complete_jobs', 'fail_job', 'defer_job',
                         'requeue_dlq_job', 'try_lock_conversation', 'circuit_allow', 'circuit_record',
                         'circuit_wait_seconds',
                         'aggregate_queue_metrics', 'list_dead_letter_jobs', 'get_job',
                         'get_job_events', 'purge_dead_letter_jobs', 'queue_stats',
                         'uuid_generate_v7')
       and not coalesce('search_path=""' = any (p.proconfig), false)),
    null, 'no queue function runs without search_path = ''''');
select has_function('public', 'purge_completed_jobs', array['interval', 'integer'],
                    'purge_completed_jobs exists');

-- Grants: service_role executes every routine; public, anon and authenticated execute none.
create temp table routines (sig text) on commit drop;
insert into routines values
    ('public.enqueue_job(text, jsonb, text, uuid, uuid, int, timestamptz, int)'),
    ('public.enqueue_jobs(jsonb)'),
    ('public.dequeue_jobs(text, int, int, text[])'),
    ('public.extend_lease(text, uuid[], int)'),
    ('public.complete_job(uuid, text, jsonb)'),
    ('public.complete_jobs(text, uuid[], jsonb)'),
    ('public.fail_job(uuid, text, text, text, int)'),
    ('public.defer_job(uuid, text, int, text)'),
    ('public.requeue_dlq_job(uuid, boolean)'),
    ('public.try_lock_conversation(uuid)'),
    ('public.circuit_allow(text)'),
    ('public.circuit_record(text, boolean)'),
    ('public.circuit_wait_seconds(text)'),
    ('public.aggregate_queue_metrics()'),
    ('public.list_dead_letter_jobs(uuid, text, text, int, int)'),
    ('public.get_job(uuid)'),
    ('public.get_job_events(uuid)'),
    ('public.purge_dead_letter_jobs(uuid[])'),
    ('public.queue_stats()'),
    ('public.uuid_generate_v7()'),
    ('public.purge_completed_jobs(interval, int)');

select is((select count(*)::int from routines), 21, 'all 21 routines are listed');
select is(
    (select array_agg(r.sig order by r.sig) from routines r
     where not has_function_privilege('service_role', r.sig::regprocedure, 'execute')),
    null, 'service_role executes every queue routine');
select is(
    (select array_agg(r.sig order by r.sig) from routines r
     where has_function_privilege('anon', r.sig::regprocedure, 'execute')),
    null, 'anon executes no queue routine');
select is(
    (select array_agg(r.sig order by r.sig) from routines r
     where has_function_privilege('authenticated', r.sig::regprocedure, 'execute')),
    null, 'authenticated executes no queue routine');
select is(
    (select array_agg(r.sig order by r.sig) from routines r, pg_proc p
     where p.oid = r.sig::regprocedure
       and exists (select 1 from aclexplode(p.proacl) a where a.grantee = 0)),
    null, 'PUBLIC executes no queue routine');

-- the same facts one by one, so a failure names the routine and the role
select function_privs_are('public', 'dequeue_jobs', array['text', 'integer', 'integer', 'text[]'],
                          'anon', array[]::text[], 'anon cannot claim');
select function_privs_are('public', 'dequeue_jobs', array['text', 'integer', 'integer', 'text[]'],
                          'authenticated', array[]::text[], 'authenticated cannot claim');
select function_privs_are('public', 'dequeue_jobs', array['text', 'integer', 'integer', 'text[]'],
                          'service_role', array['EXECUTE'], 'service_role can claim');
select function_privs_are('public', 'enqueue_job',
                          array['text', 'jsonb', 'text', 'uuid', 'uuid', 'integer',
                                'timestamp with time zone', 'integer'],
                          'authenticated', array[]::text[], 'authenticated cannot enqueue');
select function_privs_are('public', 'requeue_dlq_job', array['uuid', 'boolean'],
                          'anon', array[]::text[], 'anon cannot requeue');
select function_privs_are('public', 'circuit_record', array['text', 'boolean'],
                          'authenticated', array[]::text[], 'authenticated cannot record');
select function_privs_are('public', 'queue_stats', array[]::text[],
                          'anon', array[]::text[], 'anon cannot read stats');

-- table privileges: the RLS policies are a second line behind these
select table_privs_are('public', 'job_queue', 'anon', array[]::text[], 'anon: no job_queue');
select table_privs_are('public', 'job_queue', 'authenticated', array['SELECT'],
                       'authenticated: read-only job_queue');
select table_privs_are('public', 'circuit_breakers', 'anon', array[]::text[],
                       'anon: no circuit_breakers');
select table_privs_are('public', 'circuit_breakers', 'authenticated', array[]::text[],
                       'authenticated: no circuit_breakers');
select table_privs_are('public', 'queue_metrics', 'anon', array[]::text[],
                       'anon: no queue_metrics');
select table_privs_are('public', 'queue_metrics', 'authenticated', array[]::text[],
                       'authenticated: no queue_metrics');
select ok(has_table_privilege('service_role', 'public.job_queue', 'select, insert, update, delete'),
          'service_role: full job_queue');
select ok(has_table_privilege('service_role', 'public.circuit_breakers', 'select, update'),
          'service_role: circuit_breakers');
select ok(has_table_privilege('service_role', 'public.queue_metrics', 'select, insert'),
          'service_role: queue_metrics');

select policies_are('public', 'job_queue',
                    array['job_queue_service_role_all', 'job_queue_owner_read'],
                    'job_queue policies');
select policy_roles_are('public', 'job_queue', 'job_queue_owner_read', array['authenticated'],
                        'owner policy applies to authenticated');
select policy_cmd_is('public', 'job_queue', 'job_queue_owner_read', 'select',
                     'owner policy is read-only');
select policies_are('public', 'circuit_breakers', array['circuit_breakers_service_role_all'],
                    'circuit_breakers: service_role only');
select policies_are('public', 'queue_metrics', array['queue_metrics_service_role_all'],
                    'queue_metrics: service_role only');

-- job ids are UUID version 7 (time-ordered), so live jobs' keys stay on the rightmost leaves
select is(substr(public.uuid_generate_v7()::text, 15, 1), '7', 'uuid_generate_v7 sets version 7');
select ok(substr(public.uuid_generate_v7()::text, 20, 1) in ('8', '9', 'a', 'b'),
          'uuid_generate_v7 keeps the RFC 4122 variant');
select ok(
    (select bool_and(a.id < b.id) from (
        select public.uuid_generate_v7() as id, pg_sleep(0.002) as s
        union all select null, null) a
     cross join lateral (select public.uuid_generate_v7() as id) b
     where a.id is not null),
    'a later id sorts after an earlier one');

select * from finish();
rollback;

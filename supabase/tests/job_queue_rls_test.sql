-- RLS matrix for the queue tables: anon, authenticated owner, authenticated stranger, service_role.
begin;
select plan(16);

insert into auth.users (id) values
    ('00000000-0000-0000-0000-0000000000a0'), ('00000000-0000-0000-0000-0000000000b0');
insert into public.stores (id, owner_id, name, support_email, imap_host, imap_port, imap_user,
                           smtp_host, smtp_port, smtp_user)
values ('00000000-0000-0000-0000-0000000000a5', '00000000-0000-0000-0000-0000000000a0', 'Owned',
        'help@owned.test', '127.0.0.1', 993, 'u', '127.0.0.1', 465, 'u'),
       ('00000000-0000-0000-0000-0000000000b5', '00000000-0000-0000-0000-0000000000b0', 'Other',
        'help@other.test', '127.0.0.1', 993, 'u', '127.0.0.1', 465, 'u');
select public.enqueue_job('t_rls', '{}', 'rls-a1', '00000000-0000-0000-0000-0000000000a5');
select public.enqueue_job('t_rls', '{}', 'rls-a2', '00000000-0000-0000-0000-0000000000a5');
select public.enqueue_job('t_rls', '{}', 'rls-b1', '00000000-0000-0000-0000-0000000000b5');
select public.enqueue_job('t_rls', '{}', 'rls-none');
select public.circuit_record('t_rls_svc', false);
select public.aggregate_queue_metrics();

-- anon -------------------------------------------------------------------------------------------
set local role anon;
select throws_ok($$ select count(*) from public.job_queue $$, '42501', null,
                 'anon cannot read job_queue');
select throws_ok($$ select count(*) from public.circuit_breakers $$, '42501', null,
                 'anon cannot read circuit_breakers');
select throws_ok($$ select count(*) from public.queue_metrics $$, '42501', null,
                 'anon cannot read queue_metrics');
select throws_ok($$ select public.enqueue_job('t_rls', '{}') $$, '42501', null,
                 'anon cannot enqueue');
reset role;

-- authenticated owner ----------------------------------------------------------------------------
set local role authenticated;
set local request.jwt.claims = '{"sub": "00000000-0000-0000-0000-0000000000a0", "role": "authenticated"}';
select is(array(select q.idempotency_key from public.job_queue q where q.job_type = 't_rls'
                order by 1),
          array['rls-a1', 'rls-a2'], 'the owner reads its own store''s jobs only');
select throws_ok($$ update public.job_queue set priority = 9 where job_type = 't_rls' $$,
                 '42501', null, 'the owner cannot change jobs');
select throws_ok($$ insert into public.job_queue (job_type) values ('t_rls') $$, '42501', null,
                 'the owner cannot insert jobs');
select throws_ok($$ select count(*) from public.circuit_breakers $$, '42501', null,
                 'the owner cannot read circuit_breakers');
select throws_ok($$ select * from public.dequeue_jobs('owner', 1) $$, '42501', null,
                 'the owner cannot claim');
select throws_ok($$ select public.queue_stats() $$, '42501', null,
                 'the owner cannot call operations functions');
reset role;

-- authenticated stranger -------------------------------------------------------------------------
set local role authenticated;
set local request.jwt.claims = '{"sub": "00000000-0000-0000-0000-0000000000c0", "role": "authenticated"}';
select is((select count(*)::int from public.job_queue q where q.job_type = 't_rls'), 0,
          'a stranger reads no job');
reset role;
set local role authenticated;
set local request.jwt.claims = '{"sub": "00000000-0000-0000-0000-0000000000b0", "role": "authenticated"}';
select is(array(select q.idempotency_key from public.job_queue q where q.job_type = 't_rls'),
          array['rls-b1'], 'another owner reads only its own store''s job');
reset role;

-- service_role -----------------------------------------------------------------------------------
set local role service_role;
select is((select count(*)::int from public.job_queue q where q.job_type = 't_rls'), 4,
          'service_role reads every job, with or without a store');
select is((select count(*)::int from public.circuit_breakers where service = 't_rls_svc'), 1,
          'service_role reads circuit_breakers');
select ok((select count(*) from public.queue_metrics where job_type = 't_rls') = 1,
          'service_role reads queue_metrics');
select lives_ok($$ update public.job_queue set priority = 1 where job_type = 't_rls' $$,
                'service_role writes job_queue');
reset role;

select * from finish();
rollback;

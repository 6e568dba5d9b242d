-- Circuit breakers: closed -> open -> half-open (one probe) -> closed or open with a longer
-- cool-down. now() is fixed in the transaction; cool-downs are expired by moving open_until back.
begin;
select plan(36);

create function pg_temp.breaker(p_service text) returns public.circuit_breakers language sql as $$
    select b.* from public.circuit_breakers b where b.service = p_service
$$;
grant execute on all functions in schema pg_temp to service_role;
set local role service_role;

select ok(public.circuit_allow('t_svc'), 'an unknown service is allowed');
select is(public.circuit_record('t_svc', true), 'closed', 'a success on an unknown service');
select is((select count(*)::int from public.circuit_breakers where service = 't_svc'), 0,
          'successes on a healthy service write nothing');

select is(array(select public.circuit_record('t_svc', false) from generate_series(1, 4)),
          array['closed', 'closed', 'closed', 'closed'], 'four failures keep it closed');
select ok(public.circuit_allow('t_svc'), 'closed still allows');
select is(public.circuit_record('t_svc', true), 'closed', 'a success...');
select is((pg_temp.breaker('t_svc')).consecutive_failures, 0, '...resets the failure count');

select is(array(select public.circuit_record('t_svc', false) from generate_series(1, 5)),
          array['closed', 'closed', 'closed', 'closed', 'open'],
          'the fifth consecutive failure opens the circuit');
select is((pg_temp.breaker('t_svc')).open_until, now() + interval '30 seconds',
          'first cool-down is 30 s');
select ok(not public.circuit_allow('t_svc'), 'open refuses');
select is(public.circuit_wait_seconds('t_svc'), 30, 'a deferred job waits the cool-down');
select is((select e.detail ->> 'cooldown_seconds' from public.events e
           where e.event_type = 'circuit.opened' and e.detail ->> 'service' = 't_svc'),
          '30', 'circuit.opened event');
select is(public.circuit_record('t_svc', false), 'open', 'a straggler failure while open');
select is((pg_temp.breaker('t_svc')).open_until, now() + interval '30 seconds',
          'does not extend the cool-down');

reset role;
update public.circuit_breakers set open_until = now() where service = 't_svc';
set local role service_role;
select ok(public.circuit_allow('t_svc'), 'after the cool-down one probe is let through');
select is((pg_temp.breaker('t_svc')).state, 'half_open', 'state half_open');
select ok(not public.circuit_allow('t_svc'), 'a second caller is refused while the probe runs');
select is(public.circuit_wait_seconds('t_svc'), 60, '...and waits until the probe frees its slot');
reset role;
update public.circuit_breakers set probe_started_at = now() - interval '61 seconds'
where service = 't_svc';
set local role service_role;
select ok(public.circuit_allow('t_svc'), 'a probe that never reported frees the slot');
select ok(not public.circuit_allow('t_svc'), 'for exactly one new probe');

select is(public.circuit_record('t_svc', false), 'open', 'a failed probe reopens');
select is(((pg_temp.breaker('t_svc')).open_count, (pg_temp.breaker('t_svc')).open_until),
          (2, now() + interval '60 seconds'), 'with a doubled cool-down');
reset role;
update public.circuit_breakers set open_until = now() where service = 't_svc';
set local role service_role;
select ok(public.circuit_allow('t_svc'), 'probe again');
select is(public.circuit_record('t_svc', false), 'open', 'fails again');
select is((pg_temp.breaker('t_svc')).open_until, now() + interval '120 seconds',
          'cool-down doubles per consecutive re-open');
reset role;
update public.circuit_breakers set open_until = now(), open_count = 9 where service = 't_svc';
set local role service_role;
select ok(public.circuit_allow('t_svc'), 'probe after many re-opens');
select is(public.circuit_record('t_svc', false), 'open', 'and it fails');
select is((pg_temp.breaker('t_svc')).open_until, now() + interval '15 minutes',
          'the cool-down is capped at 15 minutes');

reset role;
update public.circuit_breakers set open_until = now() where service = 't_svc';
set local role service_role;
select ok(public.circuit_allow('t_svc'), 'a last probe');
select is(public.circuit_record('t_svc', true), 'closed', 'a successful probe closes');
select is(((pg_temp.breaker('t_svc')).state, (pg_temp.breaker('t_svc')).consecutive_failures,
           (pg_temp.breaker('t_svc')).open_count),
          ('closed'::text, 0, 0), 'and resets the counters');
select is((select count(*)::int from public.events e
           where e.event_type = 'circuit.closed' and e.detail ->> 'service' = 't_svc'),
          1, 'circuit.closed event');


-- circuit_wait_seconds follows the breaker's own reopen time, never less than a second
select is(public.circuit_wait_seconds('t_unknown'), 1, 'an unknown service: 1 s');
select is(public.circuit_wait_seconds('t_svc'), 1, 'a closed breaker: 1 s');
reset role;
update public.circuit_breakers set state = 'open', open_until = now() + interval '120.2 seconds'
where service = 't_svc';
set local role service_role;
select is(public.circuit_wait_seconds('t_svc'), 121, 'a longer cool-down, rounded up');
reset role;
update public.circuit_breakers set open_until = now() - interval '5 seconds'
where service = 't_svc';
set local role service_role;
select is(public.circuit_wait_seconds('t_svc'), 1, 'a cool-down already over: 1 s');

select * from finish();
rollback;

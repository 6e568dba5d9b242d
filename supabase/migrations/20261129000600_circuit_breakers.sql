-- ---------------------------------------------------------------------------------------------
-- Circuit breakers: closed -> open after failure_threshold consecutive failures; open for a
-- cool-down of base * 2^(open_count - 1) seconds capped at max; then half-open: exactly one probe
-- is let through (a probe that never reports frees the slot after probe_timeout_seconds);
-- success anywhere closes and resets; failure in half-open reopens with a longer cool-down.
-- ---------------------------------------------------------------------------------------------

-- Breakers belong to no store, so only service_role sees them.
create table public.circuit_breakers (
  service text primary key,
  state text not null default 'closed' check (state in ('closed', 'open', 'half_open')),
  consecutive_failures int not null default 0,
  failure_threshold int not null default 5 check (failure_threshold >= 1),
  -- consecutive opens without a success in between; drives the growing cool-down
  open_count int not null default 0,
  base_cooldown_seconds int not null default 30 check (base_cooldown_seconds >= 1),
  max_cooldown_seconds int not null default 900 check (max_cooldown_seconds >= 1),
  -- a half-open probe that never reports back frees the slot after this long
  probe_timeout_seconds int not null default 60 check (probe_timeout_seconds >= 1),
  opened_at timestamptz,
  open_until timestamptz,
  probe_started_at timestamptz,
  last_failure_at timestamptz,
  last_success_at timestamptz,
  updated_at timestamptz not null default now()
);

alter table public.circuit_breakers enable row level security;

revoke all on public.circuit_breakers from public, anon, authenticated;
grant all on public.circuit_breakers to service_role;

create policy circuit_breakers_service_role_all on public.circuit_breakers
  for all to service_role using (true) with check (true);

create or replace function public.circuit_allow(p_service text)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
    v_state text;
begin
    -- the common case (closed or unknown service) is a single primary-key read, no write
    select b.state into v_state from public.circuit_breakers b where b.service = p_service;
    if not found or v_state = 'closed' then
        return true;
    end if;

    -- Take the probe slot: the row lock serialises concurrent callers and the losers re-check
    -- the predicate on the updated row, so exactly one caller wins the slot.
    update public.circuit_breakers b
    set state = 'half_open', probe_started_at = now(), updated_at = now()
    where b.service = p_service
      and ((b.state = 'open' and b.open_until <= now())
           or (b.state = 'half_open'
               and b.probe_started_at <= now() - make_interval(secs => b.probe_timeout_seconds)));
    return found;
end;
$$;

-- Records the outcome of a call and returns the breaker's state afterwards.
create or replace function public.circuit_record(p_service text, p_success boolean)
returns text
language plpgsql
set search_path = ''
as $$
declare
    v_b public.circuit_breakers;
    v_cooldown int;
begin
    if p_success then
        -- a success on a healthy (or unknown) breaker is one read and no write, so the hot path
        -- does not serialise callers on the breaker row
        select b.state, b.consecutive_failures into v_b.state, v_b.consecutive_failures
        from public.circuit_breakers b where b.service = p_service;
        if not found or (v_b.state = 'closed' and v_b.consecutive_failures = 0) then
            return 'closed';
        end if;
        select * into v_b from public.circuit_breakers b where b.service = p_service for update;
        update public.circuit_breakers b
        set state = 'closed', consecutive_failures = 0, open_count = 0, opened_at = null,
            open_until = null, probe_started_at = null, last_success_at = now(),
            updated_at = now()
        where b.service = p_service;
        if v_b.state <> 'closed' then
            insert into public.events (event_type, detail)
            values ('circuit.closed',
                    jsonb_build_object('service', p_service, 'from', v_b.state,
                                       'open_count', v_b.open_count));
        end if;
        return 'closed';
    end if;

    insert into public.circuit_breakers (service) values (p_service)
    on conflict (service) do nothing;
    select * into v_b from public.circuit_breakers b where b.service = p_service for update;

    if v_b.state = 'open' then
        -- a straggler that started before the circuit opened: counted, cool-down unchanged
        update public.circuit_breakers b
        set consecutive_failures = b.consecutive_failures + 1, last_failure_at = now(),
            updated_at = now()
        where b.service = p_service;
        return 'open';
    end if;

    if v_b.state = 'half_open' or v_b.consecutive_failures + 1 >= v_b.failure_threshold then
        v_cooldown := least(v_b.base_cooldown_seconds * power(2, least(v_b.open_count, 20))::int,
                            v_b.max_cooldown_seconds);
        update public.circuit_breakers b
        set state = 'open', consecutive_failures = b.consecutive_failures + 1,
            open_count = b.open_count + 1, opened_at = now(),
            open_until = now() + make_interval(secs => v_cooldown),
            probe_started_at = null, last_failure_at = now(), updated_at = now()
        where b.service = p_service;
        insert into public.events (event_type, detail)
        values ('circuit.opened',
                jsonb_build_object('service', p_service, 'from', v_b.state,
                                   'consecutive_failures', v_b.consecutive_failures + 1,
                                   'open_count', v_b.open_count + 1,
                                   'cooldown_seconds', v_cooldown));
        return 'open';
    end if;

    update public.circuit_breakers b
    set consecutive_failures = b.consecutive_failures + 1, last_failure_at = now(),
        updated_at = now()
    where b.service = p_service;
    return 'closed';
end;
$$;

-- Seconds until the breaker lets a call through again: what a job deferred by it waits, so the
-- deferral follows the breaker's own cool-down (growing with each reopen) rather than a fixed
-- guess. Open: until open_until; half-open: until the probe in flight frees its slot; at least
-- 1 (closed or unknown: 1, the caller just raced a closing breaker).
create or replace function public.circuit_wait_seconds(p_service text)
returns int
language sql
stable
set search_path = ''
as $$
    select greatest(1, coalesce(ceil(extract(epoch from
               case b.state
                   when 'open' then b.open_until - now()
                   when 'half_open' then b.probe_started_at
                                         + make_interval(secs => b.probe_timeout_seconds) - now()
               end))::int, 1))
    from (select 1) one
    left join public.circuit_breakers b on b.service = p_service;
$$;

-- Privileges: these routines are for the worker (service_role) only. Supabase grants EXECUTE
-- to anon and authenticated by default, hence the explicit revoke before each grant.
revoke all on function public.circuit_allow(text) from public, anon, authenticated;
grant execute on function public.circuit_allow(text) to service_role;
revoke all on function public.circuit_record(text, boolean) from public, anon, authenticated;
grant execute on function public.circuit_record(text, boolean) to service_role;
revoke all on function public.circuit_wait_seconds(text) from public, anon, authenticated;
grant execute on function public.circuit_wait_seconds(text) to service_role;

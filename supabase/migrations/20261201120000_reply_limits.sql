-- Reply limits (issue 13): the per-customer reply cap and a per-store hourly rate, checked where
-- a reply's credit is reserved.
--
-- The cap used to be read in load_job_context and compared in Python: sixteen concurrent jobs of
-- one sender all read "0 recent replies" and all replied. reserve_reply takes the store row's
-- lock (as reserve_credit does), so every reservation of a store is serialised and the counts it
-- compares cannot race. The cap counts reservations, not sent replies, because a reply is sent
-- long after its credit is reserved; a refunded reservation (nothing was sent) does not count.
-- Senders are compared by sender_key: case, plus-tags and Gmail's dots do not make a new
-- customer.

alter table public.credit_ledger add column sender_key text;

create index credit_ledger_sender_idx
  on public.credit_ledger (store_id, sender_key, created_at) where reason = 'reply';

-- The address as the cap sees it: lower case, without a +tag; for Gmail (and googlemail.com,
-- the same mailboxes) without dots in the local part. Null for null.
create or replace function public.sender_key(p_address text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_address text := lower(btrim(p_address));
  v_at int;
  v_local text;
  v_domain text;
begin
  if v_address is null then
    return null;
  end if;
  v_at := length(v_address) - strpos(reverse(v_address), '@') + 1;
  if strpos(v_address, '@') = 0 then
    return v_address;
  end if;
  v_local := left(v_address, v_at - 1);
  v_domain := substr(v_address, v_at + 1);
  if v_domain = 'googlemail.com' then
    v_domain := 'gmail.com';
  end if;
  if split_part(v_local, '+', 1) <> '' then
    v_local := split_part(v_local, '+', 1);
  end if;
  if v_domain = 'gmail.com' and replace(v_local, '.', '') <> '' then
    v_local := replace(v_local, '.', '');
  end if;
  return v_local || '@' || v_domain;
end;
$$;

-- reserve_credit plus the limits, in one transaction under the store row's lock. Returns
-- 'reserved', 'already_reserved' (idempotent per job), 'reply_cap' (this sender had p_cap
-- replies within p_window_hours), 'rate_limited' (the store reserved p_per_hour replies in the
-- last hour; try again later) or 'no_credits'. A null limit is not checked.
create or replace function public.reserve_reply(
  p_store_id uuid,
  p_job_id uuid,
  p_sender text,
  p_cap int,
  p_window_hours int,
  p_per_hour int
)
returns text
language plpgsql
set search_path = ''
as $$
declare
  v_key text := public.sender_key(p_sender);
  v_credits int;
  v_count int;
begin
  if p_job_id is null then
    raise exception 'reserve_reply needs a job id' using errcode = 'invalid_parameter_value';
  end if;
  -- NO KEY UPDATE: one credit change of a store at a time, while inserts that reference the
  -- store (key-share locks) go on; see release_credit.
  select credits into v_credits from public.stores where id = p_store_id for no key update;
  if not found then
    raise exception 'store % not found', p_store_id using errcode = 'no_data_found';
  end if;

  perform 1 from public.credit_ledger where job_id = p_job_id and reason = 'reply';
  if found then
    return 'already_reserved';
  end if;

  if p_cap is not null and v_key is not null then
    select count(*) into v_count
    from public.credit_ledger l
    where l.store_id = p_store_id and l.reason = 'reply' and l.sender_key = v_key
      and l.created_at > now() - make_interval(hours => coalesce(p_window_hours, 24))
      and not exists (select 1 from public.credit_ledger r
                      where r.job_id = l.job_id and r.reason = 'refund');
    if v_count >= p_cap then
      return 'reply_cap';
    end if;
  end if;

  if p_per_hour is not null then
    select count(*) into v_count
    from public.credit_ledger l
    where l.store_id = p_store_id and l.reason = 'reply'
      and l.created_at > now() - interval '1 hour'
      and not exists (select 1 from public.credit_ledger r
                      where r.job_id = l.job_id and r.reason = 'refund');
    if v_count >= p_per_hour then
      return 'rate_limited';
    end if;
  end if;

  if v_credits < 1 then
    return 'no_credits';
  end if;

  update public.stores set credits = credits - 1 where id = p_store_id;
  insert into public.credit_ledger (store_id, job_id, delta, reason, sender_key)
  values (p_store_id, p_job_id, -1, 'reply', v_key);
  insert into public.events (store_id, job_id, event_type, detail)
  values (p_store_id, p_job_id, 'credit.charged',
          jsonb_build_object('delta', -1, 'balance', v_credits - 1));
  return 'reserved';
end;
$$;

revoke all on function public.reserve_reply(uuid, uuid, text, int, int, int)
  from public, anon, authenticated;
grant execute on function public.reserve_reply(uuid, uuid, text, int, int, int) to service_role;
revoke all on function public.sender_key(text) from public, anon, authenticated;
grant execute on function public.sender_key(text) to service_role;

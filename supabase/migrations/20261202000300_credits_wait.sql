-- Credits that never lose an email (issue 12, items 4 and 5).
--
-- An email that arrives when its store has no credits waits for credits instead of ending as
-- `no_credits`: wait_for_credits defers its job (no attempt spent, never dead-lettered) for a
-- long time and records the wait in credit_waits; any rise of a store's balance (a top-up with
-- `stores credits`, a grant, a refund) makes that store's waiting jobs due now through the
-- trigger on stores.credits (wake_credit_waiters). Nobody touches the queue, and a big waiting
-- backlog costs nothing until credits arrive: each waiting job was claimed once, then sleeps.
--
-- A credit pays for a reply that is sent: a draft held for a person is refunded when it is saved
-- (save_reply), and a person sending it from the console charges it then (console_send_reply).
--
-- A store is told when its balance falls below its threshold (stores.low_credits_at, 10 by
-- default) and when an email starts waiting for credits, through public.notify_people (the
-- notifications concern), once per episode: the episode is the last credit top-up (the ref of
-- both notifications), so each top-up that is spent down warns again, refunds that move the
-- balance back and forth around the threshold do not, and the next top-up resolves them.

alter table public.stores
  add column low_credits_at int not null default 10 check (low_credits_at >= 0);

comment on column public.stores.low_credits_at is
  'The store is warned (notify_people credits_low) when its credits fall below this.';

-- The conversation list shows an email waiting for credits as its own status.
alter table public.conversations drop constraint conversations_status_check;
alter table public.conversations add constraint conversations_status_check
  check (status in ('open', 'waiting', 'waiting_credits', 'answered_auto', 'answered_human',
                    'closed', 'spam', 'skipped', 'failed'));

-- Jobs deferred until their store has credits, so a top-up finds exactly them (a store's waiting
-- jobs, not the whole queue) and the console can count them.
create table public.credit_waits (
  job_id uuid primary key,
  store_id uuid not null references public.stores (id) on delete cascade,
  conversation_id uuid,
  message_id uuid,
  since timestamptz not null default now()
);

create index credit_waits_store_idx on public.credit_waits (store_id, since);

alter table public.credit_waits enable row level security;
revoke all on public.credit_waits from public, anon, authenticated;
grant select on public.credit_waits to authenticated;
grant select, insert, update, delete on public.credit_waits to service_role;
create policy credit_waits_service_role on public.credit_waits
  for all to service_role using (true) with check (true);
create policy credit_waits_member_select on public.credit_waits
  for select to authenticated
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));

-- The store's current credit episode: the id of its last top-up (or grant, or upward
-- correction). A notification ref built from it is new after each top-up and the same until the
-- next one.
create or replace function public.credit_episode(p_store_id uuid)
returns text
language sql
stable
set search_path = ''
as $$
  select 'topup:' || coalesce(max(l.id), 0)::text
  from public.credit_ledger l
  where l.store_id = p_store_id and l.reason in ('topup', 'grant', 'adjustment') and l.delta > 0
$$;

-- The job's store has no credits: the job waits for them (deferred p_wait_seconds without
-- spending an attempt; a top-up pulls it forward), its conversation shows it, and the store's
-- people are told once per episode. Returns 'waiting'; 'has_credits' when the balance is
-- positive after all (the caller goes on); 'not_held' when p_worker_id no longer holds the job.
-- The store row is read FOR SHARE: a top-up (FOR UPDATE) either commits before, and is seen
-- here, or waits for this transaction and then finds the credit_waits row to wake.
create or replace function public.wait_for_credits(
  p_job_id uuid,
  p_worker_id text,
  p_wait_seconds int
)
returns text
language plpgsql
set search_path = ''
as $$
declare
  v_job public.job_queue;
  v_store public.stores;
  v_message_id uuid;
  v_waiting int;
begin
  select * into v_job from public.job_queue
  where id = p_job_id and status = 'processing' and locked_by = p_worker_id;
  if not found then
    return 'not_held';
  end if;
  select * into v_store from public.stores where id = v_job.store_id for share;
  if not found then
    raise exception 'store % not found', v_job.store_id using errcode = 'no_data_found';
  end if;
  if v_store.credits > 0 then
    return 'has_credits';
  end if;

  perform public.defer_job(p_job_id, p_worker_id, p_wait_seconds, 'waiting_for_credits');
  if (v_job.payload ->> 'message_id') ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' then
    v_message_id := (v_job.payload ->> 'message_id')::uuid;
  end if;
  insert into public.credit_waits (job_id, store_id, conversation_id, message_id)
  values (p_job_id, v_store.id, v_job.conversation_id, v_message_id)
  on conflict (job_id) do nothing;
  update public.conversations set status = 'waiting_credits', status_at = now()
  where id = v_job.conversation_id and status <> 'waiting_credits';

  select count(*)::int into v_waiting from public.credit_waits where store_id = v_store.id;
  perform public.notify_people(
    v_store.id, 'waiting_for_credits', public.credit_episode(v_store.id),
    jsonb_build_object('credits', v_store.credits, 'waiting', v_waiting,
                       'conversation_id', v_job.conversation_id));
  return 'waiting';
end;
$$;

-- Every job of the store that waits for credits is due now; their conversations are open again.
-- Returns how many jobs were woken. Called by the stores.credits trigger on any rise.
create or replace function public.wake_credit_waiters(p_store_id uuid)
returns int
language plpgsql
set search_path = ''
as $$
declare
  v_woken int;
begin
  with waits as (
    delete from public.credit_waits w where w.store_id = p_store_id
    returning w.job_id, w.conversation_id
  ), jobs as (
    update public.job_queue q
    set next_retry_at = now(), updated_at = now()
    from waits w
    where q.id = w.job_id and q.status = 'pending' and q.next_retry_at > now()
    returning q.id
  ), conversations as (
    update public.conversations c
    set status = 'open', status_at = now()
    from waits w
    where c.id = w.conversation_id and c.status = 'waiting_credits'
    returning c.id
  )
  select (select count(*) from jobs)::int into v_woken;
  if v_woken > 0 then
    insert into public.events (store_id, event_type, detail)
    values (p_store_id, 'credit.waiters_woken', jsonb_build_object('jobs', v_woken));
  end if;
  return v_woken;
end;
$$;

-- A balance that rises wakes the store's waiting jobs; one that falls below the threshold warns
-- the store's people. The WHEN clause keeps an ordinary charge above the threshold free of any
-- call.
create or replace function public.stores_credits_changed()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.credits > old.credits then
    perform public.wake_credit_waiters(new.id);
  end if;
  if old.credits >= new.low_credits_at and new.credits < new.low_credits_at then
    insert into public.events (store_id, event_type, detail)
    values (new.id, 'credit.low', jsonb_build_object('credits', new.credits,
                                                     'threshold', new.low_credits_at));
    perform public.notify_people(
      new.id, 'credits_low', public.credit_episode(new.id),
      jsonb_build_object('credits', new.credits, 'threshold', new.low_credits_at));
  end if;
  return null;
end;
$$;

create trigger stores_credits_changed
  after update of credits on public.stores
  for each row
  when (new.credits > old.credits
        or (old.credits >= new.low_credits_at and new.credits < new.low_credits_at))
  execute function public.stores_credits_changed();

-- What pays for sending a reply a person approved or wrote: the charge that already stands for
-- it (p_charge_job's, unrefunded: a reply held in doubt may have gone out and keeps it), else a
-- new charge keyed by a fresh id (reserve_reply with the recipient, so it counts toward the
-- customer's reply cap, and no limits: a person decided). Null when the store has no credits.
create or replace function public.charge_for_send(
  p_store_id uuid,
  p_charge_job uuid,
  p_recipient text
)
returns uuid
language plpgsql
set search_path = ''
as $$
declare
  v_charge uuid := public.uuid_generate_v7();
begin
  if p_charge_job is not null
     and exists (select 1 from public.credit_ledger l
                 where l.job_id = p_charge_job and l.reason = 'reply')
     and not exists (select 1 from public.credit_ledger l
                     where l.job_id = p_charge_job and l.reason = 'refund') then
    return p_charge_job;
  end if;
  if public.reserve_reply(p_store_id, v_charge, p_recipient, null, null, null) = 'no_credits' then
    return null;
  end if;
  return v_charge;
end;
$$;

-- A top-up (or grant, or correction upwards) ends the episode: what the store's people were told
-- about it (credits ran low, emails waited) is resolved, so the next episode is told afresh. A
-- refund is not a top-up: it wakes waiting emails (the stores trigger) but resolves nothing, so
-- a balance moving around the threshold does not warn twice.
create or replace function public.credit_ledger_topped_up()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_episode text;
begin
  select 'topup:' || coalesce(max(l.id), 0)::text into v_episode
  from public.credit_ledger l
  where l.store_id = new.store_id and l.reason in ('topup', 'grant', 'adjustment')
    and l.delta > 0 and l.id < new.id;
  perform public.resolve_notifications(new.store_id, 'credits_low', v_episode);
  perform public.resolve_notifications(new.store_id, 'waiting_for_credits', v_episode);
  return null;
end;
$$;

create trigger credit_ledger_topped_up
  after insert on public.credit_ledger
  for each row
  when (new.reason in ('topup', 'grant', 'adjustment') and new.delta > 0)
  execute function public.credit_ledger_topped_up();

revoke all on function public.credit_episode(uuid) from public, anon, authenticated;
grant execute on function public.credit_episode(uuid) to service_role;
revoke all on function public.charge_for_send(uuid, uuid, text) from public, anon, authenticated;
grant execute on function public.charge_for_send(uuid, uuid, text) to service_role;
revoke all on function public.wait_for_credits(uuid, text, int) from public, anon, authenticated;
grant execute on function public.wait_for_credits(uuid, text, int) to service_role;
revoke all on function public.wake_credit_waiters(uuid) from public, anon, authenticated;
grant execute on function public.wake_credit_waiters(uuid) to service_role;
revoke all on function public.stores_credits_changed() from public, anon, authenticated;
revoke all on function public.credit_ledger_topped_up() from public, anon, authenticated;

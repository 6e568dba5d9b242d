-- Notifications (issue 12 item 1): when something needs a person, the store's people are told.
--
-- One contract for every caller: notify_people(store, kind, ref, detail) records one item per
-- (store, kind, ref) while that item is unresolved, and makes sure one `notify` job is waiting to
-- send the store a digest. The `notify` job (worker/notify.py) takes every pending item of its
-- store at once, emails the digest over the store's own SMTP and, when configured, posts it to a
-- webhook. Kinds:
--   held_reply          ref = reply id            (a reply waits for a person; trigger below)
--   dead_letter         ref = job id              (a job of the store gave up; trigger below)
--   credentials_failed  ref = imap:|smtp:|shopify:<store id> (that service's breaker opened)
--   credits_low         ref chosen by the caller  (the credit logic, issue 12 item 4)
--   waiting_for_credits ref chosen by the caller  (an email waits for credits)
-- Timing, per store (notification_settings): the first item of a quiet spell waits
-- digest_wait_seconds, so a burst becomes one digest; digests are at least
-- digest_interval_minutes apart. Items are never about notifications: a dead-lettered `notify`
-- job notifies nobody, and the notify handler never counts its own failures on a store breaker.

-- Settings ---------------------------------------------------------------------------------------

-- A store without a row has the defaults. addresses null: the store's people (store_members),
-- else its support address. The webhook URL is a secret (a Slack incoming-webhook URL is its own
-- credential), so only its Vault id and a hint for the console are kept here.
create table public.notification_settings (
  store_id uuid primary key references public.stores (id) on delete cascade,
  addresses text[] check (addresses is null or cardinality(addresses) between 1 and 20),
  digest_interval_minutes int not null default 15
    check (digest_interval_minutes between 1 and 1440),
  digest_wait_seconds int not null default 60 check (digest_wait_seconds between 0 and 3600),
  webhook_secret_id uuid,
  webhook_hint text,
  updated_at timestamptz not null default now()
);

-- Items ------------------------------------------------------------------------------------------

-- status: pending (waiting for a digest; digest_job_id once a digest job took it), sent (in a
-- digest that went out), resolved (the cause went away before any digest told anyone).
-- resolved_at: the cause went away (a held reply was sent, a breaker closed); a later
-- notify_people for the same (store, kind, ref) then starts a new item.
create table public.notifications (
  id uuid primary key default public.uuid_generate_v7(),
  store_id uuid not null references public.stores (id) on delete cascade,
  kind text not null check (kind in ('held_reply', 'dead_letter', 'credentials_failed',
                                     'credits_low', 'waiting_for_credits')),
  ref text not null check (ref <> ''),
  detail jsonb not null default '{}'::jsonb,
  status text not null default 'pending' check (status in ('pending', 'sent', 'resolved')),
  digest_job_id uuid,
  created_at timestamptz not null default now(),
  sent_at timestamptz,
  resolved_at timestamptz
);
create unique index notifications_open_idx on public.notifications (store_id, kind, ref)
  where resolved_at is null;
create index notifications_pending_idx on public.notifications (store_id, created_at)
  where status = 'pending';
create index notifications_store_recent_idx on public.notifications (store_id, created_at desc);
create index notifications_digest_idx on public.notifications (digest_job_id)
  where digest_job_id is not null;

-- One row per digest (its notify job): what it carried and where it went. The latest row of a
-- store is when the last digest was taken, which spaces the next one.
create table public.notification_digests (
  job_id uuid primary key,
  store_id uuid not null references public.stores (id) on delete cascade,
  item_count int not null default 0,
  email_to text[] not null default '{}',
  email_message_id text,
  email_sent_at timestamptz,
  webhook_sent_at timestamptz,
  webhook_error text,
  created_at timestamptz not null default now(),
  finished_at timestamptz
);
create index notification_digests_store_recent_idx
  on public.notification_digests (store_id, created_at desc);

-- RLS: service_role everything; a store's people (and operators) read their own store's rows.
alter table public.notification_settings enable row level security;
alter table public.notifications enable row level security;
alter table public.notification_digests enable row level security;
revoke all on public.notification_settings, public.notifications, public.notification_digests
  from public, anon, authenticated;
grant all on public.notification_settings, public.notifications, public.notification_digests
  to service_role;
grant select on public.notification_settings, public.notifications, public.notification_digests
  to authenticated;
create policy notification_settings_service_role on public.notification_settings
  for all to service_role using (true) with check (true);
create policy notifications_service_role on public.notifications
  for all to service_role using (true) with check (true);
create policy notification_digests_service_role on public.notification_digests
  for all to service_role using (true) with check (true);
create policy notification_settings_member_select on public.notification_settings
  for select to authenticated
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));
create policy notifications_member_select on public.notifications
  for select to authenticated
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));
create policy notification_digests_member_select on public.notification_digests
  for select to authenticated
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));

create trigger notification_settings_updated_at
  before update on public.notification_settings
  for each row execute function public.set_updated_at();

-- The notify job's retry policy: a digest is worth retrying soon (a person is waiting for it)
-- and not for long (after a few hours it is stale; the items stay pending and the next digest
-- carries them only if the job is requeued). First retry after 1 minute, capped at 30 minutes,
-- 8 attempts (about 2 hours).
insert into public.job_retry_policies (job_type, base_seconds, cap_seconds, max_attempts)
values ('notify', 60, 1800, 8)
on conflict (job_type) do update
  set base_seconds = excluded.base_seconds, cap_seconds = excluded.cap_seconds,
      max_attempts = excluded.max_attempts;

-- The contract ---------------------------------------------------------------------------------

-- Records that something of p_store_id needs a person and schedules the store's digest.
-- Idempotent per (store, kind, ref) while the item is unresolved: a repeated call changes
-- nothing (not even the detail). Unknown kinds raise 22023 so a caller's typo is loud; an
-- unknown store is ignored (a store deleted under a late trigger has nobody to tell).
-- Concurrent callers for one store serialise on its notification_settings row, so exactly one
-- pending notify job exists per store with pending items.
create or replace function public.notify_people(
  p_store_id uuid,
  p_kind text,
  p_ref text,
  p_detail jsonb default '{}'::jsonb
)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_settings public.notification_settings;
  v_id uuid;
  v_last timestamptz;
  v_run_at timestamptz;
  v_job_id uuid;
begin
  if p_kind is null or p_kind not in ('held_reply', 'dead_letter', 'credentials_failed',
                                      'credits_low', 'waiting_for_credits') then
    raise exception 'notify_people: unknown kind %', p_kind using errcode = '22023';
  end if;
  if p_ref is null or p_ref = '' then
    raise exception 'notify_people: p_ref is required' using errcode = '22023';
  end if;
  if p_store_id is null or not exists (select 1 from public.stores s where s.id = p_store_id) then
    return;
  end if;

  insert into public.notification_settings (store_id) values (p_store_id)
  on conflict (store_id) do nothing;
  select * into v_settings from public.notification_settings ns
  where ns.store_id = p_store_id for update;

  insert into public.notifications (store_id, kind, ref, detail)
  values (p_store_id, p_kind, p_ref,
          case when jsonb_typeof(p_detail) = 'object' then p_detail else '{}'::jsonb end)
  on conflict (store_id, kind, ref) where resolved_at is null do nothing
  returning id into v_id;
  if v_id is null then
    return;
  end if;

  -- A notify job that is still pending will take this item too; one that is already running
  -- took its items when it started, so this one needs the next digest.
  if exists (select 1 from public.job_queue q
             where q.store_id = p_store_id and q.status = 'pending' and q.job_type = 'notify') then
    return;
  end if;
  select max(d.created_at) into v_last
  from public.notification_digests d where d.store_id = p_store_id;
  v_run_at := greatest(now() + make_interval(secs => v_settings.digest_wait_seconds),
                       coalesce(v_last, '-infinity'::timestamptz)
                         + make_interval(mins => v_settings.digest_interval_minutes));
  v_job_id := public.enqueue_job('notify', jsonb_build_object('store_id', p_store_id),
                                 p_store_id => p_store_id, p_run_at => v_run_at);
  insert into public.events (store_id, job_id, event_type, detail)
  values (p_store_id, v_job_id, 'notify.scheduled',
          jsonb_build_object('kind', p_kind, 'ref', p_ref, 'run_at', v_run_at));
end;
$$;

-- The cause of an item went away (a held reply was sent or discarded, a breaker closed, credits
-- were added): the open item is closed, so a later occurrence is told again. An item no digest
-- has taken yet is not sent at all. Returns how many items it resolved.
create or replace function public.resolve_notifications(
  p_store_id uuid,
  p_kind text,
  p_ref text
)
returns int
language sql
set search_path = ''
as $$
  with resolved as (
    update public.notifications n
    set resolved_at = now(),
        status = case when n.status = 'pending' and n.digest_job_id is null then 'resolved'
                      else n.status end
    where n.store_id = p_store_id and n.kind = p_kind and n.ref = p_ref
      and n.resolved_at is null
    returning 1
  )
  select count(*)::int from resolved
$$;

revoke all on function public.notify_people(uuid, text, text, jsonb)
  from public, anon, authenticated;
grant execute on function public.notify_people(uuid, text, text, jsonb) to service_role;
revoke all on function public.resolve_notifications(uuid, text, text)
  from public, anon, authenticated;
grant execute on function public.resolve_notifications(uuid, text, text) to service_role;

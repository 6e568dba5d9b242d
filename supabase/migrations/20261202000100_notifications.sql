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
  email_error text,
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

  -- A notify job that has not taken its digest yet will take this item too. One that did (it
  -- is running, or pending again for a retry) keeps the items it took, so this one needs the
  -- next digest.
  if exists (select 1 from public.job_queue q
             where q.store_id = p_store_id and q.status = 'pending' and q.job_type = 'notify'
               and not exists (select 1 from public.notification_digests d
                               where d.job_id = q.id)) then
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

-- Triggers: the paths that end with a person in the loop -------------------------------------
-- Each trigger's call is guarded: telling people must never stop the state change that caused
-- it (a reply being held, a job being dead-lettered, a breaker opening). A failure is recorded
-- as a `notify.failed` event for an operator instead.

-- A reply becomes held (the pipeline's hold rules, an in-doubt delivery, a person's handoff):
-- one item per reply. It leaving `held` (sent, discarded, failed, confirmed by its copy)
-- resolves the item, so a digest never asks for a reply that is already dealt with.
create or replace function public.notify_reply_held()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.status = 'held' then
    perform public.notify_people(
      new.store_id, 'held_reply', new.id::text,
      jsonb_build_object('conversation_id', new.conversation_id, 'subject', new.subject,
                         'customer', new.to_address, 'hold_reason', new.hold_reason));
  else
    perform public.resolve_notifications(new.store_id, 'held_reply', new.id::text);
  end if;
  return null;
exception when others then
  insert into public.events (store_id, conversation_id, event_type, detail)
  values (new.store_id, new.conversation_id, 'notify.failed',
          jsonb_build_object('kind', 'held_reply', 'ref', new.id, 'error', sqlerrm,
                             'sqlstate', sqlstate));
  return null;
end;
$$;

create trigger replies_notify_held
  after insert on public.replies
  for each row
  when (new.status = 'held')
  execute function public.notify_reply_held();
create trigger replies_notify_held_change
  after update of status on public.replies
  for each row
  when ((new.status = 'held') <> (old.status = 'held'))
  execute function public.notify_reply_held();

-- A job of a store is dead-lettered (fail_job, an expired lease with no attempts left, a manual
-- update): one item per job. A `notify` job never notifies (no notification about a
-- notification). Nor does a `fetch_mailbox` job: each of its failures counts on the store's IMAP
-- breaker, whose opening is the store's credentials_failed item, and the next interval enqueues
-- a fresh fetch; a dead fetch job would tell the same people the same thing twice.
-- A requeue (dead_letter -> pending) resolves the item.
create or replace function public.notify_job_dead_lettered()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_conversation public.conversations;
begin
  if new.status = 'dead_letter' then
    select * into v_conversation from public.conversations c where c.id = new.conversation_id;
    perform public.notify_people(
      new.store_id, 'dead_letter', new.id::text,
      jsonb_build_object('job_type', new.job_type, 'error', left(new.last_error, 500),
                         'error_type', new.last_error_type, 'attempts', new.attempt_count,
                         'conversation_id', new.conversation_id,
                         'subject', v_conversation.subject,
                         'customer', v_conversation.customer_email));
  else
    perform public.resolve_notifications(new.store_id, 'dead_letter', new.id::text);
  end if;
  return null;
exception when others then
  insert into public.events (store_id, job_id, conversation_id, event_type, detail)
  values (new.store_id, new.id, new.conversation_id, 'notify.failed',
          jsonb_build_object('kind', 'dead_letter', 'ref', new.id, 'error', sqlerrm,
                             'sqlstate', sqlstate));
  return null;
end;
$$;

-- Only transitions into and out of dead_letter, so claims and completions pay nothing.
create trigger job_queue_notify_dead_lettered
  after update of status on public.job_queue
  for each row
  when (new.job_type not in ('notify', 'fetch_mailbox') and new.store_id is not null
        and (new.status = 'dead_letter') <> (old.status = 'dead_letter'))
  execute function public.notify_job_dead_lettered();

-- A dead-lettered digest requeued (scripts/requeue.py, the console) tries its channels again:
-- the permanent failures its earlier attempts recorded are forgotten (what went out stays out).
create or replace function public.notify_digest_requeued()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  update public.notification_digests d
  set email_error = null, webhook_error = null
  where d.job_id = new.id and (d.email_error is not null or d.webhook_error is not null);
  return null;
end;
$$;

create trigger job_queue_notify_requeued
  after update of status on public.job_queue
  for each row
  when (new.job_type = 'notify' and old.status = 'dead_letter' and new.status <> 'dead_letter')
  execute function public.notify_digest_requeued();

-- A store's mailbox (imap:<store>), SMTP (smtp:<store>) or Shopify (shopify:<store>) breaker
-- opens: the store's work of that kind now waits, whatever the cause, and refused credentials
-- are what keeps a breaker open (decision 0005: 401/403 and login refusals count). The breaker is
-- the place that is both true and quiet: it opens after consecutive failures, not on one blip,
-- and it stays one item until it closes again (a success), which resolves the item. The
-- detail carries the store's last fetch error for the mailbox (events_fetch_failed_idx).
create or replace function public.notify_breaker_changed()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_parts text[];
  v_store_id uuid;
  v_last_error text;
begin
  v_parts := regexp_match(new.service,
    '^(imap|smtp|shopify):([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$');
  if v_parts is null then
    return null;  -- not a store's service (claude, a webhook, ...)
  end if;
  v_store_id := v_parts[2]::uuid;
  if new.state = 'closed' then
    perform public.resolve_notifications(v_store_id, 'credentials_failed', new.service);
    return null;
  end if;
  if v_parts[1] = 'imap' then
    select e.detail ->> 'error' into v_last_error
    from public.events e
    where e.store_id = v_store_id and e.event_type = 'fetch.store_failed'
    order by e.created_at desc
    limit 1;
  end if;
  perform public.notify_people(
    v_store_id, 'credentials_failed', new.service,
    jsonb_build_object('service', v_parts[1], 'consecutive_failures', new.consecutive_failures,
                       'opened_at', new.opened_at, 'error', left(v_last_error, 500)));
  return null;
exception when others then
  insert into public.events (event_type, detail)
  values ('notify.failed',
          jsonb_build_object('kind', 'credentials_failed', 'ref', new.service, 'error', sqlerrm,
                             'sqlstate', sqlstate));
  return null;
end;
$$;

create trigger circuit_breakers_notify
  after update of state on public.circuit_breakers
  for each row
  when ((new.state = 'open' and old.state = 'closed')
        or (new.state = 'closed' and old.state <> 'closed'))
  execute function public.notify_breaker_changed();

revoke all on function public.notify_reply_held() from public, anon, authenticated;
revoke all on function public.notify_job_dead_lettered() from public, anon, authenticated;
revoke all on function public.notify_breaker_changed() from public, anon, authenticated;
revoke all on function public.notify_digest_requeued() from public, anon, authenticated;

-- The notify job (worker/notify.py) --------------------------------------------------------------

-- Who a store's digest goes to: its configured addresses, else the emails of its people
-- (owners and agents: anyone who can act on a held reply in the console), else its support
-- address (a digest there is marked Auto-Submitted and never answered; worker/loops.py).
create or replace function public.notification_recipients(p_store_id uuid)
returns text[]
language sql
stable
security definer
set search_path = ''
as $$
  select coalesce(
    (select ns.addresses from public.notification_settings ns where ns.store_id = p_store_id),
    (select array_agg(lower(u.email) order by m.role desc, lower(u.email))
     from public.store_members m join auth.users u on u.id = m.user_id
     where m.store_id = p_store_id and u.email is not null),
    (select array[s.support_email] from public.stores s where s.id = p_store_id))
$$;

-- The digest of one notify job: takes every pending item of the job's store that no digest has
-- taken (in one transaction under the store's notification row lock, so an item is in exactly
-- one digest), records the digest, and returns what the handler sends:
-- {"digest": row, "store": {id, name, support_email}, "recipients": [...],
--  "webhook": bool, "items": [rows, oldest first]}. A retry of the same job returns the items
-- it took the first time and the channels already done (email_sent_at, webhook_sent_at), so a
-- retried digest adds nothing and repeats no channel that went out. Null when the job is not a
-- notify job this worker holds.
create or replace function public.take_notification_digest(p_job_id uuid, p_worker_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_job public.job_queue;
  v_settings public.notification_settings;
  v_digest public.notification_digests;
  v_store public.stores;
begin
  select * into v_job from public.job_queue q
  where q.id = p_job_id and q.job_type = 'notify' and q.status = 'processing'
    and q.locked_by = p_worker_id;
  if not found or v_job.store_id is null then
    return null;
  end if;
  select * into v_store from public.stores s where s.id = v_job.store_id;
  if not found then
    return null;
  end if;
  insert into public.notification_settings (store_id) values (v_job.store_id)
  on conflict (store_id) do nothing;
  select * into v_settings from public.notification_settings ns
  where ns.store_id = v_job.store_id for update;

  insert into public.notification_digests (job_id, store_id) values (p_job_id, v_job.store_id)
  on conflict (job_id) do nothing
  returning * into v_digest;
  if v_digest.job_id is not null then
    -- The first attempt takes the items; a retry keeps them, and anything newer belongs to the
    -- store's next digest job (notify_people scheduled one when this job was already running).
    update public.notifications n
    set digest_job_id = p_job_id
    where n.store_id = v_job.store_id and n.status = 'pending' and n.digest_job_id is null
      and n.resolved_at is null;
  end if;
  update public.notification_digests d
  set item_count = (select count(*) from public.notifications n where n.digest_job_id = p_job_id)
  where d.job_id = p_job_id
  returning * into v_digest;

  return jsonb_build_object(
    'digest', to_jsonb(v_digest),
    'store', jsonb_build_object('id', v_store.id, 'name', v_store.name,
                                'support_email', v_store.support_email),
    'recipients', to_jsonb(public.notification_recipients(v_job.store_id)),
    'webhook', v_settings.webhook_secret_id is not null,
    'items', coalesce((select jsonb_agg(jsonb_build_object(
                                 'id', n.id, 'kind', n.kind, 'ref', n.ref, 'detail', n.detail,
                                 'created_at', n.created_at)
                               order by n.created_at, n.id)
                       from public.notifications n where n.digest_job_id = p_job_id),
                      '[]'::jsonb));
end;
$$;

-- The store's webhook URL from Vault (security definer, like get_store_secrets); null when the
-- store has none.
create or replace function public.get_notification_webhook(p_store_id uuid)
returns text
language sql
stable
security definer
set search_path = ''
as $$
  select ds.decrypted_secret
  from public.notification_settings ns
  join vault.decrypted_secrets ds on ds.id = ns.webhook_secret_id
  where ns.store_id = p_store_id
$$;

-- One channel of a digest went out ('email': {"to": [...], "message_id": "<...>"}; 'webhook':
-- {"status": 200}) or gave up for good (either with {"error": "..."}: a webhook that refuses us
-- must not hold back the email, nor a refused email the webhook). Returns the digest row.
create or replace function public.record_notification_channel(
  p_job_id uuid,
  p_channel text,
  p_detail jsonb default '{}'::jsonb
)
returns public.notification_digests
language plpgsql
set search_path = ''
as $$
declare
  v_digest public.notification_digests;
begin
  if p_channel = 'email' and p_detail ? 'error' then
    update public.notification_digests d
    set email_error = p_detail ->> 'error'
    where d.job_id = p_job_id
    returning * into v_digest;
  elsif p_channel = 'email' then
    update public.notification_digests d
    set email_sent_at = coalesce(d.email_sent_at, now()),
        email_to = coalesce(array(select jsonb_array_elements_text(p_detail -> 'to')), '{}'),
        email_message_id = p_detail ->> 'message_id',
        email_error = null
    where d.job_id = p_job_id
    returning * into v_digest;
  elsif p_channel = 'webhook' then
    update public.notification_digests d
    set webhook_sent_at = case when p_detail ? 'error' then d.webhook_sent_at
                               else coalesce(d.webhook_sent_at, now()) end,
        webhook_error = p_detail ->> 'error'
    where d.job_id = p_job_id
    returning * into v_digest;
  else
    raise exception 'record_notification_channel: unknown channel %', p_channel
      using errcode = '22023';
  end if;
  if v_digest.job_id is not null then
    insert into public.events (store_id, job_id, event_type, detail)
    values (v_digest.store_id, p_job_id,
            case when p_detail ? 'error' then 'notify.channel_failed' else 'notify.channel_sent' end,
            jsonb_build_object('channel', p_channel) || coalesce(p_detail, '{}'::jsonb));
  end if;
  return v_digest;
end;
$$;

-- The digest is done: its items are sent and the job completes, in one transaction. Returns
-- complete_job's answer (false: the lease was lost; then nothing changes).
create or replace function public.finish_notification_digest(
  p_job_id uuid,
  p_worker_id text,
  p_result jsonb default null
)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_store_id uuid;
begin
  if not public.complete_job(p_job_id, p_worker_id, p_result) then
    return false;
  end if;
  update public.notifications n
  set status = 'sent', sent_at = now()
  where n.digest_job_id = p_job_id and n.status = 'pending';
  update public.notification_digests d set finished_at = now()
  where d.job_id = p_job_id
  returning d.store_id into v_store_id;
  insert into public.events (store_id, job_id, event_type, detail)
  values (v_store_id, p_job_id, 'notify.sent', coalesce(p_result, '{}'::jsonb));
  return true;
end;
$$;

-- Settings: the CLI (service_role) and the console (owners) -----------------------------------

-- What a store's people see of its settings: the effective recipients, the timing and whether
-- a webhook is set (its hint, never the URL).
create or replace function public.notification_settings_view(p_store_id uuid)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'store_id', s.id,
    'addresses', ns.addresses,
    'recipients', to_jsonb(public.notification_recipients(s.id)),
    'digest_interval_minutes', coalesce(ns.digest_interval_minutes, 15),
    'digest_wait_seconds', coalesce(ns.digest_wait_seconds, 60),
    'webhook', ns.webhook_secret_id is not null,
    'webhook_hint', ns.webhook_hint)
  from public.stores s
  left join public.notification_settings ns on ns.store_id = s.id
  where s.id = p_store_id
$$;

-- Applies p_changes to a store's notification settings; keys: addresses (array of emails, or
-- null for the default), digest_interval_minutes, digest_wait_seconds, webhook_url (a string
-- sets it, written to Vault; null or '' removes it). Raises 22023 listing every problem.
-- Security definer: writes Vault. Called by the two entry points below only.
create or replace function public.notification_settings_apply(p_store_id uuid, p_changes jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.notification_settings;
  v_problems text[] := '{}'::text[];
  v_unknown text[];
  v_addresses text[];
  v_url text;
  v_host text;
begin
  if not exists (select 1 from public.stores where id = p_store_id) then
    raise exception 'store % not found', p_store_id using errcode = 'PT404';
  end if;
  if jsonb_typeof(p_changes) is distinct from 'object' then
    raise exception 'notification settings must be a JSON object' using errcode = '22023';
  end if;
  select array_agg(k order by k) into v_unknown from jsonb_object_keys(p_changes) k
  where k not in ('addresses', 'digest_interval_minutes', 'digest_wait_seconds', 'webhook_url');
  if v_unknown is not null then
    v_problems := v_problems || ('unknown keys: ' || array_to_string(v_unknown, ', '));
  end if;

  insert into public.notification_settings (store_id) values (p_store_id)
  on conflict (store_id) do nothing;
  select * into v_row from public.notification_settings where store_id = p_store_id for update;

  if p_changes ? 'addresses' then
    if jsonb_typeof(p_changes -> 'addresses') = 'null' then
      v_row.addresses := null;
    elsif jsonb_typeof(p_changes -> 'addresses') = 'array' then
      select array_agg(distinct lower(btrim(a)) order by lower(btrim(a))) into v_addresses
      from jsonb_array_elements_text(p_changes -> 'addresses') a where btrim(a) <> '';
      if v_addresses is null then
        v_row.addresses := null;
      elsif cardinality(v_addresses) > 20 then
        v_problems := v_problems || 'addresses: at most 20'::text;
      elsif exists (select 1 from unnest(v_addresses) a
                    where a !~ '^[^@\s<>,;"]+@[^@\s<>,;"]+\.[^@\s<>,;"]+$') then
        v_problems := v_problems || ('addresses: not an email address: ' || (
          select string_agg(a, ', ') from unnest(v_addresses) a
          where a !~ '^[^@\s<>,;"]+@[^@\s<>,;"]+\.[^@\s<>,;"]+$'));
      else
        v_row.addresses := v_addresses;
      end if;
    else
      v_problems := v_problems || 'addresses must be a list of email addresses'::text;
    end if;
  end if;
  if p_changes ? 'digest_interval_minutes' then
    if jsonb_typeof(p_changes -> 'digest_interval_minutes') = 'number'
       and (p_changes ->> 'digest_interval_minutes') ~ '^[0-9]+$'
       and (p_changes ->> 'digest_interval_minutes')::numeric between 1 and 1440 then
      v_row.digest_interval_minutes := (p_changes ->> 'digest_interval_minutes')::int;
    else
      v_problems := v_problems || 'digest_interval_minutes must be 1 to 1440'::text;
    end if;
  end if;
  if p_changes ? 'digest_wait_seconds' then
    if jsonb_typeof(p_changes -> 'digest_wait_seconds') = 'number'
       and (p_changes ->> 'digest_wait_seconds') ~ '^[0-9]+$'
       and (p_changes ->> 'digest_wait_seconds')::numeric between 0 and 3600 then
      v_row.digest_wait_seconds := (p_changes ->> 'digest_wait_seconds')::int;
    else
      v_problems := v_problems || 'digest_wait_seconds must be 0 to 3600'::text;
    end if;
  end if;
  if p_changes ? 'webhook_url' then
    v_url := nullif(btrim(coalesce(p_changes ->> 'webhook_url', '')), '');
    if jsonb_typeof(p_changes -> 'webhook_url') not in ('string', 'null') then
      v_problems := v_problems || 'webhook_url must be a URL or null'::text;
    elsif v_url is not null then
      v_host := substring(v_url from '^https?://([^/:?#]+)');
      if v_host is null or length(v_url) > 2000 or v_url ~ '\s' then
        v_problems := v_problems || 'webhook_url must be an http(s) URL'::text;
      elsif v_url !~ '^https://' and not public.is_loopback_host(v_host) then
        -- The URL is a credential and the digest names customers: never in clear text,
        -- except to this machine (tests, the demo).
        v_problems := v_problems || 'webhook_url must use https'::text;
      end if;
    end if;
  end if;
  if cardinality(v_problems) > 0 then
    raise exception 'invalid notification settings'
      using errcode = '22023', detail = array_to_string(v_problems, '; ');
  end if;

  if p_changes ? 'webhook_url' then
    if v_url is null then
      if v_row.webhook_secret_id is not null then
        delete from vault.secrets where id = v_row.webhook_secret_id;
      end if;
      v_row.webhook_secret_id := null;
      v_row.webhook_hint := null;
    else
      v_row.webhook_secret_id := public.store_put_secret(
        v_row.webhook_secret_id, v_url, p_store_id, 'notification_webhook',
        'notification webhook URL');
      v_row.webhook_hint := v_host || ' …' || right(v_url, 4);
    end if;
  end if;
  update public.notification_settings set
    addresses = v_row.addresses,
    digest_interval_minutes = v_row.digest_interval_minutes,
    digest_wait_seconds = v_row.digest_wait_seconds,
    webhook_secret_id = v_row.webhook_secret_id,
    webhook_hint = v_row.webhook_hint
  where store_id = p_store_id;
  return public.notification_settings_view(p_store_id);
end;
$$;

-- The stores CLI (service_role).
create or replace function public.admin_set_notification_settings(
  p_store_id uuid,
  p_changes jsonb
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  return public.notification_settings_apply(p_store_id, p_changes);
end;
$$;

-- The console: a store's people read its notification settings and recent notifications;
-- owners and operators change them (like console_update_store).
create or replace function public.console_notifications(p_store_id uuid, p_limit int default 50)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  if auth.uid() is null then
    raise exception 'not signed in' using errcode = '42501';
  end if;
  if not exists (select 1 from public.stores where id = p_store_id) then
    raise exception 'store % not found', p_store_id using errcode = 'PT404';
  end if;
  if public.console_role_in(p_store_id) is null then
    raise exception 'not one of the store''s people' using errcode = '42501';
  end if;
  return jsonb_build_object(
    'settings', public.notification_settings_view(p_store_id),
    'items', coalesce((select jsonb_agg(to_jsonb(n) - 'digest_job_id' order by n.created_at desc)
                       from (select * from public.notifications
                             where store_id = p_store_id
                             order by created_at desc
                             limit least(greatest(coalesce(p_limit, 50), 1), 200)) n),
                      '[]'::jsonb));
end;
$$;

create or replace function public.console_set_notification_settings(
  p_store_id uuid,
  p_changes jsonb
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
  v_detail text;
begin
  if auth.uid() is null then
    raise exception 'not signed in' using errcode = '42501';
  end if;
  if not exists (select 1 from public.stores where id = p_store_id) then
    raise exception 'store % not found', p_store_id using errcode = 'PT404';
  end if;
  if coalesce(public.console_role_in(p_store_id), '') not in ('owner', 'operator') then
    raise exception 'only the store''s owners change its settings' using errcode = '42501';
  end if;
  begin
    v_result := public.notification_settings_apply(p_store_id, p_changes);
  exception when sqlstate '22023' then
    -- PostgREST answers PTnnn with status nnn: a person's bad value is a 400 with its list.
    get stacked diagnostics v_detail = pg_exception_detail;
    raise exception '%: %', sqlerrm, v_detail using errcode = 'PT400';
  end;
  insert into public.events (store_id, event_type, detail)
  values (p_store_id, 'console.notifications_updated',
          jsonb_build_object('keys', (select jsonb_agg(k) from jsonb_object_keys(p_changes) k),
                             'by', public.console_actor()));
  return v_result;
end;
$$;

revoke all on function public.notification_recipients(uuid) from public, anon, authenticated;
grant execute on function public.notification_recipients(uuid) to service_role;
revoke all on function public.take_notification_digest(uuid, text) from public, anon, authenticated;
grant execute on function public.take_notification_digest(uuid, text) to service_role;
revoke all on function public.get_notification_webhook(uuid) from public, anon, authenticated;
grant execute on function public.get_notification_webhook(uuid) to service_role;
revoke all on function public.record_notification_channel(uuid, text, jsonb)
  from public, anon, authenticated;
grant execute on function public.record_notification_channel(uuid, text, jsonb) to service_role;
revoke all on function public.finish_notification_digest(uuid, text, jsonb)
  from public, anon, authenticated;
grant execute on function public.finish_notification_digest(uuid, text, jsonb) to service_role;
revoke all on function public.notification_settings_view(uuid) from public, anon, authenticated;
grant execute on function public.notification_settings_view(uuid) to service_role;
revoke all on function public.notification_settings_apply(uuid, jsonb)
  from public, anon, authenticated, service_role;
revoke all on function public.admin_set_notification_settings(uuid, jsonb)
  from public, anon, authenticated;
grant execute on function public.admin_set_notification_settings(uuid, jsonb) to service_role;
revoke all on function public.console_notifications(uuid, int) from public, anon;
grant execute on function public.console_notifications(uuid, int) to authenticated, service_role;
revoke all on function public.console_set_notification_settings(uuid, jsonb) from public, anon;
grant execute on function public.console_set_notification_settings(uuid, jsonb)
  to authenticated, service_role;

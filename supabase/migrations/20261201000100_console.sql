-- The support console (issue 11): the people in the loop.
--
-- Tenancy is decided here, never in Python: the console runs every call as the signed-in person
-- (role `authenticated` with their JWT claims, as PostgREST does), so RLS and the checks below
-- decide what they see and may do.
--
-- Who is who:
-- - store_members(store_id, user_id, role owner|agent): the people of a store. stores.owner_id
--   stays (the account that created the store, set by the store CLI); a trigger mirrors it into
--   store_members as an owner, so policies have one rule: membership.
-- - Operators run the deployment: `app_metadata.operator = true` in their token (only the Auth
--   admin API can set app_metadata, so a person cannot make themselves one). They see every
--   store.
--
-- Reads are security invoker functions over RLS. Actions are security definer functions that
-- check membership explicitly (they write rows and enqueue jobs the role may not touch itself),
-- raise 42501 (403) for a row of another store, PT404 for an unknown one, PT409 when the state
-- moved on (already sent, closed): PostgREST answers PTnnn with HTTP status nnn.
--
-- Sending a held reply goes through the automatic replies' exactly-once path: the action moves
-- the reply to `drafted` and enqueues one `send_reply` job (idempotency key per reply) in the
-- same transaction; the worker's send_reply handler runs begin_send -> SMTP -> finish_send.

-- Members --------------------------------------------------------------------------------------

create table public.store_members (
  store_id uuid not null references public.stores (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  role text not null check (role in ('owner', 'agent')),
  created_at timestamptz not null default now(),
  primary key (store_id, user_id)
);
create index store_members_user_idx on public.store_members (user_id, store_id);

create or replace function public.console_mirror_owner()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.owner_id is not null then
    insert into public.store_members (store_id, user_id, role)
    values (new.id, new.owner_id, 'owner')
    on conflict (store_id, user_id) do update set role = 'owner';
  end if;
  return null;
end;
$$;

create trigger stores_mirror_owner
  after insert or update of owner_id on public.stores
  for each row execute function public.console_mirror_owner();

insert into public.store_members (store_id, user_id, role)
select id, owner_id, 'owner' from public.stores where owner_id is not null
on conflict do nothing;

-- Who the caller is (helpers the policies use) -------------------------------------------------

create or replace function public.console_is_operator()
returns boolean
language sql
stable
set search_path = ''
as $$
  select coalesce((auth.jwt() -> 'app_metadata' ->> 'operator')::boolean, false)
$$;

-- Security definer: store_members has RLS of its own, and a policy that read it as the caller
-- would recurse.
create or replace function public.console_member_store_ids()
returns setof uuid
language sql
stable
security definer
set search_path = ''
as $$
  select m.store_id from public.store_members m where m.user_id = auth.uid()
$$;

-- 'operator', 'owner', 'agent' or null (not one of the store's people).
create or replace function public.console_role_in(p_store_id uuid)
returns text
language sql
stable
security definer
set search_path = ''
as $$
  select case when public.console_is_operator() then 'operator'
              else (select m.role from public.store_members m
                    where m.store_id = p_store_id and m.user_id = auth.uid()) end
$$;

-- Row level security by membership ---------------------------------------------------------------

alter table public.store_members enable row level security;
revoke all on public.store_members from public, anon, authenticated, service_role;
grant select on public.store_members to authenticated;
grant select, insert, update, delete on public.store_members to service_role;
create policy store_members_service_role on public.store_members
  for all to service_role using (true) with check (true);
create policy store_members_member_select on public.store_members
  for select to authenticated
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));

-- The base policies keep their names (and their read-only commands); their rule becomes
-- membership. `(select ...)` runs each helper once per statement, not once per row.
alter policy stores_owner_select on public.stores
  using ((select public.console_is_operator())
         or id in (select public.console_member_store_ids()));
alter policy mailbox_state_owner_select on public.mailbox_state
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));
alter policy conversations_owner_select on public.conversations
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));
alter policy messages_owner_select on public.messages
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));
alter policy replies_owner_select on public.replies
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));
alter policy credit_ledger_owner_select on public.credit_ledger
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));
alter policy events_owner_select on public.events
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));
alter policy job_queue_owner_read on public.job_queue
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));


-- Conversation status, kept current by triggers ------------------------------------------------

-- A stored status (rather than one derived per read) so a store's list filters by an index with
-- 10,000 conversations: open (being processed), waiting (a reply is held for a person),
-- answered_auto, answered_human, closed, spam, skipped, failed.
alter table public.conversations
  add column status text not null default 'open'
    check (status in ('open', 'waiting', 'answered_auto', 'answered_human', 'closed', 'spam',
                      'skipped', 'failed')),
  add column status_at timestamptz not null default now(),
  -- Order numbers the customer wrote (#1001), for the search box.
  add column order_numbers text[] not null default '{}';

create index conversations_store_status_recent_idx
  on public.conversations (store_id, status, last_message_at desc, id);
create index conversations_waiting_idx
  on public.conversations (last_message_at desc, id) where status = 'waiting';
create index conversations_order_numbers_idx
  on public.conversations using gin (order_numbers);
create index conversations_store_customer_idx
  on public.conversations (store_id, customer_email);

-- Who sent a reply: null for the automatic pipeline, else the person (auth.users id).
-- 'discarded': a held reply a person decided not to send.
alter table public.replies
  add column author_id uuid,
  add column author_email text,
  drop constraint replies_status_check,
  add constraint replies_status_check
    check (status in ('drafted', 'sending', 'sent', 'held', 'failed', 'discarded'));

-- Console actions are read back per conversation; nothing else reads events that way, so the
-- index covers console events only and the queue's transitions do not pay for it.
create index events_console_conversation_idx
  on public.events (conversation_id, id) where event_type like 'console.%';
-- A store's last fetch failure for the health page, without walking all of its events.
create index events_fetch_failed_idx
  on public.events (store_id, created_at desc) where event_type = 'fetch.store_failed';

create or replace function public.console_status_from_reply()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  update public.conversations
  set status = case new.status
                 when 'held' then 'waiting'
                 when 'sent' then case when new.author_id is null then 'answered_auto'
                                       else 'answered_human' end
                 when 'failed' then 'failed'
                 when 'discarded' then 'closed'
               end,
      status_at = now()
  where id = new.conversation_id;
  return null;
end;
$$;

create trigger replies_conversation_status
  after insert or update of status on public.replies
  for each row
  when (new.status in ('held', 'sent', 'failed', 'discarded') and new.conversation_id is not null)
  execute function public.console_status_from_reply();

-- New customer mail reopens the conversation and records the order numbers it mentions.
create or replace function public.console_status_from_message()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  update public.conversations c
  set status = case when new.skip_reason is null then 'open' else 'skipped' end,
      status_at = now(),
      order_numbers = array(
        select distinct n from unnest(c.order_numbers || array(
          select m[1] from regexp_matches(
            coalesce(new.subject, '') || ' ' || left(coalesce(new.body_text, ''), 20000),
            '#\s?([0-9]{3,12})', 'g') as m)) as n
        order by n)
  where c.id = new.conversation_id;
  return null;
end;
$$;

create trigger messages_conversation_status
  after insert on public.messages
  for each row execute function public.console_status_from_message();

-- Outcomes without a reply row arrive as events (the worker records process.*; the queue
-- job.dead_lettered). The WHEN clause keeps the queue's other transitions free of any call.
create or replace function public.console_status_from_event()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  update public.conversations
  set status = case new.event_type
                 when 'process.spam' then 'spam'
                 when 'process.skipped' then 'skipped'
                 else 'failed'
               end,
      status_at = now()
  where id = new.conversation_id;
  return null;
end;
$$;

create trigger events_conversation_status
  after insert on public.events
  for each row
  when (new.event_type in ('process.spam', 'process.skipped', 'job.dead_lettered')
        and new.conversation_id is not null)
  execute function public.console_status_from_event();

-- Existing rows (none before the first deploy; kept so the migration is honest).
update public.conversations c
set status = case r.status
               when 'held' then 'waiting'
               when 'sent' then 'answered_auto'
               when 'failed' then 'failed'
               else c.status
             end
from (select distinct on (conversation_id) conversation_id, status
      from public.replies where conversation_id is not null
      order by conversation_id, created_at desc) r
where r.conversation_id = c.id;

-- Plumbing for the actions ---------------------------------------------------------------------

-- The store of a console object ignoring RLS, so an action can tell 404 (unknown) from 403
-- (another store's). Reveals only a store id, and only to the actions below.
create or replace function public.console_store_of(p_kind text, p_id uuid)
returns uuid
language sql
stable
security definer
set search_path = ''
as $$
  select case p_kind
           when 'conversation' then (select store_id from public.conversations where id = p_id)
           when 'reply' then (select store_id from public.replies where id = p_id)
           when 'job' then (select store_id from public.job_queue where id = p_id)
         end
$$;

-- Raises unless the caller may act on the store (any role in `p_roles`); returns the role.
create or replace function public.console_require(p_kind text, p_id uuid, p_roles text[])
returns text
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_store uuid := public.console_store_of(p_kind, p_id);
  v_role text;
begin
  if auth.uid() is null then
    raise exception 'not signed in' using errcode = '42501';
  end if;
  if v_store is null then
    raise exception '% % not found', p_kind, p_id using errcode = 'PT404';
  end if;
  v_role := public.console_role_in(v_store);
  if v_role is null then
    raise exception '% % belongs to a store you are not a member of', p_kind, p_id
      using errcode = '42501';
  end if;
  if not v_role = any (p_roles) then
    raise exception 'a store''s % may not do this', v_role using errcode = '42501';
  end if;
  return v_role;
end;
$$;

-- Who did it, for the events every action writes.
create or replace function public.console_actor()
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object('user_id', auth.uid(), 'email', auth.email(),
                            'operator', public.console_is_operator())
$$;

-- The send_reply job for a reply drafted by a person: one per reply, whatever retries.
create or replace function public.console_enqueue_send(p_reply public.replies, p_job_id uuid)
returns uuid
language sql
security definer
set search_path = ''
as $$
  select public.enqueue_job('send_reply', jsonb_build_object('reply_id', p_reply.id),
                            'send_reply:' || p_reply.id::text || ':' || p_job_id::text,
                            p_reply.store_id, p_reply.conversation_id, 10)
$$;

-- Reads (security invoker: RLS decides) ----------------------------------------------------------

create or replace function public.console_me()
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'user_id', auth.uid(),
    'email', auth.email(),
    'operator', public.console_is_operator(),
    'memberships', coalesce((
      select jsonb_agg(jsonb_build_object('store_id', m.store_id, 'store_name', s.name,
                                          'role', m.role) order by s.name)
      from public.store_members m join public.stores s on s.id = m.store_id
      where m.user_id = auth.uid()), '[]'::jsonb))
$$;

create or replace function public.console_stores()
returns jsonb
language sql
stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object(
    'id', s.id, 'name', s.name, 'support_email', s.support_email, 'active', s.active,
    'credits', s.credits, 'reply_mode', s.reply_mode, 'reply_tone', s.reply_tone,
    'reply_signature', s.reply_signature, 'reply_language', s.reply_language,
    'role', public.console_role_in(s.id),
    'waiting', (select count(*) from public.conversations c
                where c.store_id = s.id and c.status = 'waiting'),
    'waiting_for_credits', (select count(*) from public.conversations c
                            where c.store_id = s.id and c.status = 'waiting_credits'),
    'last_fetch_at', (select max(ms.updated_at) from public.mailbox_state ms
                      where ms.store_id = s.id),
    'last_error', (select jsonb_build_object('at', e.created_at, 'detail', e.detail)
                   from public.events e
                   where e.store_id = s.id and e.event_type = 'fetch.store_failed'
                   order by e.created_at desc limit 1)
  ) order by s.name), '[]'::jsonb)
  from public.stores s
$$;

-- One page of conversations, newest activity first; keyset pagination by (last_message_at, id).
create or replace function public.console_conversations(
  p_store_id uuid default null,
  p_status text default null,
  p_q text default null,
  p_limit int default 50,
  p_before_at timestamptz default null,
  p_before_id uuid default null
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_limit int := least(greatest(coalesce(p_limit, 50), 1), 200);
  v_q text := nullif(btrim(coalesce(p_q, '')), '');
  v_order text := substring(v_q from '^#?\s*([0-9]{3,12})$');
  v_items jsonb;
begin
  with page as (
    select c.*
    from public.conversations c
    where (p_store_id is null or c.store_id = p_store_id)
      and (p_status is null or c.status = p_status)
      and (v_q is null
           or c.customer_email ilike '%' || v_q || '%'
           or c.subject ilike '%' || v_q || '%'
           or (v_order is not null and c.order_numbers @> array[v_order]))
      and (p_before_at is null
           or (c.last_message_at, c.id) < (p_before_at, coalesce(p_before_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)))
    order by c.last_message_at desc, c.id desc
    limit v_limit + 1
  )
  select jsonb_agg(jsonb_build_object(
           'id', p.id, 'store_id', p.store_id, 'store_name', s.name,
           'customer_email', p.customer_email, 'subject', p.subject, 'status', p.status,
           'status_at', p.status_at, 'last_message_at', p.last_message_at,
           'created_at', p.created_at, 'order_numbers', to_jsonb(p.order_numbers),
           'hold_reason', (select r.hold_reason from public.replies r
                           where r.conversation_id = p.id and r.status = 'held'
                           order by r.created_at desc limit 1))
         order by p.last_message_at desc, p.id desc)
  into v_items
  from page p join public.stores s on s.id = p.store_id;

  v_items := coalesce(v_items, '[]'::jsonb);
  return jsonb_build_object(
    'items', case when jsonb_array_length(v_items) > v_limit
                  then v_items - v_limit else v_items end,
    'next', case when jsonb_array_length(v_items) > v_limit
                 then jsonb_build_object(
                        'before_at', v_items -> (v_limit - 1) -> 'last_message_at',
                        'before_id', v_items -> (v_limit - 1) -> 'id') end);
end;
$$;

-- The needs-a-person queue: held replies with their reason, newest conversations first, and the
-- count per store.
create or replace function public.console_needs_person(
  p_store_id uuid default null,
  p_limit int default 50
)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'items', coalesce((
      select jsonb_agg(jsonb_build_object(
               'conversation_id', c.id, 'store_id', c.store_id, 'store_name', s.name,
               'customer_email', c.customer_email, 'subject', c.subject,
               'last_message_at', c.last_message_at,
               'reply_id', r.id, 'hold_reason', r.hold_reason, 'intent', r.intent,
               'draft', left(r.body_text, 400))
             order by c.last_message_at desc, c.id desc)
      from (select * from public.conversations c0
            where c0.status = 'waiting' and (p_store_id is null or c0.store_id = p_store_id)
            order by c0.last_message_at desc, c0.id desc
            limit least(greatest(coalesce(p_limit, 50), 1), 200)) c
      join public.stores s on s.id = c.store_id
      left join lateral (select * from public.replies r0
                         where r0.conversation_id = c.id and r0.status = 'held'
                         order by r0.created_at desc limit 1) r on true), '[]'::jsonb),
    'counts', coalesce((
      select jsonb_agg(jsonb_build_object('store_id', s.id, 'store_name', s.name,
                                          'waiting', w.n) order by s.name)
      from public.stores s
      cross join lateral (select count(*) as n from public.conversations c
                          where c.store_id = s.id and c.status = 'waiting') w
      where p_store_id is null or s.id = p_store_id), '[]'::jsonb))
$$;

-- A conversation's thread (customer messages and replies in order), classification, order
-- lookups and the timeline of events. Null when the caller may not see it.
create or replace function public.console_conversation(p_conversation_id uuid)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_conv public.conversations;
  v_job_ids uuid[];
begin
  select * into v_conv from public.conversations where id = p_conversation_id;
  if not found then
    -- Another store's conversation is invisible under RLS: tell it from an unknown id.
    perform public.console_require('conversation', p_conversation_id,
                                   array['operator', 'owner', 'agent']);
    return null;
  end if;

  -- The conversation's jobs, found by their keys (the queue has no index by conversation).
  select coalesce(array_agg(distinct j.id), '{}') into v_job_ids
  from (
    select q.id from public.messages m
    join public.job_queue q
      on q.idempotency_key = 'email:' || m.store_id::text || ':' || m.message_id
    where m.conversation_id = v_conv.id
    union all
    select r.job_id from public.replies r where r.conversation_id = v_conv.id and r.job_id is not null
    union all
    select (e.detail ->> 'job_id')::uuid from public.events e
    where e.conversation_id = v_conv.id and e.event_type like 'console.%'
      and e.detail ? 'job_id'
  ) j(id);

  return jsonb_build_object(
    'conversation', to_jsonb(v_conv),
    'store', (select jsonb_build_object('id', s.id, 'name', s.name,
                                        'support_email', s.support_email,
                                        'role', public.console_role_in(s.id))
              from public.stores s where s.id = v_conv.store_id),
    'thread', coalesce((
      select jsonb_agg(t.item order by t.at, t.kind_order)
      from (
        select m.received_at as at, 0 as kind_order, jsonb_build_object(
                 'kind', 'customer', 'id', m.id, 'at', m.received_at,
                 'from_address', m.from_address, 'from_name', m.from_name,
                 'subject', m.subject, 'body_text', m.body_text,
                 'message_id', m.message_id, 'skip_reason', m.skip_reason) as item
        from public.messages m where m.conversation_id = v_conv.id
        union all
        select coalesce(r.sent_at, r.created_at), 1, jsonb_build_object(
                 'kind', 'reply', 'id', r.id, 'at', coalesce(r.sent_at, r.created_at),
                 'status', r.status, 'to_address', r.to_address, 'subject', r.subject,
                 'body_text', r.body_text, 'hold_reason', r.hold_reason,
                 'intent', r.intent, 'language', r.language, 'model', r.model,
                 'error', r.error, 'smtp_message_id', r.smtp_message_id,
                 'in_reply_to_message', r.message_id,
                 'answered_by', r.answered_by, 'answered_at', r.answered_at,
                 'author', case when r.author_id is null then 'automatic'
                                else coalesce(r.author_email, r.author_id::text) end)
        from public.replies r where r.conversation_id = v_conv.id
      ) t), '[]'::jsonb),
    'classification', (
      select e.detail from public.events e
      where e.job_id = any (v_job_ids) and e.event_type = 'process.classified'
      order by e.id desc limit 1),
    'orders', coalesce((
      select jsonb_agg(e.detail order by e.id) from public.events e
      where e.job_id = any (v_job_ids) and e.event_type = 'process.shopify_lookup'), '[]'),
    'events', coalesce((
      select jsonb_agg(jsonb_build_object('at', e.created_at, 'type', e.event_type,
                                          'job_id', e.job_id, 'detail', e.detail)
                       order by e.created_at, e.id)
      from (select * from public.events e0 where e0.job_id = any (v_job_ids)
            union
            select * from public.events e1
            where e1.conversation_id = v_conv.id and e1.event_type like 'console.%') e),
      '[]'::jsonb));
end;
$$;

create or replace function public.console_dead_letters(
  p_store_id uuid default null,
  p_limit int default 100
)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'id', q.id, 'job_type', q.job_type, 'store_id', q.store_id,
           'store_name', (select s.name from public.stores s where s.id = q.store_id),
           'conversation_id', q.conversation_id, 'attempt_count', q.attempt_count,
           'max_attempts', q.max_attempts, 'last_error', q.last_error,
           'last_error_type', q.last_error_type, 'dead_lettered_at', q.dead_lettered_at,
           'created_at', q.created_at, 'payload', q.payload)
         order by q.dead_lettered_at desc, q.id), '[]'::jsonb)
  from (select * from public.job_queue q0
        where q0.status = 'dead_letter' and (p_store_id is null or q0.store_id = p_store_id)
        order by q0.dead_lettered_at desc, q0.id
        limit least(greatest(coalesce(p_limit, 100), 1), 500)) q
$$;

-- Operators only: queue health over the last hours, one point per metrics window. Queue
-- health belongs to no store, so its tables stay closed to people; this definer function checks
-- the operator flag itself.
create or replace function public.console_queue_metrics(p_hours int default 24)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  if not public.console_is_operator() then
    raise exception 'queue metrics are for operators' using errcode = '42501';
  end if;
  return jsonb_build_object(
    'points', coalesce((
      select jsonb_agg(jsonb_build_object(
               'window_start', w.window_start, 'completed', w.completed,
               'retried', w.retried, 'dead_lettered', w.dead_lettered,
               'p95_ms', w.p95_ms, 'depth', w.depth) order by w.window_start)
      from (select m.window_start,
                   sum(m.completed_in_window)::int as completed,
                   sum(m.retried_in_window)::int as retried,
                   sum(m.dead_lettered_in_window)::int as dead_lettered,
                   max(m.p95_processing_ms) as p95_ms,
                   sum(m.pending_count + m.processing_count)::int as depth
            from public.queue_metrics m
            where m.window_start >= now() - make_interval(
                    hours => least(greatest(coalesce(p_hours, 24), 1), 168))
            group by m.window_start) w), '[]'::jsonb),
    'breakers', coalesce((
      select jsonb_agg(jsonb_build_object('service', b.service, 'state', b.state,
                                          'open_until', b.open_until,
                                          'last_failure_at', b.last_failure_at)
                       order by b.service)
      from public.circuit_breakers b), '[]'::jsonb));
end;
$$;

-- Actions (security definer, explicit membership checks) ----------------------------------------

-- Send a held reply, optionally with an edited body: held -> drafted + one send_reply job. The
-- credit is taken now (charge_for_send): a draft held for a person was refunded when it was held;
-- one held in doubt (it may have gone out) still carries its charge and is not charged twice. A
-- store without credits is refused (PT409) with a message saying so: the person adds credits and
-- sends again, nothing is queued behind their back. A draft without text (a customer over the
-- reply cap is held without one) needs the person's text. A second call finds it no longer held:
-- PT409.
create or replace function public.console_send_reply(p_reply_id uuid, p_body text default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_reply public.replies;
  v_body text := nullif(btrim(coalesce(p_body, '')), '');
  v_charge uuid;
  v_job uuid;
begin
  perform public.console_require('reply', p_reply_id, array['operator', 'owner', 'agent']);
  select * into v_reply from public.replies where id = p_reply_id for update;
  if v_reply.status <> 'held' then
    raise exception 'reply % is already %', p_reply_id, v_reply.status using errcode = 'PT409';
  end if;
  if v_body is null and coalesce(btrim(v_reply.body_text), '') = '' then
    raise exception 'this reply has no text yet; write it, then send' using errcode = 'PT400';
  end if;
  v_charge := public.charge_for_send(v_reply.store_id, v_reply.job_id, v_reply.to_address);
  if v_charge is null then
    raise exception 'the store has no credits left; add credits, then send this reply'
      using errcode = 'PT409';
  end if;
  update public.replies
  set status = 'drafted', body_text = coalesce(v_body, body_text), error = null,
      job_id = v_charge, author_id = auth.uid(), author_email = auth.email()
  where id = p_reply_id
  returning * into v_reply;
  v_job := public.console_enqueue_send(v_reply, v_reply.job_id);
  update public.conversations set status = 'open', status_at = now()
  where id = v_reply.conversation_id;
  insert into public.events (store_id, job_id, conversation_id, message_id, event_type, detail)
  values (v_reply.store_id, v_job, v_reply.conversation_id, v_reply.message_id,
          'console.reply_approved',
          jsonb_build_object('reply_id', v_reply.id, 'job_id', v_job, 'edited', v_body is not null,
                             'by', public.console_actor()));
  return jsonb_build_object('reply_id', v_reply.id, 'job_id', v_job, 'status', v_reply.status);
end;
$$;

-- A reply written by a person to the conversation's latest customer message. A held draft of that
-- message is replaced; a failed or discarded one is drafted again (it never went out); each is
-- charged now (charge_for_send), except a reply held in doubt, which keeps its charge and its
-- Message-ID; a reply already drafted, sending or sent answers PT409.
create or replace function public.console_write_reply(p_conversation_id uuid, p_body text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_conv public.conversations;
  v_store public.stores;
  v_message public.messages;
  v_reply public.replies;
  v_body text := nullif(btrim(coalesce(p_body, '')), '');
  v_reply_id uuid;
  v_job uuid;
  v_charge_job uuid;
  v_domain text;
begin
  perform public.console_require('conversation', p_conversation_id,
                                 array['operator', 'owner', 'agent']);
  if v_body is null then
    raise exception 'a reply needs a body' using errcode = 'PT400';
  end if;
  select * into v_conv from public.conversations where id = p_conversation_id for update;
  select * into v_store from public.stores where id = v_conv.store_id;
  select * into v_message from public.messages
  where conversation_id = p_conversation_id
  order by received_at desc, id desc limit 1;
  if not found then
    raise exception 'conversation % has no customer message', p_conversation_id
      using errcode = 'PT409';
  end if;
  select * into v_reply from public.replies where message_id = v_message.id for update;
  if found and v_reply.status not in ('held', 'failed', 'discarded') then
    raise exception 'the latest message is already answered (reply %)', v_reply.status
      using errcode = 'PT409';
  end if;

  v_reply_id := coalesce(v_reply.id, gen_random_uuid());
  v_domain := split_part(v_store.support_email, '@', 2);
  -- The charge that stands for this reply (one held in doubt), else a new one keyed by a fresh
  -- id that also names the new Message-ID.
  v_charge_job := public.charge_for_send(
    v_store.id, case when v_reply.status = 'held' then v_reply.job_id end,
    coalesce(v_message.from_address, v_conv.customer_email));
  if v_charge_job is null then
    raise exception 'the store % has no credits left; add credits, then send this reply',
      v_store.name using errcode = 'PT409';
  end if;

  insert into public.replies as r (
    id, store_id, conversation_id, message_id, job_id, status, to_address, subject, body_text,
    smtp_message_id, in_reply_to, "references", author_id, author_email
  )
  values (
    v_reply_id, v_store.id, v_conv.id, v_message.id, v_charge_job, 'drafted',
    coalesce(v_message.from_address, v_conv.customer_email),
    'Re: ' || regexp_replace(coalesce(v_message.subject, v_conv.subject, ''),
                             '^\s*((re|aw|sv|fw|fwd|res|enc)\s*:\s*)+', '', 'i'),
    v_body,
    '<reply-' || v_charge_job::text || '@' || v_domain || '>',
    v_message.message_id,
    array(select u.x from (select t.x, min(t.o) as o
                           from unnest(v_message."references" || v_message.message_id)
                                with ordinality as t(x, o) group by t.x) u order by u.o),
    auth.uid(), auth.email()
  )
  on conflict (message_id) do update
  set status = 'drafted', body_text = excluded.body_text, job_id = excluded.job_id,
      smtp_message_id = excluded.smtp_message_id, error = null,
      to_address = excluded.to_address, subject = excluded.subject,
      in_reply_to = excluded.in_reply_to, "references" = excluded."references",
      author_id = excluded.author_id, author_email = excluded.author_email
  returning * into v_reply;

  v_job := public.console_enqueue_send(v_reply, v_charge_job);
  update public.conversations set status = 'open', status_at = now() where id = v_conv.id;
  insert into public.events (store_id, job_id, conversation_id, message_id, event_type, detail)
  values (v_reply.store_id, v_job, v_reply.conversation_id, v_reply.message_id,
          'console.reply_written',
          jsonb_build_object('reply_id', v_reply.id, 'job_id', v_job,
                             'by', public.console_actor()));
  return jsonb_build_object('reply_id', v_reply.id, 'job_id', v_job, 'status', v_reply.status);
end;
$$;

-- Do not send a held reply; its credit goes back. The conversation closes.
create or replace function public.console_discard_reply(p_reply_id uuid, p_note text default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_reply public.replies;
begin
  perform public.console_require('reply', p_reply_id, array['operator', 'owner', 'agent']);
  select * into v_reply from public.replies where id = p_reply_id for update;
  if v_reply.status <> 'held' then
    raise exception 'reply % is already %', p_reply_id, v_reply.status using errcode = 'PT409';
  end if;
  update public.replies
  set status = 'discarded', author_id = auth.uid(), author_email = auth.email()
  where id = p_reply_id returning * into v_reply;
  if v_reply.job_id is not null then
    perform public.release_credit(v_reply.store_id, v_reply.job_id, 'discarded');
  end if;
  insert into public.events (store_id, job_id, conversation_id, message_id, event_type, detail)
  values (v_reply.store_id, v_reply.job_id, v_reply.conversation_id, v_reply.message_id,
          'console.reply_discarded',
          jsonb_build_object('reply_id', v_reply.id, 'note', p_note,
                             'by', public.console_actor()));
  return jsonb_build_object('reply_id', v_reply.id, 'status', v_reply.status);
end;
$$;

-- Close without replying (with a note); held drafts are discarded and refunded.
create or replace function public.console_close_conversation(
  p_conversation_id uuid,
  p_note text default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_conv public.conversations;
  v_reply public.replies;
begin
  perform public.console_require('conversation', p_conversation_id,
                                 array['operator', 'owner', 'agent']);
  select * into v_conv from public.conversations where id = p_conversation_id for update;
  if v_conv.status = 'closed' then
    raise exception 'conversation % is already closed', p_conversation_id
      using errcode = 'PT409';
  end if;
  for v_reply in
    update public.replies
    set status = 'discarded', author_id = auth.uid(), author_email = auth.email()
    where conversation_id = p_conversation_id and status = 'held'
    returning *
  loop
    if v_reply.job_id is not null then
      perform public.release_credit(v_reply.store_id, v_reply.job_id, 'discarded');
    end if;
  end loop;
  update public.conversations set status = 'closed', status_at = now()
  where id = p_conversation_id;
  insert into public.events (store_id, conversation_id, event_type, detail)
  values (v_conv.store_id, v_conv.id, 'console.conversation_closed',
          jsonb_build_object('note', p_note, 'by', public.console_actor()));
  return jsonb_build_object('conversation_id', v_conv.id, 'status', 'closed');
end;
$$;

-- Requeue: operators, and owners for their own store's jobs (agents answer mail, they do not
-- run the queue). Same rule as scripts/requeue.py: dead letters only, attempts reset.
create or replace function public.console_requeue_dead_letter(p_job_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_job public.job_queue;
begin
  if not public.console_is_operator() then
    perform public.console_require('job', p_job_id, array['operator', 'owner']);
  end if;
  select * into v_job from public.job_queue where id = p_job_id for update;
  if not found then
    raise exception 'job % not found', p_job_id using errcode = 'PT404';
  end if;
  if not public.requeue_dlq_job(p_job_id, true) then
    if v_job.status = 'dead_letter' and v_job.job_type = 'fetch_mailbox' then
      -- one live fetch job per store (decision 0021): the live one reads the same mailbox
      raise exception 'job %: its store already has a fetch job waiting or running', p_job_id
        using errcode = 'PT409';
    end if;
    raise exception 'job % is %, not dead-lettered', p_job_id, v_job.status
      using errcode = 'PT409';
  end if;
  insert into public.events (store_id, job_id, conversation_id, event_type, detail)
  values (v_job.store_id, v_job.id, v_job.conversation_id, 'console.job_requeued',
          jsonb_build_object('job_id', v_job.id, 'by', public.console_actor()));
  return jsonb_build_object('job_id', v_job.id, 'status', 'pending');
end;
$$;

-- Purge: operators only (deleting evidence of a failure is a deployment decision).
create or replace function public.console_purge_dead_letters(p_job_ids uuid[])
returns int
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count int;
begin
  if not public.console_is_operator() then
    raise exception 'only operators purge dead letters' using errcode = '42501';
  end if;
  v_count := public.purge_dead_letter_jobs(p_job_ids);
  insert into public.events (event_type, detail)
  values ('console.dead_letters_purged',
          jsonb_build_object('job_ids', to_jsonb(p_job_ids), 'purged', v_count,
                             'by', public.console_actor()));
  return v_count;
end;
$$;

-- A store's voice (tone, signature, language, auto-send or draft-only): owners and operators.
-- The table's own checks validate the values (23514 answers 400); other keys are refused.
create or replace function public.console_update_store(p_store_id uuid, p_changes jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_allowed constant text[] := array['reply_tone', 'reply_signature', 'reply_language',
                                     'reply_mode'];
  v_unknown text[];
  v_store public.stores;
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
  if jsonb_typeof(p_changes) is distinct from 'object' then
    raise exception 'changes must be a JSON object' using errcode = 'PT400';
  end if;
  select array_agg(k) into v_unknown
  from jsonb_object_keys(p_changes) k where not k = any (v_allowed);
  if v_unknown is not null then
    raise exception 'these settings cannot be changed here: %', array_to_string(v_unknown, ', ')
      using errcode = 'PT400';
  end if;
  update public.stores
  set reply_tone = case when p_changes ? 'reply_tone' then btrim(p_changes ->> 'reply_tone')
                        else reply_tone end,
      reply_signature = case when p_changes ? 'reply_signature'
                             then nullif(btrim(p_changes ->> 'reply_signature'), '')
                             else reply_signature end,
      reply_language = case when p_changes ? 'reply_language'
                            then btrim(p_changes ->> 'reply_language') else reply_language end,
      reply_mode = case when p_changes ? 'reply_mode' then p_changes ->> 'reply_mode'
                        else reply_mode end
  where id = p_store_id
  returning * into v_store;
  insert into public.events (store_id, event_type, detail)
  values (p_store_id, 'console.store_updated',
          jsonb_build_object('changes', p_changes, 'by', public.console_actor()));
  return jsonb_build_object('id', v_store.id, 'reply_tone', v_store.reply_tone,
                            'reply_signature', v_store.reply_signature,
                            'reply_language', v_store.reply_language,
                            'reply_mode', v_store.reply_mode);
end;
$$;

-- The worker's send_reply handler: the reply and its store (service_role only).
create or replace function public.load_reply_context(p_reply_id uuid)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object('reply', to_jsonb(r), 'store', to_jsonb(s))
  from public.replies r join public.stores s on s.id = r.store_id
  where r.id = p_reply_id
$$;

-- Members are managed by the store CLI (service_role): add or change a person's role.
create or replace function public.add_store_member(p_store_id uuid, p_email text, p_role text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_user uuid;
begin
  select id into v_user from auth.users where lower(email) = lower(btrim(p_email));
  if v_user is null then
    raise exception 'no user with email %', p_email using errcode = 'PT404';
  end if;
  if not exists (select 1 from public.stores where id = p_store_id) then
    raise exception 'store % not found', p_store_id using errcode = 'PT404';
  end if;
  insert into public.store_members (store_id, user_id, role)
  values (p_store_id, v_user, p_role)
  on conflict (store_id, user_id) do update set role = excluded.role;
  insert into public.events (store_id, event_type, detail)
  values (p_store_id, 'console.member_added',
          jsonb_build_object('user_id', v_user, 'email', lower(p_email), 'role', p_role));
  return jsonb_build_object('store_id', p_store_id, 'user_id', v_user, 'role', p_role);
end;
$$;

-- Privileges -----------------------------------------------------------------------------------

do $$
declare
  v_sig text;
begin
  -- Everything here starts closed (Supabase grants EXECUTE to anon and authenticated).
  foreach v_sig in array array[
    'public.console_mirror_owner()', 'public.console_status_from_reply()',
    'public.console_status_from_message()', 'public.console_status_from_event()',
    'public.console_is_operator()', 'public.console_member_store_ids()',
    'public.console_role_in(uuid)', 'public.console_store_of(text, uuid)',
    'public.console_require(text, uuid, text[])', 'public.console_actor()',
    'public.console_enqueue_send(public.replies, uuid)',
    'public.console_me()', 'public.console_stores()',
    'public.console_conversations(uuid, text, text, int, timestamptz, uuid)',
    'public.console_needs_person(uuid, int)', 'public.console_conversation(uuid)',
    'public.console_dead_letters(uuid, int)', 'public.console_queue_metrics(int)',
    'public.console_send_reply(uuid, text)', 'public.console_write_reply(uuid, text)',
    'public.console_discard_reply(uuid, text)', 'public.console_close_conversation(uuid, text)',
    'public.console_requeue_dead_letter(uuid)', 'public.console_purge_dead_letters(uuid[])',
    'public.console_update_store(uuid, jsonb)',
    'public.load_reply_context(uuid)', 'public.add_store_member(uuid, text, text)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated, service_role',
                   v_sig);
  end loop;
  -- What a signed-in person calls, and the helpers RLS policies evaluate as that person.
  foreach v_sig in array array[
    'public.console_is_operator()', 'public.console_member_store_ids()',
    'public.console_role_in(uuid)', 'public.console_me()', 'public.console_stores()',
    'public.console_conversations(uuid, text, text, int, timestamptz, uuid)',
    'public.console_needs_person(uuid, int)', 'public.console_conversation(uuid)',
    'public.console_dead_letters(uuid, int)', 'public.console_queue_metrics(int)',
    'public.console_send_reply(uuid, text)', 'public.console_write_reply(uuid, text)',
    'public.console_discard_reply(uuid, text)', 'public.console_close_conversation(uuid, text)',
    'public.console_requeue_dead_letter(uuid)', 'public.console_purge_dead_letters(uuid[])',
    'public.console_update_store(uuid, jsonb)'
  ] loop
    execute format('grant execute on function %s to authenticated', v_sig);
  end loop;
  -- console_require and console_store_of run inside the definer actions and console_conversation
  -- (as its caller); console_actor inside the actions.
  execute 'grant execute on function public.console_require(text, uuid, text[]) to authenticated';
  execute 'grant execute on function public.console_store_of(text, uuid) to authenticated';
  execute 'grant execute on function public.console_actor() to authenticated';
  foreach v_sig in array array[
    'public.console_is_operator()', 'public.console_member_store_ids()',
    'public.load_reply_context(uuid)', 'public.add_store_member(uuid, text, text)'
  ] loop
    execute format('grant execute on function %s to service_role', v_sig);
  end loop;
end
$$;

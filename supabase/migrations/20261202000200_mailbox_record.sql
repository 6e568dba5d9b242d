-- Issue 12 item 2: the store's mailbox as the record (decision 0019).
--
-- Our replies are filed in the store's Sent folder, a held reply is placed in Drafts so a person
-- can finish it in their own mail client, answered customer mail is marked read and answered.
-- The IMAP work is a job of its own (`mailbox_record`), enqueued by a trigger on the reply's
-- status in the same transaction that records the reply sent, held, discarded or superseded: an
-- IMAP failure can never undo or repeat an SMTP send, and the record is never lost.
--
-- A person who answers a held conversation from their own mail client leaves their reply in the
-- Sent folder, threaded under the customer's message. Fetch scans Sent by UID
-- (`sent_scan_state`) and `record_sent_scan` marks such a conversation answered by that person
-- and the held reply `superseded`: neither the console nor the send_reply job sends it after that.

-- Per-store settings (checked in store_problems, set by the stores CLI) ------------------------

alter table public.stores
  -- auto: file our replies in Sent unless the server files SMTP-submitted mail itself (Gmail,
  -- announced by the X-GM-EXT-1 capability); always; never.
  add column mailbox_sent text not null default 'auto'
    check (mailbox_sent in ('auto', 'always', 'never')),
  -- Place held replies in Drafts (\Draft), and take them out once sent, discarded or superseded.
  add column mailbox_drafts boolean not null default true,
  -- Mark the customer's message \Seen and \Answered once our reply is sent.
  add column mailbox_mark_answered boolean not null default true,
  -- Folder names; null: the folder with the SPECIAL-USE flag (RFC 6154) \Sent or \Drafts.
  add column mailbox_sent_folder text,
  add column mailbox_drafts_folder text;

-- A held reply a person answered from their own mail client: it is never sent by us.
alter table public.replies
  add column answered_by text,
  add column answered_message_id text,
  add column answered_at timestamptz,
  drop constraint replies_status_check,
  add constraint replies_status_check
    check (status in ('drafted', 'sending', 'sent', 'held', 'failed', 'discarded', 'superseded'));

-- Where the scan of a store's Sent folder stands (the INBOX's is mailbox_state).
create table public.sent_scan_state (
  store_id uuid primary key references public.stores (id) on delete cascade,
  folder text not null,
  uidvalidity bigint not null check (uidvalidity >= 0),
  last_uid bigint not null default 0 check (last_uid >= 0),
  updated_at timestamptz not null default now()
);

create trigger sent_scan_state_set_updated_at
  before update on public.sent_scan_state
  for each row execute function public.set_updated_at();

revoke all on table public.sent_scan_state from public, anon, authenticated, service_role;
grant select on table public.sent_scan_state to authenticated;
grant select, insert, update, delete on table public.sent_scan_state to service_role;
alter table public.sent_scan_state enable row level security;
create policy sent_scan_state_service_role on public.sent_scan_state
  for all to service_role using (true) with check (true);
create policy sent_scan_state_owner_select on public.sent_scan_state
  for select to authenticated
  using ((select public.console_is_operator())
         or store_id in (select public.console_member_store_ids()));

-- IMAP is retried for a while (a server down for maintenance), then dead-lettered where a person
-- sees it; nothing about the reply itself depends on it.
insert into public.job_retry_policies (job_type, base_seconds, cap_seconds, max_attempts)
values ('mailbox_record', 60, 3600, 8)
on conflict (job_type) do nothing;

-- The mailbox_record job ------------------------------------------------------------------------

-- Whether a reply now in p_status (held for p_hold_reason, or leaving held when p_was_held;
-- p_by_person: a person approved or wrote it in the console, so it may have been a draft) has
-- anything to change in the store's mailbox under its settings. A reply held because its
-- delivery is in doubt is never placed in Drafts: it may have reached the customer, and a draft
-- invites a second send.
create or replace function public.mailbox_record_wanted(
  p_store public.stores,
  p_status text,
  p_hold_reason text,
  p_was_held boolean,
  p_by_person boolean
)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select case
    when p_status = 'sent' then
      p_store.mailbox_sent <> 'never' or p_store.mailbox_mark_answered
      or (p_store.mailbox_drafts and p_by_person)
    when p_status = 'held' then
      p_store.mailbox_drafts and coalesce(p_hold_reason, '') <> 'delivery_in_doubt'
    -- Leaving held (approved in the console, discarded, superseded): the draft comes out.
    when p_status in ('discarded', 'superseded') or p_was_held then
      p_store.mailbox_drafts
    else false
  end
$$;

-- One mailbox_record job per transition that changes what the mailbox should show, in the
-- transaction that makes the transition. The job reads the reply's state when it runs, so a
-- late job never undoes a newer one; one conversation's jobs never run at once (the claim), so
-- two of them cannot both append the same message.
create or replace function public.enqueue_mailbox_record()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_store public.stores;
  v_was_held boolean := tg_op = 'UPDATE' and old.status = 'held';
begin
  if tg_op = 'UPDATE' and old.status is not distinct from new.status then
    return null;
  end if;
  select * into v_store from public.stores where id = new.store_id;
  if not found
     or not public.mailbox_record_wanted(v_store, new.status, new.hold_reason, v_was_held,
                                         new.author_id is not null) then
    return null;
  end if;
  -- Below the sends (console 10, email 0): filing waits behind answering customers.
  perform public.enqueue_job('mailbox_record',
                             jsonb_build_object('reply_id', new.id, 'status', new.status),
                             null, new.store_id, new.conversation_id, -1);
  return null;
end;
$$;

create trigger replies_mailbox_record
  after insert or update of status on public.replies
  for each row execute function public.enqueue_mailbox_record();

-- What a mailbox_record job needs: the reply, its store, and the customer message it answers
-- (its real Message-ID, also for a message stored under a conflict key, and its folder).
create or replace function public.load_mailbox_record(p_reply_id uuid)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'reply', to_jsonb(r),
    'store', to_jsonb(s),
    'message', jsonb_build_object(
      'message_id', coalesce(m.headers ->> 'message-id', m.message_id),
      'imap_folder', m.imap_folder))
  from public.replies r
  join public.stores s on s.id = r.store_id
  left join public.messages m on m.id = r.message_id
  where r.id = p_reply_id
$$;

-- A person answered from their own mail client ---------------------------------------------------

-- The Sent scan's answer for one batch of a store's Sent folder: p_messages is a JSON array of
-- {uid, message_id, in_reply_to, references[], from}. A message is a person's reply to a
-- customer when it is not one of our replies (by Message-ID; Gmail files those in Sent too) and
-- its In-Reply-To or References name a stored customer message of this store. Its held (or
-- console-approved, not yet sending) reply becomes `superseded`, never to be sent, its credit is
-- refunded, and the conversation is answered by that person; a message we have not drafted a
-- reply for yet gets a superseded reply row, so the email job never answers it. A reply already
-- sending or sent is left alone (the event says so). The position moves to p_last_uid in the
-- same transaction.
create or replace function public.record_sent_scan(
  p_store_id uuid,
  p_folder text,
  p_uidvalidity bigint,
  p_last_uid bigint,
  p_messages jsonb
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_item jsonb;
  v_refs text[];
  v_message public.messages;
  v_reply public.replies;
  v_superseded int := 0;
  v_answered int := 0;
  v_from text;
  v_previous text;
begin
  if jsonb_typeof(p_messages) is distinct from 'array' then
    raise exception 'p_messages must be a JSON array' using errcode = 'invalid_parameter_value';
  end if;
  if not exists (select 1 from public.stores where id = p_store_id) then
    raise exception 'store % not found', p_store_id using errcode = 'no_data_found';
  end if;

  for v_item in select e from jsonb_array_elements(p_messages) as t(e) loop
    if exists (select 1 from public.replies
               where store_id = p_store_id and smtp_message_id = btrim(v_item ->> 'message_id'))
    then
      continue;  -- our own reply, filed by us or by the provider
    end if;
    v_refs := array(
      select distinct btrim(x)
      from jsonb_array_elements_text(
             case when jsonb_typeof(v_item -> 'references') = 'array'
                  then v_item -> 'references' else '[]'::jsonb end
             || case when coalesce(v_item ->> 'in_reply_to', '') <> ''
                     then jsonb_build_array(v_item ->> 'in_reply_to') else '[]'::jsonb end)
           as r(x)
      where btrim(x) <> '');
    if cardinality(v_refs) = 0 then
      continue;
    end if;
    v_from := nullif(btrim(coalesce(v_item ->> 'from', '')), '');

    for v_message in
      select * from public.messages
      where store_id = p_store_id and message_id = any (v_refs)
      order by received_at, id
    loop
      v_answered := v_answered + 1;
      select * into v_reply from public.replies where message_id = v_message.id for update;
      v_previous := v_reply.status;
      if v_reply.id is null then
        -- Answered before our pipeline drafted anything: a superseded row keeps it that way
        -- (the email job finds it at its first step and ends; save_reply returns it unchanged).
        insert into public.replies (store_id, conversation_id, message_id, status, to_address,
                                    subject, in_reply_to, answered_by, answered_message_id,
                                    answered_at)
        values (p_store_id, v_message.conversation_id, v_message.id, 'superseded',
                lower(coalesce(v_message.from_address, '')),
                'Re: ' || coalesce(v_message.subject, ''), v_message.message_id, v_from,
                v_item ->> 'message_id', now())
        on conflict (message_id) do nothing
        returning * into v_reply;
        if v_reply.id is null then
          -- The pipeline saved its reply meanwhile: decide on that one below.
          select * into v_reply from public.replies where message_id = v_message.id for update;
          v_previous := v_reply.status;
        end if;
      end if;
      if v_previous is null and v_reply.status = 'superseded' then
        v_superseded := v_superseded + 1;
        insert into public.events (store_id, conversation_id, message_id, event_type, detail)
        values (p_store_id, v_message.conversation_id, v_message.id, 'reply.superseded',
                jsonb_build_object('reply_id', v_reply.id, 'previous_status', null,
                                   'answered_by', v_from,
                                   'answered_message_id', v_item ->> 'message_id',
                                   'folder', p_folder, 'uid', v_item -> 'uid'));
      elsif v_reply.status in ('held', 'drafted') then
        -- 'drafted' here is a held reply a person approved in the console whose send_reply job
        -- has not reached begin_send: the row lock orders us against it, and begin_send refuses
        -- a superseded reply.
        update public.replies
        set status = 'superseded', answered_by = v_from,
            answered_message_id = v_item ->> 'message_id', answered_at = now()
        where id = v_reply.id;
        if v_reply.job_id is not null then
          perform public.release_credit(v_reply.store_id, v_reply.job_id, 'answered_by_person');
        end if;
        v_superseded := v_superseded + 1;
        insert into public.events (store_id, job_id, conversation_id, message_id, event_type,
                                   detail)
        values (p_store_id, v_reply.job_id, v_message.conversation_id, v_message.id,
                'reply.superseded',
                jsonb_build_object('reply_id', v_reply.id, 'previous_status', v_reply.status,
                                   'answered_by', v_from,
                                   'answered_message_id', v_item ->> 'message_id',
                                   'folder', p_folder, 'uid', v_item -> 'uid'));
      else
        insert into public.events (store_id, conversation_id, message_id, event_type, detail)
        values (p_store_id, v_message.conversation_id, v_message.id,
                'conversation.answered_by_person',
                jsonb_build_object('reply_id', v_reply.id, 'reply_status', v_reply.status,
                                   'answered_by', v_from,
                                   'answered_message_id', v_item ->> 'message_id',
                                   'folder', p_folder, 'uid', v_item -> 'uid'));
      end if;
      if v_previous is null or v_previous in ('held', 'drafted') then
        update public.conversations set status = 'answered_human', status_at = now()
        where id = v_message.conversation_id and status <> 'closed';
      end if;
    end loop;
  end loop;

  insert into public.sent_scan_state as s (store_id, folder, uidvalidity, last_uid)
  values (p_store_id, p_folder, p_uidvalidity, greatest(coalesce(p_last_uid, 0), 0))
  on conflict (store_id) do update
  set folder = excluded.folder, uidvalidity = excluded.uidvalidity,
      last_uid = case when s.folder = excluded.folder and s.uidvalidity = excluded.uidvalidity
                      then greatest(s.last_uid, excluded.last_uid)
                      else excluded.last_uid end;
  return jsonb_build_object('answered', v_answered, 'superseded', v_superseded,
                            'last_uid', p_last_uid);
end;
$$;

create or replace function public.get_sent_scan_state(p_store_id uuid)
returns setof public.sent_scan_state
language sql
stable
set search_path = ''
as $$
  select * from public.sent_scan_state where store_id = p_store_id
$$;

-- The console's thread shows who answered a superseded reply (console_conversation reads these
-- columns); the send gate refuses it (begin_send answers 'superseded').

revoke all on function public.mailbox_record_wanted(public.stores, text, text, boolean, boolean)
  from public, anon, authenticated;
grant execute on function public.mailbox_record_wanted(public.stores, text, text, boolean, boolean)
  to service_role;
revoke all on function public.enqueue_mailbox_record() from public, anon, authenticated;
revoke all on function public.load_mailbox_record(uuid) from public, anon, authenticated;
grant execute on function public.load_mailbox_record(uuid) to service_role;
revoke all on function public.record_sent_scan(uuid, text, bigint, bigint, jsonb)
  from public, anon, authenticated;
grant execute on function public.record_sent_scan(uuid, text, bigint, bigint, jsonb)
  to service_role;
revoke all on function public.get_sent_scan_state(uuid) from public, anon, authenticated;
grant execute on function public.get_sent_scan_state(uuid) to service_role;

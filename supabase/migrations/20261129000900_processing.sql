-- The pipeline's SQL API, processing: what a process_email job calls (its context, the credit,
-- the reply and its exactly-once send gate), and record_events for the worker's own step events.
--
-- Every multi-step state change is one function, because every PostgREST call is its own
-- transaction. All functions run with an empty search_path (every name is qualified) and are
-- executable by service_role only. Only the functions that touch Vault are security definer.
--
-- Event ownership: these functions write the credit.* and reply.* events of the transitions they
-- perform; the worker writes the process.* step events via record_events.

create or replace function public.record_events(p_events jsonb)
returns int
language plpgsql
set search_path = ''
as $$
declare
  v_count int;
begin
  if jsonb_typeof(p_events) is distinct from 'array' then
    raise exception 'p_events must be a JSON array' using errcode = 'invalid_parameter_value';
  end if;
  insert into public.events (store_id, job_id, conversation_id, message_id, event_type, detail)
  select (e ->> 'store_id')::uuid, (e ->> 'job_id')::uuid, (e ->> 'conversation_id')::uuid,
         (e ->> 'message_id')::uuid, e ->> 'event_type',
         coalesce(nullif(e -> 'detail', 'null'::jsonb), '{}'::jsonb)
  from jsonb_array_elements(p_events) with ordinality as t(e, ord)
  order by ord;
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;

-- Everything one process_email job needs, in one round trip. recent_replies counts replies
-- sending or sent by this store to the message's sender (or its Reply-To) within the window,
-- excluding this message's own reply so that a retried job is not capped by itself.
-- store_replies_last_hour counts the store's unrefunded reply reservations of the last hour,
-- so a store past its hourly rate defers a job before any model call; both are early exits,
-- reserve_reply decides atomically.
create or replace function public.load_job_context(
  p_job_id uuid,
  p_reply_window_hours int default 24
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_job jsonb;
  v_message public.messages;
  v_store public.stores;
  v_conversation public.conversations;
  v_reply public.replies;
  v_recent int := 0;
  v_store_hour int := 0;
  v_thread jsonb := '[]'::jsonb;
  v_knowledge jsonb := '[]'::jsonb;
begin
  select to_jsonb(j) into v_job from public.job_queue j where j.id = p_job_id;
  if v_job is null then
    return jsonb_build_object('job', null, 'message', null, 'store', null,
                              'conversation', null, 'reply', null, 'recent_replies', 0,
                              'store_replies_last_hour', 0, 'thread', '[]'::jsonb,
                              'knowledge', '[]'::jsonb);
  end if;

  if (v_job -> 'payload' ->> 'message_id') ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' then
    select * into v_message from public.messages
    where id = (v_job -> 'payload' ->> 'message_id')::uuid;
  end if;
  if v_message.id is not null then
    select * into v_store from public.stores where id = v_message.store_id;
    select * into v_conversation from public.conversations where id = v_message.conversation_id;
    select * into v_reply from public.replies where message_id = v_message.id;
    select count(*)::int into v_recent
    from public.replies r
    where r.store_id = v_message.store_id
      and r.status in ('sending', 'sent')
      and r.to_address in (v_message.from_address, v_message.reply_to)
      and r.message_id <> v_message.id
      and r.sending_at > now() - make_interval(hours => p_reply_window_hours);
    select count(*)::int into v_store_hour
    from public.credit_ledger l
    where l.store_id = v_message.store_id and l.reason = 'reply'
      and l.created_at > now() - interval '1 hour'
      and not exists (select 1 from public.credit_ledger r
                      where r.job_id = l.job_id and r.reason = 'refund');
    -- The conversation's earlier messages and the replies that went out (automatic or a
    -- person's), newest 12, each cut to 3,000 characters: the worker strips quotes and trims
    -- them to its budget (worker/thread.py). Only this conversation's, of this store.
    select coalesce(jsonb_agg(t.item order by t.at, t.kind), '[]'::jsonb) into v_thread
    from (
      select e.at, e.kind, e.item from (
        select m.received_at as at, 0 as kind,
               jsonb_build_object('author', 'customer', 'at', m.received_at,
                                  'text', left(m.body_text, 3000)) as item
        from public.messages m
        where m.conversation_id = v_message.conversation_id
          and m.store_id = v_message.store_id
          and m.id <> v_message.id
          and m.skip_reason is null
          and (m.received_at, m.id) < (v_message.received_at, v_message.id)
        union all
        select r.sent_at, 1,
               jsonb_build_object('author', 'store', 'at', r.sent_at,
                                  'text', left(r.body_text, 3000))
        from public.replies r
        where r.conversation_id = v_message.conversation_id
          and r.store_id = v_message.store_id
          and r.status = 'sent'
          and r.message_id <> v_message.id
        order by at desc, kind desc
        limit 12
      ) e
    ) t;
    -- The store's knowledge base, whole (at most 200 entries): worker/knowledge.py picks what is
    -- relevant to this email, so the pick costs no extra round trip.
    select coalesce(jsonb_agg(jsonb_build_object('id', k.id, 'topic', k.topic,
                                                 'title', k.title, 'body', k.body)
                              order by k.topic, k.title), '[]'::jsonb) into v_knowledge
    from public.store_knowledge k
    where k.store_id = v_message.store_id;
  else
    select * into v_store from public.stores where id = (v_job ->> 'store_id')::uuid;
  end if;

  return jsonb_build_object(
    'job', v_job,
    'message', case when v_message.id is null then null else to_jsonb(v_message) end,
    'store', case when v_store.id is null then null else to_jsonb(v_store) end,
    'conversation',
      case when v_conversation.id is null then null else to_jsonb(v_conversation) end,
    'reply', case when v_reply.id is null then null else to_jsonb(v_reply) end,
    'recent_replies', v_recent,
    'store_replies_last_hour', v_store_hour,
    'thread', v_thread,
    'knowledge', v_knowledge
  );
end;
$$;

-- One credit per job, taken atomically: reserve_reply (the reply-limits migration) without a
-- sender or limits, so there is one charging path. The store row lock serialises concurrent
-- reservations, so the balance can never be overdrawn; the ledger row makes a retry of the same
-- job free. A job whose charge was refunded is not charged again (one charge per job, ever).
create or replace function public.reserve_credit(p_store_id uuid, p_job_id uuid)
returns text
language plpgsql
set search_path = ''
as $$
begin
  if p_job_id is null then
    raise exception 'reserve_credit needs a job id' using errcode = 'invalid_parameter_value';
  end if;
  return public.reserve_reply(p_store_id, p_job_id, null, null, null, null);
end;
$$;

create or replace function public.release_credit(p_store_id uuid, p_job_id uuid, p_reason text)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_credits int;
begin
  -- NO KEY UPDATE, as reserve_reply: serialises the store's credit changes without blocking the
  -- key-share locks that inserting its replies, ledger rows and events take (FOR UPDATE would,
  -- and two transactions that each inserted a reply and then asked for it deadlocked).
  select credits into v_credits from public.stores where id = p_store_id for no key update;
  if not found then
    raise exception 'store % not found', p_store_id using errcode = 'no_data_found';
  end if;
  perform 1 from public.credit_ledger
  where job_id = p_job_id and reason = 'reply' and store_id = p_store_id;
  if not found then
    return false;
  end if;
  perform 1 from public.credit_ledger where job_id = p_job_id and reason = 'refund';
  if found then
    return false;
  end if;

  update public.stores set credits = credits + 1 where id = p_store_id;
  insert into public.credit_ledger (store_id, job_id, delta, reason)
  values (p_store_id, p_job_id, 1, 'refund');
  insert into public.events (store_id, job_id, event_type, detail)
  values (p_store_id, p_job_id, 'credit.refunded',
          jsonb_build_object('delta', 1, 'balance', v_credits + 1, 'reason', p_reason));
  return true;
end;
$$;

-- Idempotent: a retried job gets back the reply it already saved, unchanged, so the text (and the
-- SMTP Message-ID) that may already have gone out is the one that counts.
-- A reply held for a person gives its credit back here, in the transaction that holds it: a
-- credit pays for a reply that is sent, and the person who sends it from the console is charged
-- then (console_send_reply).
create or replace function public.save_reply(p_job_id uuid, p_message_id uuid, p_reply jsonb)
returns public.replies
language plpgsql
set search_path = ''
as $$
declare
  v_message public.messages;
  v_reply public.replies;
  v_hold boolean := coalesce((p_reply ->> 'hold')::boolean, false);
begin
  select * into v_message from public.messages where id = p_message_id;
  if not found then
    raise exception 'message % not found', p_message_id using errcode = 'no_data_found';
  end if;
  if nullif(btrim(p_reply ->> 'to_address'), '') is null then
    raise exception 'reply needs a to_address' using errcode = 'invalid_parameter_value';
  end if;

  if v_hold then
    -- The store's credit row before the held reply's triggers run: the held-reply notification
    -- locks the store's notification settings, and a credit change that notifies (credits_low)
    -- takes the store first; one order for both (the refund below needs this lock anyway).
    perform 1 from public.stores where id = v_message.store_id for no key update;
  end if;

  insert into public.replies (
    store_id, conversation_id, message_id, job_id, status, to_address, subject, body_text,
    smtp_message_id, in_reply_to, "references", hold_reason, intent, language, model
  )
  values (
    v_message.store_id, v_message.conversation_id, p_message_id, p_job_id,
    case when v_hold then 'held' else 'drafted' end,
    lower(btrim(p_reply ->> 'to_address')),
    p_reply ->> 'subject', p_reply ->> 'body_text', p_reply ->> 'smtp_message_id',
    p_reply ->> 'in_reply_to',
    coalesce((select array_agg(r order by ord)
                from jsonb_array_elements_text(
                       case when jsonb_typeof(p_reply -> 'references') = 'array'
                            then p_reply -> 'references' else '[]'::jsonb end)
                     with ordinality as t(r, ord)), '{}'),
    p_reply ->> 'hold_reason', p_reply ->> 'intent', p_reply ->> 'language',
    p_reply ->> 'model'
  )
  on conflict (message_id) do nothing
  returning * into v_reply;

  if v_reply.id is null then
    select * into v_reply from public.replies where message_id = p_message_id;
  elsif v_hold then
    perform public.release_credit(v_message.store_id, p_job_id, 'held');
  end if;
  return v_reply;
end;
$$;

-- The send gate. Only 'ok' allows an SMTP send; 'in_doubt' means an earlier attempt may or may
-- not have sent, and the worker resolves it (e.g. by looking for our Message-ID in Sent).
create or replace function public.begin_send(p_reply_id uuid)
returns text
language plpgsql
set search_path = ''
as $$
declare
  v_reply public.replies;
begin
  select * into v_reply from public.replies where id = p_reply_id for update;
  if not found then
    raise exception 'reply % not found', p_reply_id using errcode = 'no_data_found';
  end if;
  case v_reply.status
    when 'drafted' then
      update public.replies set status = 'sending', sending_at = now(), error = null
      where id = p_reply_id;
      insert into public.events (store_id, job_id, conversation_id, message_id, event_type,
                                 detail)
      values (v_reply.store_id, v_reply.job_id, v_reply.conversation_id, v_reply.message_id,
              'reply.sending', jsonb_build_object('reply_id', v_reply.id,
                                                  'smtp_message_id', v_reply.smtp_message_id));
      return 'ok';
    when 'sent' then return 'already_sent';
    when 'sending' then return 'in_doubt';
    when 'held' then return 'held';
    -- A person answered from their own mail client (record_sent_scan): never sent by us.
    when 'superseded' then return 'superseded';
    else return 'failed';
  end case;
end;
$$;

-- The SMTP server accepted the message, so the reply is sent whatever happens to the job; the
-- completion rides in the same transaction so both are recorded or neither.
create or replace function public.finish_send(
  p_reply_id uuid,
  p_job_id uuid,
  p_worker_id text,
  p_result jsonb
)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_reply public.replies;
begin
  select * into v_reply from public.replies where id = p_reply_id for update;
  if not found then
    raise exception 'reply % not found', p_reply_id using errcode = 'no_data_found';
  end if;
  if v_reply.status <> 'sent' then
    update public.replies
    set status = 'sent', sent_at = now(), sending_at = coalesce(sending_at, now()), error = null
    where id = p_reply_id;
    insert into public.events (store_id, job_id, conversation_id, message_id, event_type, detail)
    values (v_reply.store_id, p_job_id, v_reply.conversation_id, v_reply.message_id,
            'reply.sent', jsonb_build_object('reply_id', v_reply.id,
                                             'smtp_message_id', v_reply.smtp_message_id,
                                             'previous_status', v_reply.status));
  end if;
  return public.complete_job(p_job_id, p_worker_id, p_result);
end;
$$;

-- Resolves a 'sending' reply that definitely did not go out: back to 'drafted' (a retry may send)
-- or 'failed' (it never will). False when the reply is not in 'sending'.
create or replace function public.reset_reply(p_reply_id uuid, p_status text, p_error text)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_reply public.replies;
begin
  -- 'held' is how an in-doubt send ends when the Sent folder cannot prove delivery: a person
  -- decides, because sending again could give the customer two replies.
  if p_status is null or p_status not in ('drafted', 'failed', 'held') then
    raise exception 'reset_reply status must be drafted, failed or held, not %', p_status
      using errcode = 'invalid_parameter_value';
  end if;
  update public.replies
  set status = p_status,
      error = case when p_status = 'held' then error else p_error end,
      hold_reason = case when p_status = 'held' then p_error else hold_reason end
  where id = p_reply_id and status = 'sending'
  returning * into v_reply;
  if v_reply.id is null then
    return false;
  end if;
  insert into public.events (store_id, job_id, conversation_id, message_id, event_type, detail)
  values (v_reply.store_id, v_reply.job_id, v_reply.conversation_id, v_reply.message_id,
          case when p_status = 'held' then 'reply.held' else 'reply.failed' end,
          jsonb_build_object('reply_id', v_reply.id, 'status', p_status, 'error', p_error));
  return true;
end;
$$;

-- Every path into the dead-letter queue (fail_job; dequeue_jobs dead-lettering a job whose lease
-- expired with no attempts left; an operator's update) settles what the job leaves behind, in
-- this one place and in the same transaction. It is keyed on what the job owns (its charge in
-- credit_ledger, its reply row by job_id), not on its type, so any job type that charges or
-- drafts is covered. A send_reply job (the console's approved or written reply) neither drafted
-- nor charged under its own id: its reply is the payload's reply_id and the charge is the one
-- keyed by that reply's job_id (the pipeline job that drafted it, or the console's own charge
-- id), exactly as the console took it. What happens to the reply:
--   none, drafted, failed: nothing reached the customer: the reply (if any) ends 'failed'
--                          and the credit is refunded;
--   sending:               it may have reached the customer: it stays charged and becomes
--                          held 'delivery_in_doubt', visible to a person (as the worker does
--                          when the Sent folder cannot prove delivery);
--   held, sent:            left as they are (a person owns a held reply; a draft held for a
--                          person was refunded when saved, one held in doubt stays charged).
-- Returns what was done (also recorded as a 'job.dead_letter_settled' event with the reason),
-- or null when the job had neither a charge nor a reply.
create or replace function public.settle_dead_lettered_job(p_job public.job_queue)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_reply public.replies;
  v_after text;
  v_store_id uuid;
  v_refunded boolean := false;
  v_detail jsonb;
  v_charge_job uuid := p_job.id;
begin
  if p_job.job_type = 'send_reply' then
    select * into v_reply from public.replies r
    where r.id = (p_job.payload ->> 'reply_id')::uuid for update;
    v_charge_job := v_reply.job_id;
  else
    select * into v_reply from public.replies r where r.job_id = p_job.id for update;
  end if;
  v_after := v_reply.status;
  if v_reply.status = 'sending' then
    v_after := 'held';
    update public.replies
    set status = 'held', hold_reason = 'delivery_in_doubt'
    where id = v_reply.id;
  elsif v_reply.status = 'drafted' then
    v_after := 'failed';
    update public.replies
    set status = 'failed', error = 'dead_lettered: ' || coalesce(p_job.last_error, 'unknown')
    where id = v_reply.id;
  end if;

  if v_reply.id is null or v_reply.status in ('drafted', 'failed') then
    select l.store_id into v_store_id
    from public.credit_ledger l
    where l.job_id = v_charge_job and l.reason = 'reply'
    limit 1;
    if v_store_id is not null then
      v_refunded := public.release_credit(v_store_id, v_charge_job, 'dead_lettered');
    end if;
  end if;
  if v_reply.id is null and v_store_id is null then
    -- Neither charged nor drafted: nothing to settle (job.dead_lettered already says why).
    return null;
  end if;

  v_detail := jsonb_build_object(
    'reply_id', v_reply.id, 'reply_status_before', v_reply.status, 'reply_status', v_after,
    'refunded', v_refunded, 'error', p_job.last_error, 'error_type', p_job.last_error_type,
    'attempt', p_job.attempt_count);
  insert into public.events (store_id, job_id, conversation_id, message_id, event_type, detail)
  values (p_job.store_id, p_job.id, p_job.conversation_id, v_reply.message_id,
          'job.dead_letter_settled', v_detail);
  return v_detail;
end;
$$;

create or replace function public.job_queue_dead_lettered()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform public.settle_dead_lettered_job(new);
  return null;
exception when others then
  -- Settling must never stop a job from being dead-lettered, nor the claim that dead-letters
  -- expired leases: the failure is recorded for a person instead.
  insert into public.events (store_id, job_id, conversation_id, event_type, detail)
  values (new.store_id, new.id, new.conversation_id, 'job.dead_letter_settle_failed',
          jsonb_build_object('error', sqlerrm, 'sqlstate', sqlstate));
  return null;
end;
$$;

-- Fires on the transition into dead_letter only, so claims and completions pay nothing.
create trigger job_queue_dead_lettered
  after update of status on public.job_queue
  for each row
  when (new.status = 'dead_letter' and old.status is distinct from 'dead_letter')
  execute function public.job_queue_dead_lettered();

-- Privileges: these routines are for the worker (service_role) only. Supabase grants EXECUTE
-- to anon and authenticated by default, hence the explicit revoke before each grant.
revoke all on function public.record_events(jsonb) from public, anon, authenticated;
grant execute on function public.record_events(jsonb) to service_role;
revoke all on function public.load_job_context(uuid, int) from public, anon, authenticated;
grant execute on function public.load_job_context(uuid, int) to service_role;
revoke all on function public.reserve_credit(uuid, uuid) from public, anon, authenticated;
grant execute on function public.reserve_credit(uuid, uuid) to service_role;
revoke all on function public.release_credit(uuid, uuid, text) from public, anon, authenticated;
grant execute on function public.release_credit(uuid, uuid, text) to service_role;
revoke all on function public.save_reply(uuid, uuid, jsonb) from public, anon, authenticated;
grant execute on function public.save_reply(uuid, uuid, jsonb) to service_role;
revoke all on function public.begin_send(uuid) from public, anon, authenticated;
grant execute on function public.begin_send(uuid) to service_role;
revoke all on function public.finish_send(uuid, uuid, text, jsonb) from public, anon, authenticated;
grant execute on function public.finish_send(uuid, uuid, text, jsonb) to service_role;
revoke all on function public.reset_reply(uuid, text, text) from public, anon, authenticated;
grant execute on function public.reset_reply(uuid, text, text) to service_role;
revoke all on function public.settle_dead_lettered_job(public.job_queue)
  from public, anon, authenticated;
grant execute on function public.settle_dead_lettered_job(public.job_queue) to service_role;
revoke all on function public.job_queue_dead_lettered() from public, anon, authenticated;

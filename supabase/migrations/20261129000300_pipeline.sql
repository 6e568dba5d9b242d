-- The pipeline's SQL API: what fetch-emails, process-queue and the store CLI call.
--
-- Every multi-step state change is one function, because every PostgREST call is its own
-- transaction. All functions run with an empty search_path (every name is qualified) and are
-- executable by service_role only. Only the functions that touch Vault are security definer.
--
-- Event ownership: these functions write the message.*, credit.* and reply.* events of the
-- transitions they perform; the worker writes the process.* step events via record_events.

-- Ingestion ------------------------------------------------------------------------------------

create or replace function public.list_active_stores()
returns setof public.stores
language sql
stable
set search_path = ''
as $$
  select * from public.stores where active order by created_at, id
$$;

-- The operator's view (stores CLI): inactive stores too when asked.
create or replace function public.list_stores(p_include_inactive boolean default false)
returns setof public.stores
language sql
stable
set search_path = ''
as $$
  select * from public.stores where active or coalesce(p_include_inactive, false)
  order by created_at, id
$$;

create or replace function public.get_store(p_store_id uuid)
returns setof public.stores
language sql
stable
set search_path = ''
as $$
  select * from public.stores where id = p_store_id
$$;

-- Security definer: only the function owner may read decrypted Vault secrets.
create or replace function public.get_store_secrets(p_store_id uuid)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_store public.stores;
begin
  select * into v_store from public.stores where id = p_store_id;
  if not found then
    raise exception 'store % not found', p_store_id using errcode = 'no_data_found';
  end if;
  return jsonb_build_object(
    'imap_password',
    (select ds.decrypted_secret from vault.decrypted_secrets ds
      where ds.id = v_store.imap_password_secret_id),
    'smtp_password',
    (select ds.decrypted_secret from vault.decrypted_secrets ds
      where ds.id = v_store.smtp_password_secret_id),
    'shopify_token',
    (select ds.decrypted_secret from vault.decrypted_secrets ds
      where ds.id = v_store.shopify_token_secret_id)
  );
end;
$$;

create or replace function public.get_mailbox_state(p_store_id uuid, p_folder text)
returns setof public.mailbox_state
language sql
stable
set search_path = ''
as $$
  select * from public.mailbox_state where store_id = p_store_id and folder = p_folder
$$;

-- Lower-cased, trimmed, blank-free text array from a JSON array (null or non-array: empty).
create or replace function public.jsonb_email_array(p_value jsonb)
returns text[]
language sql
immutable
set search_path = ''
as $$
  select coalesce(array_agg(lower(btrim(e)) order by ord), '{}')
  from jsonb_array_elements_text(
         case when jsonb_typeof(p_value) = 'array' then p_value else '[]'::jsonb end
       ) with ordinality as t(e, ord)
  where btrim(e) <> ''
$$;

-- Stores a batch of parsed messages once each, threads them, enqueues their process_email jobs
-- and advances the mailbox position, all in one transaction: the stored last UID never runs
-- ahead of what is stored, and a crash leaves nothing half-done.
create or replace function public.ingest_messages(
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
  v_msg jsonb;
  v_message_id text;
  v_from text;
  v_in_reply_to text;
  v_refs text[];
  v_sent_at timestamptz;
  v_existing uuid;
  v_conversation uuid;
  v_new_conversation boolean;
  v_id uuid;
  v_job uuid;
  v_stored int := 0;
  v_duplicates int := 0;
  v_skipped int := 0;
  v_job_ids uuid[] := '{}'::uuid[];
  v_last_uid bigint;
begin
  if p_folder is null or p_folder = '' or p_uidvalidity is null or p_last_uid is null
     or p_last_uid < 0 then
    raise exception 'ingest_messages needs a folder, a uidvalidity and a last_uid >= 0'
      using errcode = 'invalid_parameter_value';
  end if;
  if jsonb_typeof(p_messages) is distinct from 'array' then
    raise exception 'p_messages must be a JSON array' using errcode = 'invalid_parameter_value';
  end if;
  perform 1 from public.stores where id = p_store_id;
  if not found then
    raise exception 'store % not found', p_store_id using errcode = 'no_data_found';
  end if;

  -- Two fetch runs for one store (an overlapping cron tick, a manual run) are serialised here, so
  -- the second sees the first's messages as duplicates instead of racing it on the unique index
  -- (and, with batches in different orders, deadlocking on it).
  perform pg_advisory_xact_lock(hashtext('public.ingest_messages'), hashtext(p_store_id::text));

  for v_msg in select value from jsonb_array_elements(p_messages) with ordinality order by ordinality
  loop
    v_message_id := btrim(v_msg ->> 'message_id');
    if v_message_id is null or v_message_id = '' then
      raise exception 'message without message_id (uid %)', v_msg ->> 'uid'
        using errcode = 'invalid_parameter_value';
    end if;
    -- A hostile or broken header must not make the batch unstorable (the unique index has a size
    -- limit); a digest keeps it stable, so redelivery still dedupes.
    if length(v_message_id) > 998 then
      v_message_id := '<' || md5(v_message_id) || '@long-message-id.invalid>';
    end if;

    select id into v_existing
    from public.messages where store_id = p_store_id and message_id = v_message_id;
    if found then
      v_duplicates := v_duplicates + 1;
      insert into public.events (store_id, message_id, event_type, detail)
      values (p_store_id, v_existing, 'message.duplicate',
              jsonb_build_object('message_id', v_message_id, 'folder', p_folder,
                                 'uid', v_msg -> 'uid'));
      continue;
    end if;

    v_from := nullif(lower(btrim(v_msg ->> 'from_address')), '');
    v_in_reply_to := nullif(btrim(v_msg ->> 'in_reply_to'), '');
    v_refs := array_remove(
      (select coalesce(array_agg(btrim(r)), '{}')
         from jsonb_array_elements_text(
                case when jsonb_typeof(v_msg -> 'references') = 'array'
                     then v_msg -> 'references' else '[]'::jsonb end) as t(r)),
      '');
    v_sent_at := null;
    if nullif(v_msg ->> 'date', '') is not null then
      begin
        v_sent_at := (v_msg ->> 'date')::timestamptz;
      exception when others then
        v_sent_at := null;  -- a malformed Date header is not worth losing the message over
      end;
    end if;

    -- Thread by In-Reply-To / References against known inbound Message-IDs and our own replies.
    -- Only a conversation with the same customer qualifies: knowing someone else's Message-ID
    -- must not attach a stranger to their conversation (and its history).
    v_conversation := null;
    if v_in_reply_to is not null or cardinality(v_refs) > 0 then
      select k.conversation_id into v_conversation
      from (
        select m.conversation_id, m.message_id = v_in_reply_to as direct, m.received_at as seen_at
        from public.messages m
        where m.store_id = p_store_id
          and m.message_id = any (v_refs || v_in_reply_to)
        union all
        select r.conversation_id, r.smtp_message_id = v_in_reply_to, r.created_at
        from public.replies r
        where r.store_id = p_store_id
          and r.conversation_id is not null
          and r.smtp_message_id = any (v_refs || v_in_reply_to)
      ) k
      join public.conversations c on c.id = k.conversation_id
      where c.customer_email is not distinct from v_from
      order by k.direct desc nulls last, k.seen_at desc
      limit 1;
    end if;

    v_new_conversation := v_conversation is null;
    if v_new_conversation then
      insert into public.conversations (store_id, customer_email, subject)
      values (p_store_id, v_from, v_msg ->> 'subject')
      returning id into v_conversation;
    end if;

    insert into public.messages (
      store_id, conversation_id, message_id, imap_folder, imap_uid, from_address, from_name,
      reply_to, to_addresses, cc_addresses, subject, sent_at, in_reply_to, "references",
      headers, body_text, attachments, size_bytes, skip_reason
    )
    values (
      p_store_id, v_conversation, v_message_id, p_folder, (v_msg ->> 'uid')::bigint, v_from,
      v_msg ->> 'from_name',
      nullif(lower(btrim(v_msg ->> 'reply_to')), ''),
      public.jsonb_email_array(v_msg -> 'to_addresses'),
      public.jsonb_email_array(v_msg -> 'cc_addresses'),
      v_msg ->> 'subject', v_sent_at, v_in_reply_to, v_refs,
      (select coalesce(jsonb_object_agg(lower(h.key), h.value), '{}')
         from jsonb_each(case when jsonb_typeof(v_msg -> 'headers') = 'object'
                              then v_msg -> 'headers' else '{}'::jsonb end) as h),
      v_msg ->> 'body_text',
      case when jsonb_typeof(v_msg -> 'attachments') = 'array'
           then v_msg -> 'attachments' else '[]'::jsonb end,
      (v_msg ->> 'size_bytes')::int,
      nullif(btrim(v_msg ->> 'skip_reason'), '')
    )
    on conflict (store_id, message_id) do nothing
    returning id into v_id;

    if v_id is null then
      -- Only reachable if the advisory lock above is bypassed; stay correct regardless.
      if v_new_conversation then
        delete from public.conversations where id = v_conversation;
      end if;
      v_duplicates := v_duplicates + 1;
      insert into public.events (store_id, event_type, detail)
      values (p_store_id, 'message.duplicate',
              jsonb_build_object('message_id', v_message_id, 'folder', p_folder,
                                 'uid', v_msg -> 'uid'));
      continue;
    end if;

    if not v_new_conversation then
      update public.conversations set last_message_at = greatest(last_message_at, now())
      where id = v_conversation;
    end if;

    insert into public.events (store_id, conversation_id, message_id, event_type, detail)
    values (p_store_id, v_conversation, v_id, 'message.received',
            jsonb_build_object('message_id', v_message_id, 'folder', p_folder,
                               'uid', v_msg -> 'uid', 'new_conversation', v_new_conversation));

    if nullif(btrim(v_msg ->> 'skip_reason'), '') is not null then
      v_skipped := v_skipped + 1;
      insert into public.events (store_id, conversation_id, message_id, event_type, detail)
      values (p_store_id, v_conversation, v_id, 'message.skipped',
              jsonb_build_object('reason', btrim(v_msg ->> 'skip_reason'),
                                 'size_bytes', v_msg -> 'size_bytes'));
    else
      v_job := public.enqueue_job(
        p_job_type => 'process_email',
        p_payload => jsonb_build_object('message_id', v_id),
        p_idempotency_key => 'email:' || p_store_id || ':' || v_message_id,
        p_store_id => p_store_id,
        p_conversation_id => v_conversation
      );
      v_stored := v_stored + 1;
      v_job_ids := v_job_ids || v_job;
    end if;
  end loop;

  -- Same UIDVALIDITY: the position only moves forward. A new one means the server renumbered
  -- the folder, so the old position is meaningless; duplicates are caught by Message-ID.
  insert into public.mailbox_state as ms (store_id, folder, uidvalidity, last_uid)
  values (p_store_id, p_folder, p_uidvalidity, p_last_uid)
  on conflict (store_id, folder) do update
    set last_uid = case when ms.uidvalidity = excluded.uidvalidity
                        then greatest(ms.last_uid, excluded.last_uid)
                        else excluded.last_uid end,
        uidvalidity = excluded.uidvalidity
  returning ms.last_uid into v_last_uid;

  return jsonb_build_object(
    'stored', v_stored,
    'duplicates', v_duplicates,
    'skipped', v_skipped,
    'job_ids', to_jsonb(v_job_ids),
    'last_uid', v_last_uid
  );
end;
$$;

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

-- Processing -----------------------------------------------------------------------------------

-- Everything one process_email job needs, in one round trip. recent_replies counts replies
-- sending or sent by this store to the message's sender (or its Reply-To) within the window,
-- excluding this message's own reply so that a retried job is not capped by itself.
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
begin
  select to_jsonb(j) into v_job from public.job_queue j where j.id = p_job_id;
  if v_job is null then
    return jsonb_build_object('job', null, 'message', null, 'store', null,
                              'conversation', null, 'reply', null, 'recent_replies', 0);
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
    'recent_replies', v_recent
  );
end;
$$;

-- One credit per job, taken atomically. The store row lock serialises concurrent reservations,
-- so the balance can never be overdrawn; the ledger row makes a retry of the same job free.
-- A job whose charge was refunded is not charged again (one charge per job, ever).
create or replace function public.reserve_credit(p_store_id uuid, p_job_id uuid)
returns text
language plpgsql
set search_path = ''
as $$
declare
  v_credits int;
begin
  if p_job_id is null then
    raise exception 'reserve_credit needs a job id' using errcode = 'invalid_parameter_value';
  end if;
  select credits into v_credits from public.stores where id = p_store_id for update;
  if not found then
    raise exception 'store % not found', p_store_id using errcode = 'no_data_found';
  end if;

  perform 1 from public.credit_ledger where job_id = p_job_id and reason = 'reply';
  if found then
    return 'already_reserved';
  end if;
  if v_credits < 1 then
    return 'no_credits';
  end if;

  update public.stores set credits = credits - 1 where id = p_store_id;
  insert into public.credit_ledger (store_id, job_id, delta, reason)
  values (p_store_id, p_job_id, -1, 'reply');
  insert into public.events (store_id, job_id, event_type, detail)
  values (p_store_id, p_job_id, 'credit.charged',
          jsonb_build_object('delta', -1, 'balance', v_credits - 1));
  return 'reserved';
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
  select credits into v_credits from public.stores where id = p_store_id for update;
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

-- Store administration -------------------------------------------------------------------------

-- Every problem with a store's settings at once, so an operator fixes them in one go.
create or replace function public.store_problems(p_store public.stores)
returns text[]
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_problems text[] := '{}'::text[];
  v_email constant text := '^[^@\s]+@[^@\s]+$';
  v_address text;
begin
  if coalesce(btrim(p_store.name), '') = '' then
    v_problems := v_problems || 'name is required'::text;
  end if;
  if p_store.support_email is null or p_store.support_email !~ v_email then
    v_problems := v_problems || 'support_email must be an email address'::text;
  end if;
  foreach v_address in array coalesce(p_store.extra_addresses, '{}') loop
    if v_address !~ v_email then
      v_problems := v_problems || format('extra_addresses: %s is not an email address',
                                         v_address);
    end if;
  end loop;
  if coalesce(btrim(p_store.imap_host), '') = '' then
    v_problems := v_problems || 'imap_host is required'::text;
  end if;
  if p_store.imap_port is null or p_store.imap_port not between 1 and 65535 then
    v_problems := v_problems || 'imap_port must be between 1 and 65535'::text;
  end if;
  if coalesce(p_store.imap_user, '') = '' then
    v_problems := v_problems || 'imap_user is required'::text;
  end if;
  if p_store.imap_tls is null or p_store.imap_tls not in ('ssl', 'starttls', 'plain') then
    v_problems := v_problems || 'imap_tls must be ssl, starttls or plain'::text;
  end if;
  if coalesce(p_store.imap_folder, '') = '' then
    v_problems := v_problems || 'imap_folder is required'::text;
  end if;
  if coalesce(btrim(p_store.smtp_host), '') = '' then
    v_problems := v_problems || 'smtp_host is required'::text;
  end if;
  if p_store.smtp_port is null or p_store.smtp_port not between 1 and 65535 then
    v_problems := v_problems || 'smtp_port must be between 1 and 65535'::text;
  end if;
  if coalesce(p_store.smtp_user, '') = '' then
    v_problems := v_problems || 'smtp_user is required'::text;
  end if;
  if p_store.smtp_tls is null or p_store.smtp_tls not in ('ssl', 'starttls', 'plain') then
    v_problems := v_problems || 'smtp_tls must be ssl, starttls or plain'::text;
  end if;
  if p_store.shopify_domain is not null
     and p_store.shopify_domain !~ '^[a-z0-9][a-z0-9.-]*$' then
    v_problems := v_problems || 'shopify_domain must be a host name like shop.myshopify.com'::text;
  end if;
  if p_store.credits is null or p_store.credits < 0 then
    v_problems := v_problems || 'credits must be zero or more'::text;
  end if;
  if p_store.reply_language is null
     or p_store.reply_language !~ '^(auto|[a-z]{2,3}(-[A-Za-z0-9]{2,8})*)$' then
    v_problems := v_problems || 'reply_language must be auto or a language tag like pt-BR'::text;
  end if;
  if coalesce(btrim(p_store.reply_tone), '') = '' then
    v_problems := v_problems || 'reply_tone is required'::text;
  end if;
  if p_store.reply_mode is null or p_store.reply_mode not in ('auto_send', 'draft_only') then
    v_problems := v_problems || 'reply_mode must be auto_send or draft_only'::text;
  end if;
  if p_store.active is null then
    v_problems := v_problems || 'active must be true or false'::text;
  end if;
  return v_problems;
end;
$$;

-- Writes one store secret into Vault: a new secret when the store has none yet, else a rotation
-- that keeps the id (stores only ever hold secret ids). Called by the admin functions only.
create or replace function public.store_put_secret(
  p_secret_id uuid,
  p_value text,
  p_store_id uuid,
  p_kind text,
  p_description text
)
returns uuid
language plpgsql
set search_path = ''
as $$
begin
  if p_secret_id is null then
    return vault.create_secret(p_value, format('store_%s_%s', p_store_id, p_kind),
                               p_description || ' of store ' || p_store_id);
  end if;
  perform vault.update_secret(p_secret_id, p_value);
  return p_secret_id;
end;
$$;

-- Applies the settings in p_changes (only the keys it has) onto p_base, normalising addresses;
-- raises one invalid_parameter_value error listing every unknown key and malformed value.
create or replace function public.store_apply_settings(
  p_base public.stores,
  p_changes jsonb,
  p_allowed text[]
)
returns public.stores
language plpgsql
stable
set search_path = ''
as $$
declare
  v_store public.stores;
  v_unknown text[];
  v_problems text[];
begin
  if jsonb_typeof(p_changes) is distinct from 'object' then
    raise exception 'store settings must be a JSON object'
      using errcode = 'invalid_parameter_value';
  end if;
  select array_agg(k order by k) into v_unknown
  from jsonb_object_keys(p_changes) as k
  where k <> all (p_allowed);
  if v_unknown is not null then
    raise exception 'invalid store settings'
      using errcode = 'invalid_parameter_value',
            detail = 'unknown or read-only keys: ' || array_to_string(v_unknown, ', ');
  end if;

  begin
    v_store := jsonb_populate_record(p_base, p_changes);
  exception when data_exception then
    raise exception 'invalid store settings'
      using errcode = 'invalid_parameter_value', detail = sqlerrm;
  end;

  v_store.support_email := lower(btrim(v_store.support_email));
  v_store.extra_addresses := (select coalesce(array_agg(lower(btrim(a))), '{}')
                                from unnest(v_store.extra_addresses) as a
                                where btrim(a) <> '');
  v_store.shopify_domain := nullif(lower(btrim(v_store.shopify_domain)), '');
  v_store.imap_host := btrim(v_store.imap_host);
  v_store.smtp_host := btrim(v_store.smtp_host);

  v_problems := public.store_problems(v_store);
  if cardinality(v_problems) > 0 then
    raise exception 'invalid store settings'
      using errcode = 'invalid_parameter_value', detail = array_to_string(v_problems, '; ');
  end if;
  return v_store;
end;
$$;

-- Security definer: creates Vault secrets, which the API roles may not do themselves. Only the
-- secret ids reach public.stores.
create or replace function public.admin_create_store(p_store jsonb, p_secrets jsonb)
returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_base public.stores;
  v_store public.stores;
  v_problems text[] := '{}'::text[];
  v_unknown text[];
begin
  -- Column defaults, as an insert would apply them.
  v_base := jsonb_populate_record(null::public.stores, '{}'::jsonb);
  v_base.id := gen_random_uuid();
  v_base.extra_addresses := '{}';
  v_base.imap_tls := 'ssl';
  v_base.imap_folder := 'INBOX';
  v_base.smtp_tls := 'starttls';
  v_base.credits := 0;
  v_base.active := true;
  v_base.reply_language := 'auto';
  v_base.reply_tone := 'friendly';
  v_base.reply_mode := 'auto_send';

  v_store := public.store_apply_settings(v_base, coalesce(p_store, 'null'::jsonb), array[
    'owner_id', 'name', 'support_email', 'extra_addresses', 'imap_host', 'imap_port',
    'imap_user', 'imap_tls', 'imap_folder', 'smtp_host', 'smtp_port', 'smtp_user', 'smtp_tls',
    'shopify_domain', 'credits', 'active', 'reply_language', 'reply_signature', 'reply_tone',
    'reply_mode']);

  if jsonb_typeof(p_secrets) is distinct from 'object' then
    raise exception 'secrets must be a JSON object' using errcode = 'invalid_parameter_value';
  end if;
  select array_agg(k order by k) into v_unknown
  from jsonb_object_keys(p_secrets) as k
  where k not in ('imap_password', 'smtp_password', 'shopify_token');
  if v_unknown is not null then
    v_problems := v_problems || ('unknown secrets: ' || array_to_string(v_unknown, ', '));
  end if;
  if jsonb_typeof(p_secrets -> 'imap_password') is distinct from 'string'
     or p_secrets ->> 'imap_password' = '' then
    v_problems := v_problems || 'imap_password is required'::text;
  end if;
  if jsonb_typeof(p_secrets -> 'smtp_password') is distinct from 'string'
     or p_secrets ->> 'smtp_password' = '' then
    v_problems := v_problems || 'smtp_password is required'::text;
  end if;
  if p_secrets ? 'shopify_token' and (jsonb_typeof(p_secrets -> 'shopify_token') <> 'string'
                                      or p_secrets ->> 'shopify_token' = '') then
    v_problems := v_problems || 'shopify_token must be a non-empty string'::text;
  end if;
  if (v_store.shopify_domain is null) <> (p_secrets ->> 'shopify_token' is null) then
    v_problems := v_problems || 'shopify_domain and shopify_token go together'::text;
  end if;
  if cardinality(v_problems) > 0 then
    raise exception 'invalid store secrets'
      using errcode = 'invalid_parameter_value', detail = array_to_string(v_problems, '; ');
  end if;

  v_store.imap_password_secret_id := public.store_put_secret(
    null, p_secrets ->> 'imap_password', v_store.id, 'imap_password', 'IMAP password');
  v_store.smtp_password_secret_id := public.store_put_secret(
    null, p_secrets ->> 'smtp_password', v_store.id, 'smtp_password', 'SMTP password');
  if p_secrets ->> 'shopify_token' is not null then
    v_store.shopify_token_secret_id := public.store_put_secret(
      null, p_secrets ->> 'shopify_token', v_store.id, 'shopify_token',
      'Shopify Admin API token');
  end if;
  v_store.created_at := now();
  v_store.updated_at := now();

  insert into public.stores values (v_store.*);
  if v_store.credits > 0 then
    insert into public.credit_ledger (store_id, delta, reason)
    values (v_store.id, v_store.credits, 'topup');
  end if;
  return v_store.id;
end;
$$;

-- Security definer for the same reason as admin_create_store: secrets are rotated in place
-- (vault.update_secret) or created when the store had none. Credits change only through
-- admin_add_credits, so the ledger always explains the balance.
create or replace function public.admin_update_store(
  p_store_id uuid,
  p_changes jsonb,
  p_secrets jsonb default '{}'
)
returns public.stores
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_old public.stores;
  v_store public.stores;
  v_secrets jsonb := coalesce(p_secrets, '{}'::jsonb);
  v_problems text[] := '{}'::text[];
  v_unknown text[];
  v_key text;
begin
  select * into v_old from public.stores where id = p_store_id for update;
  if not found then
    raise exception 'store % not found', p_store_id using errcode = 'no_data_found';
  end if;

  v_store := public.store_apply_settings(v_old, coalesce(p_changes, '{}'::jsonb), array[
    'owner_id', 'name', 'support_email', 'extra_addresses', 'imap_host', 'imap_port',
    'imap_user', 'imap_tls', 'imap_folder', 'smtp_host', 'smtp_port', 'smtp_user', 'smtp_tls',
    'shopify_domain', 'active', 'reply_language', 'reply_signature', 'reply_tone',
    'reply_mode']);

  if jsonb_typeof(v_secrets) <> 'object' then
    raise exception 'secrets must be a JSON object' using errcode = 'invalid_parameter_value';
  end if;
  select array_agg(k order by k) into v_unknown
  from jsonb_object_keys(v_secrets) as k
  where k not in ('imap_password', 'smtp_password', 'shopify_token');
  if v_unknown is not null then
    v_problems := v_problems || ('unknown secrets: ' || array_to_string(v_unknown, ', '));
  end if;
  for v_key in select k from jsonb_object_keys(v_secrets) as k loop
    if jsonb_typeof(v_secrets -> v_key) <> 'string' or v_secrets ->> v_key = '' then
      v_problems := v_problems || format('%s must be a non-empty string', v_key);
    end if;
  end loop;
  if v_store.shopify_domain is not null and v_store.shopify_token_secret_id is null
     and not v_secrets ? 'shopify_token' then
    v_problems := v_problems || 'shopify_domain needs a shopify_token'::text;
  end if;
  if cardinality(v_problems) > 0 then
    raise exception 'invalid store secrets'
      using errcode = 'invalid_parameter_value', detail = array_to_string(v_problems, '; ');
  end if;

  if v_secrets ? 'imap_password' then
    v_store.imap_password_secret_id := public.store_put_secret(
      v_store.imap_password_secret_id, v_secrets ->> 'imap_password', v_store.id,
      'imap_password', 'IMAP password');
  end if;
  if v_secrets ? 'smtp_password' then
    v_store.smtp_password_secret_id := public.store_put_secret(
      v_store.smtp_password_secret_id, v_secrets ->> 'smtp_password', v_store.id,
      'smtp_password', 'SMTP password');
  end if;
  if v_secrets ? 'shopify_token' then
    v_store.shopify_token_secret_id := public.store_put_secret(
      v_store.shopify_token_secret_id, v_secrets ->> 'shopify_token', v_store.id,
      'shopify_token', 'Shopify Admin API token');
  end if;

  update public.stores set
    owner_id = v_store.owner_id,
    name = v_store.name,
    support_email = v_store.support_email,
    extra_addresses = v_store.extra_addresses,
    imap_host = v_store.imap_host,
    imap_port = v_store.imap_port,
    imap_user = v_store.imap_user,
    imap_tls = v_store.imap_tls,
    imap_folder = v_store.imap_folder,
    imap_password_secret_id = v_store.imap_password_secret_id,
    smtp_host = v_store.smtp_host,
    smtp_port = v_store.smtp_port,
    smtp_user = v_store.smtp_user,
    smtp_tls = v_store.smtp_tls,
    smtp_password_secret_id = v_store.smtp_password_secret_id,
    shopify_domain = v_store.shopify_domain,
    shopify_token_secret_id = v_store.shopify_token_secret_id,
    active = v_store.active,
    reply_language = v_store.reply_language,
    reply_signature = v_store.reply_signature,
    reply_tone = v_store.reply_tone,
    reply_mode = v_store.reply_mode
  where id = p_store_id
  returning * into v_store;
  return v_store;
end;
$$;

-- A negative amount is a correction; it may never take the balance below zero.
create or replace function public.admin_add_credits(
  p_store_id uuid,
  p_amount int,
  p_reason text default 'topup'
)
returns int
language plpgsql
set search_path = ''
as $$
declare
  v_credits int;
begin
  if p_amount is null or p_amount = 0 then
    raise exception 'credit amount must be non-zero' using errcode = 'invalid_parameter_value';
  end if;
  if p_reason is null or p_reason not in ('topup', 'adjustment', 'grant') then
    raise exception 'credit reason must be topup, adjustment or grant, not %', p_reason
      using errcode = 'invalid_parameter_value';
  end if;
  select credits into v_credits from public.stores where id = p_store_id for update;
  if not found then
    raise exception 'store % not found', p_store_id using errcode = 'no_data_found';
  end if;
  if v_credits + p_amount < 0 then
    raise exception 'store % has % credits; cannot remove %', p_store_id, v_credits, -p_amount
      using errcode = 'check_violation';
  end if;
  update public.stores set credits = credits + p_amount where id = p_store_id
  returning credits into v_credits;
  insert into public.credit_ledger (store_id, delta, reason)
  values (p_store_id, p_amount, p_reason);
  return v_credits;
end;
$$;

-- Privileges -----------------------------------------------------------------------------------

-- The API is the worker's (service_role) only: Supabase grants EXECUTE on new functions to anon
-- and authenticated by default, hence the explicit revoke before each grant.
do $$
declare
  v_sig text;
begin
  foreach v_sig in array array[
    'public.list_active_stores()',
    'public.list_stores(boolean)',
    'public.get_store(uuid)',
    'public.get_store_secrets(uuid)',
    'public.get_mailbox_state(uuid, text)',
    'public.ingest_messages(uuid, text, bigint, bigint, jsonb)',
    'public.record_events(jsonb)',
    'public.load_job_context(uuid, int)',
    'public.reserve_credit(uuid, uuid)',
    'public.release_credit(uuid, uuid, text)',
    'public.save_reply(uuid, uuid, jsonb)',
    'public.begin_send(uuid)',
    'public.finish_send(uuid, uuid, text, jsonb)',
    'public.reset_reply(uuid, text, text)',
    'public.admin_create_store(jsonb, jsonb)',
    'public.admin_update_store(uuid, jsonb, jsonb)',
    'public.admin_add_credits(uuid, int, text)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated', v_sig);
    execute format('grant execute on function %s to service_role', v_sig);
  end loop;
end;
$$;

-- Internal helpers. ingest_messages runs as its caller, so service_role needs the first one;
-- the store helpers are called only by the security definer admin functions (as their owner).
revoke all on function public.jsonb_email_array(jsonb) from public, anon, authenticated;
grant execute on function public.jsonb_email_array(jsonb) to service_role;
revoke all on function
  public.store_problems(public.stores),
  public.store_apply_settings(public.stores, jsonb, text[]),
  public.store_put_secret(uuid, text, uuid, text, text)
  from public, anon, authenticated, service_role;

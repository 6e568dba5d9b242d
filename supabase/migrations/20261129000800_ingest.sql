-- The pipeline's SQL API, ingestion: what fetch-emails calls to list stores, read their
-- mailbox state and secrets, and store parsed messages once each with their jobs.
--
-- Every multi-step state change is one function, because every PostgREST call is its own
-- transaction. All functions run with an empty search_path (every name is qualified) and are
-- executable by service_role only. Only the functions that touch Vault are security definer.
--
-- Event ownership: these functions write the message.* events of the transitions they perform.

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
  v_conflicting boolean;
  v_conflicts_with uuid;
  v_original_id text;
  v_support_email text;
  v_own_copies int := 0;
  v_copy_of jsonb;
begin
  if p_folder is null or p_folder = '' or p_uidvalidity is null or p_last_uid is null
     or p_last_uid < 0 then
    raise exception 'ingest_messages needs a folder, a uidvalidity and a last_uid >= 0'
      using errcode = 'invalid_parameter_value';
  end if;
  if jsonb_typeof(p_messages) is distinct from 'array' then
    raise exception 'p_messages must be a JSON array' using errcode = 'invalid_parameter_value';
  end if;
  select lower(btrim(s.support_email)) into v_support_email
  from public.stores s where s.id = p_store_id;
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

    -- A Message-ID already stored is a redelivery only when the sender and the text match too
    -- (the text when both copies have one: a skipped message's body is not kept). Anyone can
    -- write any Message-ID: a copy that differs is stored under a derived key (so a redelivery
    -- of it dedupes in turn), flagged, and processed like any other email; dropping it would
    -- let a forged message pre-empt a real customer's.
    v_from := nullif(lower(btrim(v_msg ->> 'from_address')), '');

    -- Our own reply's copy (sent from the support address with one of this store's reply
    -- Message-IDs): proof of delivery, never a customer's email. It is not stored (the reply row
    -- already is; storing it would open a conversation with ourselves) and gets no job; an event
    -- notes where it was, so the mailbox position's advance over it stays accounted for.
    if v_from = v_support_email then
      v_copy_of := public.confirm_reply_by_copy(
        p_store_id, v_message_id,
        jsonb_build_object('folder', p_folder, 'uid', v_msg -> 'uid'));
      if v_copy_of is not null then
        v_own_copies := v_own_copies + 1;
        insert into public.events (store_id, event_type, detail)
        values (p_store_id, 'message.own_copy',
                v_copy_of || jsonb_build_object('message_id', v_message_id, 'folder', p_folder,
                                                'uid', v_msg -> 'uid'));
        continue;
      end if;
    end if;

    v_conflicts_with := null;
    select m.id, m.from_address is distinct from v_from
                 or m.body_text <> (v_msg ->> 'body_text')
      into v_existing, v_conflicting
    from public.messages m where m.store_id = p_store_id and m.message_id = v_message_id;
    if found and coalesce(v_conflicting, false) then
      v_conflicts_with := v_existing;
      v_original_id := v_message_id;
      v_message_id := v_message_id || '#conflict-'
                      || md5(concat_ws(chr(31), v_from, v_msg ->> 'body_text'));
      if length(v_message_id) > 998 then
        v_message_id := '<' || md5(v_message_id) || '@conflicting-message-id.invalid>';
      end if;
      select m.id into v_existing
      from public.messages m where m.store_id = p_store_id and m.message_id = v_message_id;
    end if;
    if found then
      v_duplicates := v_duplicates + 1;
      insert into public.events (store_id, message_id, event_type, detail)
      values (p_store_id, v_existing, 'message.duplicate',
              jsonb_build_object('message_id', v_message_id, 'folder', p_folder,
                                 'uid', v_msg -> 'uid'));
      continue;
    end if;

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
                              then v_msg -> 'headers' else '{}'::jsonb end) as h)
        -- a conflicting copy keeps its real Message-ID here: our reply threads with it
        || case when v_conflicts_with is not null
                then jsonb_build_object('message-id', v_original_id) else '{}'::jsonb end,
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
    if v_conflicts_with is not null then
      insert into public.events (store_id, conversation_id, message_id, event_type, detail)
      values (p_store_id, v_conversation, v_id, 'message.conflicting_id',
              jsonb_build_object('message_id', v_original_id, 'stored_as', v_message_id,
                                 'conflicts_with', v_conflicts_with, 'from_address', v_from,
                                 'folder', p_folder, 'uid', v_msg -> 'uid'));
    end if;

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
    'own_copies', v_own_copies,
    'job_ids', to_jsonb(v_job_ids),
    'last_uid', v_last_uid
  );
end;
$$;

-- Privileges: these routines are for the worker (service_role) only. Supabase grants EXECUTE
-- to anon and authenticated by default, hence the explicit revoke before each grant.
revoke all on function public.list_active_stores() from public, anon, authenticated;
grant execute on function public.list_active_stores() to service_role;
revoke all on function public.list_stores(boolean) from public, anon, authenticated;
grant execute on function public.list_stores(boolean) to service_role;
revoke all on function public.get_store(uuid) from public, anon, authenticated;
grant execute on function public.get_store(uuid) to service_role;
revoke all on function public.get_store_secrets(uuid) from public, anon, authenticated;
grant execute on function public.get_store_secrets(uuid) to service_role;
revoke all on function public.get_mailbox_state(uuid, text) from public, anon, authenticated;
grant execute on function public.get_mailbox_state(uuid, text) to service_role;
revoke all on function public.ingest_messages(uuid, text, bigint, bigint, jsonb)
  from public, anon, authenticated;
grant execute on function public.ingest_messages(uuid, text, bigint, bigint, jsonb) to service_role;

-- An internal helper, but ingest_messages runs as its caller, so service_role needs it.
revoke all on function public.jsonb_email_array(jsonb) from public, anon, authenticated;
grant execute on function public.jsonb_email_array(jsonb) to service_role;

-- Store administration: what the stores CLI calls to create and update stores (settings checked
-- in one place, secrets written to Vault) and to add credits.
--
-- Every multi-step state change is one function, because every PostgREST call is its own
-- transaction. All functions run with an empty search_path (every name is qualified) and are
-- executable by service_role only. Security definer: the admin functions that touch Vault, and
-- validate_store_settings (to reach the internal helpers).

-- Plain IMAP/SMTP (no TLS) would send passwords and mail in the clear; only a server on this
-- machine may be reached that way (local test servers). The same hosts as worker/tls.py's
-- is_loopback, which the worker enforces again when it connects.
create or replace function public.is_loopback_host(p_host text)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_host text := lower(btrim(p_host));
begin
  if rtrim(v_host, '.') = 'localhost' then
    return true;
  end if;
  -- inet would also read a network ('127.0.0.1/8'), which is no host name.
  if v_host is null or position('/' in v_host) > 0 then
    return false;
  end if;
  v_host := btrim(v_host, '[]');
  return v_host::inet <<= '127.0.0.0/8'::inet or v_host::inet = '::1'::inet;
exception when invalid_text_representation then
  return false;
end;
$$;

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
  elsif p_store.imap_tls = 'plain' and coalesce(btrim(p_store.imap_host), '') <> ''
        and not public.is_loopback_host(p_store.imap_host) then
    v_problems := v_problems || format(
      'imap_tls ''plain'' (no TLS) is only allowed for loopback hosts, not %L', p_store.imap_host);
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
  elsif p_store.smtp_tls = 'plain' and coalesce(btrim(p_store.smtp_host), '') <> ''
        and not public.is_loopback_host(p_store.smtp_host) then
    v_problems := v_problems || format(
      'smtp_tls ''plain'' (no TLS) is only allowed for loopback hosts, not %L', p_store.smtp_host);
  end if;
  -- Host name labels (1-63 characters, no leading or trailing hyphen): a URL pasted instead
  -- of the shop's domain is refused here rather than failing every Shopify call later.
  if p_store.shopify_domain is not null and p_store.shopify_domain !~
     '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$' then
    v_problems := v_problems
      || 'shopify_domain must be a host name like shop.myshopify.com (no scheme or path)'::text;
  end if;
  if p_store.credits is null or p_store.credits < 0 then
    v_problems := v_problems || 'credits must be zero or more'::text;
  end if;
  if p_store.low_credits_at is null or p_store.low_credits_at < 0 then
    v_problems := v_problems || 'low_credits_at must be zero or more'::text;
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
  -- The mailbox as the record (migration 20261202000200_mailbox_record, decision 0019).
  if p_store.mailbox_sent is null or p_store.mailbox_sent not in ('auto', 'always', 'never') then
    v_problems := v_problems || 'mailbox_sent must be auto, always or never'::text;
  end if;
  if p_store.mailbox_drafts is null then
    v_problems := v_problems || 'mailbox_drafts must be true or false'::text;
  end if;
  if p_store.mailbox_mark_answered is null then
    v_problems := v_problems || 'mailbox_mark_answered must be true or false'::text;
  end if;
  if p_store.mailbox_sent_folder is not null and btrim(p_store.mailbox_sent_folder) = '' then
    v_problems := v_problems || 'mailbox_sent_folder must be a folder name or null'::text;
  end if;
  if p_store.mailbox_drafts_folder is not null and btrim(p_store.mailbox_drafts_folder) = '' then
    v_problems := v_problems || 'mailbox_drafts_folder must be a folder name or null'::text;
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

-- Applies the settings in p_changes (only the allowed keys, and only values of the right type)
-- onto p_base, normalising addresses. Never raises: store_settings_problems says what it left out.
create or replace function public.store_merge_settings(
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
  v_store public.stores := p_base;
  v_key text;
begin
  if jsonb_typeof(p_changes) = 'object' then
    -- One key at a time, so a value of the wrong type leaves only its own column unchanged.
    for v_key in
      select k from jsonb_object_keys(p_changes) as k where k = any (p_allowed) order by k
    loop
      begin
        v_store := jsonb_populate_record(v_store, jsonb_build_object(v_key, p_changes -> v_key));
      exception when data_exception then
        null;  -- reported by store_settings_problems
      end;
    end loop;
  end if;

  v_store.support_email := lower(btrim(v_store.support_email));
  v_store.extra_addresses := (select coalesce(array_agg(lower(btrim(a))), '{}')
                                from unnest(v_store.extra_addresses) as a
                                where btrim(a) <> '');
  v_store.shopify_domain := nullif(lower(btrim(v_store.shopify_domain)), '');
  v_store.imap_host := btrim(v_store.imap_host);
  v_store.smtp_host := btrim(v_store.smtp_host);
  return v_store;
end;
$$;

-- Every problem with applying p_changes onto p_base: unknown or read-only keys, each value of the
-- wrong type (not only the first) and every broken rule of the result (store_problems). Never
-- raises, so validate_store_settings can show the whole list and store_apply_settings refuse
-- with it.
create or replace function public.store_settings_problems(
  p_base public.stores,
  p_changes jsonb,
  p_allowed text[]
)
returns text[]
language plpgsql
stable
set search_path = ''
as $$
declare
  v_problems text[] := '{}'::text[];
  v_unknown text[];
  v_unreadable text[] := '{}'::text[];
  v_key text;
begin
  if jsonb_typeof(p_changes) is distinct from 'object' then
    return array['store settings must be a JSON object'];
  end if;
  select array_agg(k order by k) into v_unknown
  from jsonb_object_keys(p_changes) as k
  where k <> all (p_allowed);
  if v_unknown is not null then
    v_problems := v_problems || ('unknown or read-only keys: ' || array_to_string(v_unknown, ', '));
  end if;

  for v_key in
    select k from jsonb_object_keys(p_changes) as k where k = any (p_allowed) order by k
  loop
    begin
      perform jsonb_populate_record(p_base, jsonb_build_object(v_key, p_changes -> v_key));
    exception when data_exception then
      v_problems := v_problems || format('%s: %s', v_key, sqlerrm);
      v_unreadable := v_unreadable || v_key;
    end;
  end loop;

  -- An unreadable value kept its base value; a rule broken by that value would only repeat the
  -- problem already listed for its key (every rule's message starts with the key).
  return v_problems || array(
    select r.problem
    from unnest(public.store_problems(public.store_merge_settings(p_base, p_changes, p_allowed)))
         with ordinality as r (problem, n)
    where split_part(split_part(r.problem, ' ', 1), ':', 1) <> all (v_unreadable)
    order by r.n);
end;
$$;

-- Applies p_changes onto p_base (store_merge_settings), or raises one invalid_parameter_value
-- error listing every problem (store_settings_problems).
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
  v_problems text[];
begin
  if jsonb_typeof(p_changes) is distinct from 'object' then
    raise exception 'store settings must be a JSON object'
      using errcode = 'invalid_parameter_value';
  end if;
  v_problems := public.store_settings_problems(p_base, p_changes, p_allowed);
  if cardinality(v_problems) > 0 then
    raise exception 'invalid store settings'
      using errcode = 'invalid_parameter_value', detail = array_to_string(v_problems, '; ');
  end if;
  return public.store_merge_settings(p_base, p_changes, p_allowed);
end;
$$;

-- A new store before its settings: the column defaults, as an insert would apply them.
create or replace function public.store_defaults()
returns public.stores
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_base public.stores;
begin
  v_base := jsonb_populate_record(null::public.stores, '{}'::jsonb);
  v_base.id := gen_random_uuid();
  v_base.extra_addresses := '{}';
  v_base.imap_tls := 'ssl';
  v_base.imap_folder := 'INBOX';
  v_base.smtp_tls := 'starttls';
  v_base.credits := 0;
  v_base.low_credits_at := 10;
  v_base.active := true;
  v_base.reply_language := 'auto';
  v_base.reply_tone := 'friendly';
  v_base.reply_mode := 'auto_send';
  v_base.mailbox_sent := 'auto';
  v_base.mailbox_drafts := true;
  v_base.mailbox_mark_answered := true;
  return v_base;
end;
$$;

-- The settings an operator may give: a new store's initial credits too; after that, credits
-- change only through admin_add_credits, so the ledger always explains the balance.
create or replace function public.store_setting_keys(p_new_store boolean)
returns text[]
language sql
immutable
set search_path = ''
as $$
  select array[
    'owner_id', 'name', 'support_email', 'extra_addresses', 'imap_host', 'imap_port',
    'imap_user', 'imap_tls', 'imap_folder', 'smtp_host', 'smtp_port', 'smtp_user', 'smtp_tls',
    'shopify_domain', 'active', 'reply_language', 'reply_signature', 'reply_tone',
    'reply_mode', 'mailbox_sent', 'mailbox_drafts', 'mailbox_mark_answered',
    'mailbox_sent_folder', 'mailbox_drafts_folder', 'low_credits_at']
    || case when p_new_store then array['credits'] else '{}'::text[] end
$$;

-- Every problem with store settings, listed without raising, so the stores CLI shows them all
-- before it asks for any secret. Without p_store_id, p_store are a new store's settings over the
-- column defaults (as admin_create_store applies them); with it, changes to that store (as
-- admin_update_store applies them). Empty when the admin function would accept the settings;
-- secrets and the owner's existence are checked there. Security definer only to call the
-- internal store helpers, which no API role may call directly; it reads one store row.
create or replace function public.validate_store_settings(
  p_store jsonb,
  p_store_id uuid default null
)
returns text[]
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_base public.stores;
begin
  if p_store_id is null then
    v_base := public.store_defaults();
  else
    select * into v_base from public.stores where id = p_store_id;
    if not found then
      return array[format('store %s not found', p_store_id)];
    end if;
  end if;
  return public.store_settings_problems(v_base, coalesce(p_store, 'null'::jsonb),
                                        public.store_setting_keys(p_store_id is null));
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
  v_store public.stores;
  v_problems text[] := '{}'::text[];
  v_unknown text[];
begin
  v_store := public.store_apply_settings(public.store_defaults(),
                                         coalesce(p_store, 'null'::jsonb),
                                         public.store_setting_keys(true));

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

  v_store := public.store_apply_settings(v_old, coalesce(p_changes, '{}'::jsonb),
                                         public.store_setting_keys(false));

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
    reply_mode = v_store.reply_mode,
    mailbox_sent = v_store.mailbox_sent,
    mailbox_drafts = v_store.mailbox_drafts,
    mailbox_mark_answered = v_store.mailbox_mark_answered,
    mailbox_sent_folder = v_store.mailbox_sent_folder,
    mailbox_drafts_folder = v_store.mailbox_drafts_folder,
    low_credits_at = v_store.low_credits_at
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

-- Privileges: these routines are for the worker (service_role) only. Supabase grants EXECUTE
-- to anon and authenticated by default, hence the explicit revoke before each grant.
revoke all on function public.admin_create_store(jsonb, jsonb) from public, anon, authenticated;
grant execute on function public.admin_create_store(jsonb, jsonb) to service_role;
revoke all on function public.admin_update_store(uuid, jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function public.admin_update_store(uuid, jsonb, jsonb) to service_role;
revoke all on function public.admin_add_credits(uuid, int, text) from public, anon, authenticated;
grant execute on function public.admin_add_credits(uuid, int, text) to service_role;
revoke all on function public.validate_store_settings(jsonb, uuid)
  from public, anon, authenticated;
grant execute on function public.validate_store_settings(jsonb, uuid) to service_role;

-- Internal helpers, called only by the security definer store functions (as their owner).
revoke all on function
  public.is_loopback_host(text),
  public.store_problems(public.stores),
  public.store_merge_settings(public.stores, jsonb, text[]),
  public.store_settings_problems(public.stores, jsonb, text[]),
  public.store_apply_settings(public.stores, jsonb, text[]),
  public.store_defaults(),
  public.store_setting_keys(boolean),
  public.store_put_secret(uuid, text, uuid, text, text)
  from public, anon, authenticated, service_role;

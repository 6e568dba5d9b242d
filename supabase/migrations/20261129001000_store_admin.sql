-- Store administration: what the stores CLI calls to create and update stores (settings checked
-- in one place, secrets written to Vault) and to add credits.
--
-- Every multi-step state change is one function, because every PostgREST call is its own
-- transaction. All functions run with an empty search_path (every name is qualified) and are
-- executable by service_role only. Only the functions that touch Vault are security definer.

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

-- Privileges: these routines are for the worker (service_role) only. Supabase grants EXECUTE
-- to anon and authenticated by default, hence the explicit revoke before each grant.
revoke all on function public.admin_create_store(jsonb, jsonb) from public, anon, authenticated;
grant execute on function public.admin_create_store(jsonb, jsonb) to service_role;
revoke all on function public.admin_update_store(uuid, jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function public.admin_update_store(uuid, jsonb, jsonb) to service_role;
revoke all on function public.admin_add_credits(uuid, int, text) from public, anon, authenticated;
grant execute on function public.admin_add_credits(uuid, int, text) to service_role;

-- Internal helpers, called only by the security definer admin functions (as their owner).
revoke all on function
  public.store_problems(public.stores),
  public.store_apply_settings(public.stores, jsonb, text[]),
  public.store_put_secret(uuid, text, uuid, text, text)
  from public, anon, authenticated, service_role;

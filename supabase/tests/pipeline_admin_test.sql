-- Store administration: admin_create_store / admin_update_store validate everything before saving
-- anything, keep credentials only in Vault, and get_store_secrets reads them back.
-- Runs as service_role, the role the store CLI uses.
begin;
select plan(36);

insert into auth.users (id, email) values
  ('00000000-0000-4000-8000-0000000000a1', 'owner@example.test');

-- The SQLSTATE and detail of a statement's error, or 'ok'.
create function pg_temp.detail_of(p_sql text) returns text language plpgsql as $$
declare
  v_detail text;
begin
  execute p_sql;
  return 'ok';
exception when others then
  get stacked diagnostics v_detail = pg_exception_detail;
  return sqlstate || ': ' || v_detail;
end;
$$;
create function pg_temp.settings(p_extra jsonb default '{}') returns jsonb language sql as $$
  select jsonb_build_object(
    'name', 'Loja Azul', 'owner_id', '00000000-0000-4000-8000-0000000000a1',
    'support_email', ' Ajuda@LojaAzul.TEST ', 'extra_addresses', jsonb_build_array('Vendas@LojaAzul.test'),
    'imap_host', 'imap.lojaazul.test', 'imap_port', 993, 'imap_user', 'ajuda@lojaazul.test',
    'smtp_host', 'smtp.lojaazul.test', 'smtp_port', 465, 'smtp_user', 'ajuda@lojaazul.test',
    'smtp_tls', 'ssl', 'shopify_domain', 'LojaAzul.myshopify.com', 'credits', 25,
    'reply_language', 'pt-BR', 'reply_signature', 'Equipe Loja Azul', 'reply_tone', 'calorosa')
    || p_extra
$$;
create function pg_temp.secrets(p_extra jsonb default '{}') returns jsonb language sql as $$
  select '{"imap_password": "imap-pw-1", "smtp_password": "smtp-pw-1",
           "shopify_token": "shpat_test_1"}'::jsonb || p_extra
$$;
create function pg_temp.store(p_id uuid) returns public.stores language sql as $$
  select s.* from public.stores s where s.id = p_id
$$;
grant execute on all functions in schema pg_temp to service_role;
create temp table ids (name text primary key, id uuid);
grant all on ids to service_role;

reset role;
create temp table before_counts as
select (select count(*) from vault.secrets) as secrets, (select count(*) from public.stores) as stores;
grant select on before_counts to service_role;

set local role service_role;

-- Create.
insert into ids select 'azul', public.admin_create_store(pg_temp.settings(), pg_temp.secrets());
select isnt((select id from ids where name = 'azul'), null, 'admin_create_store returns the id');
select is(row(s.name, s.owner_id, s.support_email, s.extra_addresses, s.imap_tls, s.smtp_tls,
              s.imap_folder, s.shopify_domain, s.credits, s.active, s.reply_language,
              s.reply_tone, s.reply_mode)::text,
          row('Loja Azul', '00000000-0000-4000-8000-0000000000a1'::uuid, 'ajuda@lojaazul.test',
              array['vendas@lojaazul.test'], 'ssl', 'ssl', 'INBOX', 'lojaazul.myshopify.com', 25,
              true, 'pt-BR', 'calorosa', 'auto_send')::text,
          'settings are stored, addresses and domain normalised, defaults applied')
from ids, pg_temp.store(ids.id) s where ids.name = 'azul';
select ok(s.imap_password_secret_id is not null and s.smtp_password_secret_id is not null
          and s.shopify_token_secret_id is not null, 'all three secrets have Vault ids')
from ids, pg_temp.store(ids.id) s where ids.name = 'azul';
select ok(position('pw-1' in s::text) = 0 and position('shpat' in s::text) = 0,
          'no credential appears in the stores row')
from ids, pg_temp.store(ids.id) s where ids.name = 'azul';
select is(public.get_store_secrets(id),
          '{"imap_password": "imap-pw-1", "smtp_password": "smtp-pw-1",
            "shopify_token": "shpat_test_1"}'::jsonb,
          'get_store_secrets decrypts them from Vault')
from ids where name = 'azul';
select is((select array_agg(row(delta, reason)::text) from public.credit_ledger l, ids
           where ids.name = 'azul' and l.store_id = ids.id),
          array[row(25, 'topup')::text], 'the initial credits are in the ledger');
select throws_ok($$select public.get_store_secrets('10000000-0000-4000-8000-0000000000ff')$$,
                 'P0002', null, 'get_store_secrets of an unknown store');

insert into ids select 'minimal', public.admin_create_store(
  '{"name": "Mini", "support_email": "mini@mini.test", "imap_host": "127.0.0.1",
    "imap_port": 1143, "imap_user": "mini", "imap_tls": "plain", "smtp_host": "127.0.0.1",
    "smtp_port": 1025, "smtp_user": "mini", "smtp_tls": "plain"}',
  '{"imap_password": "a", "smtp_password": "b"}');
select is(row(s.credits, s.shopify_domain, s.shopify_token_secret_id, s.owner_id,
              s.reply_language, s.reply_mode)::text,
          row(0, null::text, null::uuid, null::uuid, 'auto', 'auto_send')::text,
          'a store without Shopify, owner or credits')
from ids, pg_temp.store(ids.id) s where ids.name = 'minimal';
select is(public.get_store_secrets(id),
          '{"imap_password": "a", "smtp_password": "b", "shopify_token": null}'::jsonb,
          'its Shopify token is null') from ids where name = 'minimal';

-- Validation: every problem reported at once, nothing saved.
select is(pg_temp.detail_of($$select public.admin_create_store(
            '{"name": " ", "support_email": "not-an-address", "imap_port": 0,
              "imap_tls": "tls", "reply_mode": "always", "extra_addresses": ["ok@x.test", "bad"]}',
            '{"imap_password": "a", "smtp_password": "b"}')$$),
          '22023: name is required; support_email must be an email address; extra_addresses: '
          'bad is not an email address; imap_host is required; imap_port must be between 1 and '
          '65535; imap_user is required; imap_tls must be ssl, starttls or plain; smtp_host is '
          'required; smtp_port must be between 1 and 65535; smtp_user is required; reply_mode '
          'must be auto_send or draft_only',
          'invalid settings: one error listing every problem');
select is(pg_temp.detail_of(format('select public.admin_create_store(%L, %L)',
            pg_temp.settings('{"id": "10000000-0000-4000-8000-000000000009", "colour": "blue"}'),
            pg_temp.secrets())),
          '22023: unknown or read-only keys: colour, id', 'unknown and read-only keys are refused');
select is(pg_temp.detail_of(format('select public.admin_create_store(%L, %L)',
            pg_temp.settings('{"imap_password_secret_id": "10000000-0000-4000-8000-000000000009"}'),
            pg_temp.secrets())),
          '22023: unknown or read-only keys: imap_password_secret_id',
          'secret ids cannot be set directly');
select is(left(pg_temp.detail_of(format('select public.admin_create_store(%L, %L)',
            pg_temp.settings('{"imap_port": "nine-nine-three"}'), pg_temp.secrets())), 6),
          '22023:', 'a value of the wrong type is a settings error');
select is(pg_temp.detail_of(format('select public.admin_create_store(%L, %L)',
            pg_temp.settings(), '{"imap_password": "", "smtp_pass": "x"}')),
          '22023: unknown secrets: smtp_pass; imap_password is required; smtp_password is '
          'required; shopify_domain and shopify_token go together',
          'missing and unknown secrets are reported');
select is(pg_temp.detail_of(format('select public.admin_create_store(%L, %L)',
            pg_temp.settings('{"shopify_domain": null}'), pg_temp.secrets())),
          '22023: shopify_domain and shopify_token go together',
          'a Shopify token without a shop is refused');
select is(pg_temp.detail_of(format('select public.admin_create_store(%L, %L)',
            pg_temp.settings('{"credits": -5}'), pg_temp.secrets())),
          '22023: credits must be zero or more', 'negative initial credits are refused');
select throws_ok($$select public.admin_create_store('[]', '{}')$$, '22023', null,
                 'settings must be an object');
select throws_ok(format('select public.admin_create_store(%L, %L)',
                        pg_temp.settings('{"owner_id": "00000000-0000-4000-8000-0000000000ff"}'),
                        pg_temp.secrets()),
                 '23503', null, 'an unknown owner is refused');
reset role;
select is((select count(*) from vault.secrets) - secrets, 5::bigint,
          'only the two successful creations wrote secrets (3 + 2)')
from before_counts;
select is((select count(*) from public.stores) - stores, 2::bigint,
          'and only they wrote stores') from before_counts;
set local role service_role;

-- Update.
select is((public.admin_update_store(id, '{"name": "Loja Azul Ltda", "reply_mode": "draft_only",
                                           "support_email": "SAC@LojaAzul.test"}')).name,
          'Loja Azul Ltda', 'admin_update_store returns the updated row')
from ids where name = 'azul';
select is(row(s.name, s.reply_mode, s.support_email, s.imap_host, s.credits, s.reply_signature)::text,
          row('Loja Azul Ltda', 'draft_only', 'sac@lojaazul.test', 'imap.lojaazul.test', 25,
              'Equipe Loja Azul')::text,
          'only the given settings changed')
from ids, pg_temp.store(ids.id) s where ids.name = 'azul';
select is(public.get_store_secrets(id) ->> 'imap_password', 'imap-pw-1',
          'secrets are untouched without p_secrets') from ids where name = 'azul';

create temp table old_secret as
select s.imap_password_secret_id as id from ids, public.stores s
where ids.name = 'azul' and s.id = ids.id;
grant select on old_secret to service_role;
select lives_ok(format('select public.admin_update_store(%L, %L, %L)', id, '{}',
                       '{"imap_password": "imap-pw-2"}'),
                'rotating the IMAP password') from ids where name = 'azul';
select is(public.get_store_secrets(id) ->> 'imap_password', 'imap-pw-2',
          'the new password is in effect') from ids where name = 'azul';
select is(s.imap_password_secret_id, (select id from old_secret),
          'rotated in place: the secret id is unchanged')
from ids, pg_temp.store(ids.id) s where ids.name = 'azul';

select is(pg_temp.detail_of(format('select public.admin_update_store(%L, %L)', id,
                                   '{"shopify_domain": "x.myshopify.com"}')),
          '22023: shopify_domain needs a shopify_token',
          'a shop without a token is refused') from ids where name = 'minimal';
select is((public.admin_update_store(id, '{"shopify_domain": "mini.myshopify.com"}',
                                     '{"shopify_token": "shpat_mini"}')).shopify_domain,
          'mini.myshopify.com', 'adding Shopify to a store that had none')
from ids where name = 'minimal';
select is(public.get_store_secrets(id) ->> 'shopify_token', 'shpat_mini',
          'creates the missing secret') from ids where name = 'minimal';
select is((public.admin_update_store(id, '{"active": false}')).active, false,
          'deactivating a store') from ids where name = 'minimal';
select is((select count(*)::int from public.list_active_stores() s, ids
           where ids.name = 'minimal' and s.id = ids.id), 0,
          'a deactivated store is no longer listed');

select is(pg_temp.detail_of(format('select public.admin_update_store(%L, %L)', id,
                                   '{"credits": 1000}')),
          '22023: unknown or read-only keys: credits',
          'credits change only through admin_add_credits') from ids where name = 'azul';
select is(pg_temp.detail_of(format('select public.admin_update_store(%L, %L)', id,
                                   '{"smtp_tls": "ssl3", "smtp_port": 99999}')),
          '22023: smtp_port must be between 1 and 65535; smtp_tls must be ssl, starttls or plain',
          'invalid changes are refused with every problem') from ids where name = 'azul';
select is(pg_temp.detail_of(format('select public.admin_update_store(%L, %L, %L)', id, '{}',
                                   '{"smtp_password": ""}')),
          '22023: smtp_password must be a non-empty string', 'an empty secret is refused')
from ids where name = 'azul';
select is((pg_temp.store(id)).smtp_port, 465, 'a refused update changed nothing')
from ids where name = 'azul';
select throws_ok($$select public.admin_update_store('10000000-0000-4000-8000-0000000000ff', '{}')$$,
                 'P0002', null, 'admin_update_store of an unknown store');

select * from finish();
rollback;

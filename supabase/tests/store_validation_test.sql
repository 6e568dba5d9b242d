-- Store settings validation, in one place: validate_store_settings lists every problem without
-- raising (what the stores CLI shows before it asks for secrets), the admin functions refuse the
-- same problems, and plain IMAP/SMTP is allowed for loopback hosts only.
-- Runs as service_role, the role the store CLI uses.
begin;
select plan(37);

create function pg_temp.valid_settings(p_extra jsonb default '{}') returns jsonb language sql as $$
  select jsonb_build_object(
    'name', 'Loja Verde', 'support_email', 'ajuda@lojaverde.test',
    'imap_host', 'imap.lojaverde.test', 'imap_port', 993, 'imap_user', 'ajuda@lojaverde.test',
    'smtp_host', 'smtp.lojaverde.test', 'smtp_port', 587, 'smtp_user', 'ajuda@lojaverde.test')
    || p_extra
$$;
create function pg_temp.problems(p_extra jsonb, p_store_id uuid default null) returns text[]
language sql as $$
  select public.validate_store_settings(pg_temp.valid_settings(p_extra), p_store_id)
$$;
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
grant execute on all functions in schema pg_temp to service_role;
create temp table ids (id uuid);
grant all on ids to service_role;

-- Privileges and hardening.
select ok(has_function_privilege('service_role', 'public.validate_store_settings(jsonb,uuid)',
                                  'EXECUTE'), 'service_role may validate store settings');
select ok(not has_function_privilege(r, 'public.validate_store_settings(jsonb,uuid)', 'EXECUTE'),
          format('%s may not', r))
from unnest(array['anon', 'authenticated']) r;
select is(array(select format('%s %s', r, h)
                from unnest(array['anon', 'authenticated', 'service_role']) r,
                     unnest(array['public.is_loopback_host(text)',
                                  'public.store_merge_settings(public.stores,jsonb,text[])',
                                  'public.store_settings_problems(public.stores,jsonb,text[])',
                                  'public.store_defaults()',
                                  'public.store_setting_keys(boolean)']) h
                where has_function_privilege(r, h, 'EXECUTE')),
          '{}'::text[], 'no API role may call the internal store helpers');
select is((select array[p.prosecdef::text, array_to_string(p.proconfig, ',')] from pg_proc p
           where p.oid = 'public.validate_store_settings(jsonb,uuid)'::regprocedure),
          array['true', 'search_path=""'],
          'validate_store_settings is security definer (to reach the helpers), empty search_path');
select is(array(select format('%s: %s', p.proname, c.message)
                from pg_proc p,
                     lateral extensions.plpgsql_check_function_tb(
                       p.oid::regprocedure, extra_warnings => true,
                       performance_warnings => true) c
                where p.oid = any (array[
                  'public.validate_store_settings(jsonb,uuid)'::regprocedure,
                  'public.is_loopback_host(text)',
                  'public.store_merge_settings(public.stores,jsonb,text[])',
                  'public.store_settings_problems(public.stores,jsonb,text[])',
                  'public.store_apply_settings(public.stores,jsonb,text[])',
                  'public.store_defaults()',
                  'public.admin_create_store(jsonb,jsonb)',
                  'public.admin_update_store(uuid,jsonb,jsonb)'])),
          '{}'::text[], 'plpgsql_check finds nothing in the validation functions');

-- Loopback hosts: the only ones plain (no TLS) may reach.
select is(array(select h from unnest(array['localhost', 'LOCALHOST', 'localhost.', '127.0.0.1',
                                           '127.8.9.10', ' 127.0.0.1 ', '::1', '[::1]']) h
                where not public.is_loopback_host(h)),
          '{}'::text[], 'localhost, 127.0.0.0/8 and ::1 are loopback');
select is(array(select h from unnest(array['10.0.0.1', '128.0.0.1', '::2', 'imap.example.com',
                                           'localhost.example.com', '127.0.0.1/8', '',
                                           'not a host']) h
                where public.is_loopback_host(h)),
          '{}'::text[], 'other addresses, names and networks are not');
select is(public.is_loopback_host(null), false, 'nor is no host');

set local role service_role;

-- A valid new store, and what a new store gets by default.
select is(public.validate_store_settings(pg_temp.valid_settings()), '{}'::text[],
          'valid settings have no problems');
select is(pg_temp.problems('{"imap_tls": "plain", "imap_host": "127.0.0.1",
                             "smtp_tls": "plain", "smtp_host": "localhost"}'),
          '{}'::text[], 'plain is accepted for loopback hosts');
select is(pg_temp.problems('{"imap_tls": "plain", "imap_host": "imap.far.away"}'),
          array['imap_tls ''plain'' (no TLS) is only allowed for loopback hosts, not '
                '''imap.far.away'''],
          'plain IMAP to another host is refused, naming the host');
select is(pg_temp.problems('{"smtp_tls": "plain", "smtp_host": "192.0.2.7"}'),
          array['smtp_tls ''plain'' (no TLS) is only allowed for loopback hosts, not '
                '''192.0.2.7'''],
          'plain SMTP to another host is refused');
select is(pg_temp.problems('{"imap_tls": "plain", "imap_host": " "}'),
          array['imap_host is required'],
          'a missing host is reported once, not also as a non-loopback host');
select is(pg_temp.problems('{"active": null}'), array['active must be true or false'],
          'active must be set');

-- Every problem at once, in one list, including values of the wrong type.
select is(public.validate_store_settings(
            '{"name": " ", "support_email": "not-an-address", "imap_port": 0,
              "imap_tls": "tls", "reply_mode": "always", "extra_addresses": ["ok@x.test", "bad"]}'),
          array['name is required', 'support_email must be an email address',
                'extra_addresses: bad is not an email address', 'imap_host is required',
                'imap_port must be between 1 and 65535', 'imap_user is required',
                'imap_tls must be ssl, starttls or plain', 'smtp_host is required',
                'smtp_port must be between 1 and 65535', 'smtp_user is required',
                'reply_mode must be auto_send or draft_only'],
          'every broken rule is listed, as admin_create_store lists them');
select is(pg_temp.problems('{"imap_port": "nine-nine-three", "owner_id": "bob",
                             "smtp_tls": "plain"}'),
          array['imap_port: invalid input syntax for type integer: "nine-nine-three"',
                'owner_id: invalid input syntax for type uuid: "bob"',
                'smtp_tls ''plain'' (no TLS) is only allowed for loopback hosts, not '
                '''smtp.lojaverde.test'''],
          'each unreadable value is named once, next to the broken rules');
select is(pg_temp.problems('{"colour": "blue", "id": "10000000-0000-4000-8000-000000000009",
                             "credits": -1}'),
          array['unknown or read-only keys: colour, id', 'credits must be zero or more'],
          'unknown and read-only keys are listed with the other problems');
select is(pg_temp.problems('{"shopify_domain": "https://loja.myshopify.com/",
                             "reply_language": "Portuguese", "reply_tone": " "}'),
          array['shopify_domain must be a host name like shop.myshopify.com (no scheme or path)',
                'reply_language must be auto or a language tag like pt-BR',
                'reply_tone is required'],
          'shop, language and tone rules');

select is(array(select d from unnest(array['loja-.myshopify.com', '-loja.myshopify.com',
                                           'loja..myshopify.com', 'loja_azul.myshopify.com',
                                           repeat('a', 64) || '.myshopify.com']) d
                where cardinality(pg_temp.problems(jsonb_build_object('shopify_domain', d))) = 0),
          '{}'::text[], 'a shop domain is made of host name labels');
select is(pg_temp.problems('{"shopify_domain": " Loja-Azul.MyShopify.com "}'), '{}'::text[],
          'a shop domain is trimmed and lower-cased before the check');

-- Never raises for bad input.
select is(public.validate_store_settings('[]'), array['store settings must be a JSON object'],
          'an array is a problem, not an error');
select is(public.validate_store_settings('"x"'), array['store settings must be a JSON object'],
          'so is a string');
select is(public.validate_store_settings(null), array['store settings must be a JSON object'],
          'and no settings at all');
select is(pg_temp.problems('{"extra_addresses": "a@b.test", "active": "maybe", "credits": 1.5}'),
          array['active: invalid input syntax for type boolean: "maybe"',
                'credits: invalid input syntax for type integer: "1.5"',
                'extra_addresses: malformed array literal: "a@b.test"'],
          'unreadable arrays, booleans and numbers are listed, not raised');

-- The same list is what admin_create_store refuses with.
select is(pg_temp.detail_of(format('select public.admin_create_store(%L, %L)',
            pg_temp.valid_settings('{"imap_tls": "plain", "imap_port": 0}'),
            '{"imap_password": "a", "smtp_password": "b"}')),
          '22023: imap_port must be between 1 and 65535; imap_tls ''plain'' (no TLS) is only '
          'allowed for loopback hosts, not ''imap.lojaverde.test''',
          'admin_create_store refuses plain IMAP to another host, with every problem');
select is(pg_temp.detail_of(format('select public.admin_create_store(%L, %L)',
            pg_temp.valid_settings('{"owner_id": "bob", "imap_port": "x"}'),
            '{"imap_password": "a", "smtp_password": "b"}')),
          '22023: imap_port: invalid input syntax for type integer: "x"; owner_id: invalid input '
          'syntax for type uuid: "bob"',
          'and names every value of the wrong type, not only the first');

-- Changes to an existing store: validated against its current row, with the update's keys.
insert into ids select public.admin_create_store(
  pg_temp.valid_settings('{"imap_host": "127.0.0.1", "imap_tls": "plain", "imap_port": 143}'),
  '{"imap_password": "a", "smtp_password": "b"}');
select is(public.validate_store_settings('{}', id), '{}'::text[],
          'a stored store with plain IMAP on loopback is valid') from ids;
select is(public.validate_store_settings('{"imap_host": "imap.far.away"}', id),
          array['imap_tls ''plain'' (no TLS) is only allowed for loopback hosts, not '
                '''imap.far.away'''],
          'moving its plain IMAP to another host is refused') from ids;
select is(public.validate_store_settings('{"imap_host": "imap.far.away", "imap_tls": "ssl"}', id),
          '{}'::text[], 'together with TLS it is accepted') from ids;
select is(public.validate_store_settings('{"credits": 5, "name": ""}', id),
          array['unknown or read-only keys: credits', 'name is required'],
          'credits are read-only once the store exists') from ids;
select is(public.validate_store_settings('{"name": "x"}', '10000000-0000-4000-8000-0000000000ff'),
          array['store 10000000-0000-4000-8000-0000000000ff not found'],
          'an unknown store is a problem, not an error');
select is(pg_temp.detail_of(format('select public.admin_update_store(%L, %L)', id,
                                   '{"imap_host": "imap.far.away"}')),
          '22023: imap_tls ''plain'' (no TLS) is only allowed for loopback hosts, not '
          '''imap.far.away''',
          'admin_update_store refuses it too') from ids;
select is((select s.imap_host from public.stores s, ids where s.id = ids.id), '127.0.0.1',
          'and changes nothing');
select is(public.validate_store_settings('{"imap_host": "imap.far.away"}', id), array[
            'imap_tls ''plain'' (no TLS) is only allowed for loopback hosts, not '
            '''imap.far.away'''],
          'validating changed nothing either') from ids;
select is((select s.imap_host from public.stores s, ids where s.id = ids.id), '127.0.0.1',
          'validation never writes');
select is((public.admin_update_store(id, '{"imap_host": " imap.lojaverde.test ",
                                           "imap_tls": "ssl", "imap_port": 993}')).imap_host,
          'imap.lojaverde.test', 'a valid change is applied, the host trimmed') from ids;

select * from finish();
rollback;

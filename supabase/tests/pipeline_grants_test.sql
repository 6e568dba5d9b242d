-- The pipeline API's signatures, privileges and hardening: executable by service_role only, an
-- empty search_path everywhere, security definer exactly where Vault needs it, and every
-- PL/pgSQL body clean under plpgsql_check.
begin;
select plan(59);

create temp table api (sig text primary key, returns text, definer boolean);
insert into api values
  ('list_active_stores()', 'setof stores', false),
  ('list_stores(boolean)', 'setof stores', false),
  ('get_store(uuid)', 'setof stores', false),
  ('get_store_secrets(uuid)', 'jsonb', true),
  ('get_mailbox_state(uuid,text)', 'setof mailbox_state', false),
  ('ingest_messages(uuid,text,bigint,bigint,jsonb)', 'jsonb', false),
  ('record_events(jsonb)', 'integer', false),
  ('load_job_context(uuid,integer)', 'jsonb', false),
  ('reserve_credit(uuid,uuid)', 'text', false),
  ('release_credit(uuid,uuid,text)', 'boolean', false),
  ('save_reply(uuid,uuid,jsonb)', 'replies', false),
  ('begin_send(uuid)', 'text', false),
  ('finish_send(uuid,uuid,text,jsonb)', 'boolean', false),
  ('reset_reply(uuid,text,text)', 'boolean', false),
  ('admin_create_store(jsonb,jsonb)', 'uuid', true),
  ('admin_update_store(uuid,jsonb,jsonb)', 'stores', true),
  ('admin_add_credits(uuid,integer,text)', 'integer', false);

select has_function('public', split_part(sig, '(', 1),
                    string_to_array(rtrim(split_part(sig, '(', 2), ')'), ','),
                    format('%s exists', sig))
from api order by sig;
select function_returns('public', split_part(sig, '(', 1),
                        string_to_array(rtrim(split_part(sig, '(', 2), ')'), ','), returns,
                        format('%s returns %s', sig, returns))
from api order by sig;

select is(array(select sig from api
                where has_function_privilege('service_role', 'public.' || sig, 'EXECUTE')
                order by sig),
          array(select sig from api order by sig), 'service_role may execute every API function');
select is(array(select a.sig from api a, unnest(array['anon', 'authenticated']) r
                where has_function_privilege(r, 'public.' || a.sig, 'EXECUTE')),
          '{}'::text[], 'anon and authenticated may execute none (nor through PUBLIC)');
select is(array(select sig from api
                where not exists (select 1 from pg_proc p
                                  where p.oid = ('public.' || sig)::regprocedure
                                    and 'search_path=""' = any (p.proconfig))
                order by sig),
          '{}'::text[], 'every API function pins an empty search_path');
select is(array(select sig from api
                where (select prosecdef from pg_proc where oid = ('public.' || sig)::regprocedure)
                order by sig),
          array(select sig from api where definer order by sig),
          'security definer exactly for the Vault functions');
select is(array(select sig from api
                where (select pg_get_userbyid(proowner) from pg_proc
                       where oid = ('public.' || sig)::regprocedure)
                      in ('anon', 'authenticated', 'service_role')),
          '{}'::text[], 'no API function is owned by an API role');

-- Internal helpers are not part of the API.
select ok(not has_function_privilege(r, 'public.store_problems(public.stores)', 'EXECUTE'),
          format('%s cannot call store_problems', r))
from unnest(array['anon', 'authenticated', 'service_role']) r;
select ok(not has_function_privilege(r, 'public.store_apply_settings(public.stores,jsonb,text[])',
                                     'EXECUTE'),
          format('%s cannot call store_apply_settings', r))
from unnest(array['anon', 'authenticated', 'service_role']) r;
select ok(not has_function_privilege(r, 'public.store_put_secret(uuid,text,uuid,text,text)',
                                     'EXECUTE'),
          format('%s cannot call store_put_secret', r))
from unnest(array['anon', 'authenticated', 'service_role']) r;
select ok(not has_function_privilege(r, 'public.jsonb_email_array(jsonb)', 'EXECUTE'),
          format('%s cannot call jsonb_email_array', r))
from unnest(array['anon', 'authenticated']) r;
select ok(not has_function_privilege(r, 'public.set_updated_at()', 'EXECUTE'),
          format('%s cannot call the trigger function', r))
from unnest(array['anon', 'authenticated', 'service_role']) r;

-- Calls are refused, not merely filtered, for the API roles that must not make them.
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000a1", "role": "authenticated"}';
select throws_ok($$select public.get_store_secrets('10000000-0000-4000-8000-000000000001')$$,
                 '42501', null, 'authenticated cannot read store secrets');
select throws_ok($$select public.ingest_messages('10000000-0000-4000-8000-000000000001', 'INBOX',
                                                 1, 1, '[]')$$,
                 '42501', null, 'authenticated cannot ingest');
select throws_ok($$select public.admin_add_credits('10000000-0000-4000-8000-000000000001', 100)$$,
                 '42501', null, 'authenticated cannot add credits');
reset role;
set local role anon;
select throws_ok($$select public.admin_create_store('{}', '{}')$$, '42501', null,
                 'anon cannot create stores');
select throws_ok($$select public.list_active_stores()$$, '42501', null, 'anon cannot list stores');
reset role;

-- Static check of every PL/pgSQL body (types, columns, unreachable code).
select is(array(select format('%s: %s', p.proname, c.message)
                from pg_proc p,
                     lateral extensions.plpgsql_check_function_tb(
                       p.oid::regprocedure, extra_warnings => true,
                       performance_warnings => true) c
                where p.oid = any (array(select ('public.' || sig)::regprocedure from api)
                                   || array['public.store_problems(public.stores)'::regprocedure,
                                            'public.store_apply_settings(public.stores,jsonb,text[])',
                                            'public.store_put_secret(uuid,text,uuid,text,text)'])
                  and p.prolang = (select oid from pg_language where lanname = 'plpgsql')),
          '{}'::text[], 'plpgsql_check finds nothing in the pipeline functions');

select * from finish();
rollback;

-- deployment_report(): service_role only, and it says whether Vault's worker_secret matches a
-- hash without ever returning the secret.
begin;
select plan(7);

select ok(has_function_privilege('service_role', 'public.deployment_report(text)', 'execute'),
          'service_role may call deployment_report');
select ok(not has_function_privilege('anon', 'public.deployment_report(text)', 'execute'),
          'anon may not');
select ok(not has_function_privilege('authenticated', 'public.deployment_report(text)', 'execute'),
          'authenticated may not');

delete from vault.secrets where name in ('worker_url', 'worker_secret');
select is(public.deployment_report() ->> 'worker_secret_present', 'false',
          'a missing worker_secret is reported');

select vault.create_secret('https://w.example', 'worker_url');
select vault.create_secret('pgtap-worker-secret-0123456789', 'worker_secret');
select is(public.deployment_report(encode(sha256('pgtap-worker-secret-0123456789'), 'hex'))
          ->> 'worker_secret_matches', 'true', 'the same secret matches by hash');
select is(public.deployment_report(encode(sha256('another'), 'hex'))
          ->> 'worker_secret_matches', 'false', 'another secret does not');
select ok(public.deployment_report()::text !~ 'pgtap-worker-secret',
          'the secret itself is never returned');

select * from finish();
rollback;

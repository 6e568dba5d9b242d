-- What `python -m worker doctor` needs to check a deployment from the worker's side, in one call
-- that works over both backends (PostgREST exposes neither supabase_migrations nor cron):
-- the applied migration versions, whether the Vault secrets the cron jobs use exist, whether
-- Vault's worker_secret equals the worker's WORKER_SECRET (compared by SHA-256, so no secret ever
-- leaves the database), the worker URL (an address, not a secret) and the scheduled cron jobs.
create or replace function public.deployment_report(p_worker_secret_sha256 text default null)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_url text;
  v_secret text;
  v_migrations jsonb := 'null';
  v_jobs jsonb := 'null';
begin
  select ds.decrypted_secret into v_url
  from vault.decrypted_secrets ds where ds.name = 'worker_url';
  select ds.decrypted_secret into v_secret
  from vault.decrypted_secrets ds where ds.name = 'worker_secret';
  -- Written by `supabase db push` (and scripts/local-db); null when migrations went in otherwise.
  if pg_catalog.to_regclass('supabase_migrations.schema_migrations') is not null then
    execute 'select coalesce(jsonb_agg(version order by version), ''[]'')
             from supabase_migrations.schema_migrations' into v_migrations;
  end if;
  if pg_catalog.to_regclass('cron.job') is not null then
    execute 'select coalesce(jsonb_agg(jsonb_build_object(
               ''name'', jobname, ''schedule'', schedule, ''active'', active) order by jobname),
             ''[]'') from cron.job' into v_jobs;
  end if;
  return jsonb_build_object(
    'migrations', v_migrations,
    'cron_jobs', v_jobs,
    'worker_url', nullif(v_url, ''),
    'worker_secret_present', coalesce(v_secret, '') <> '',
    'worker_secret_matches',
      case when p_worker_secret_sha256 is null or coalesce(v_secret, '') = '' then null
           else pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(v_secret, 'UTF8')), 'hex')
                = pg_catalog.lower(p_worker_secret_sha256)
      end
  );
end;
$$;

revoke all on function public.deployment_report(text) from public, anon, authenticated;
grant execute on function public.deployment_report(text) to service_role;

-- pg_cron as Supabase has it, applied by scripts/local-db as the platform superuser in the
-- database pg_cron runs in (cron.database_name). On Supabase the extension is created on demand
-- through supautils, after which postgres may use the schema, schedule jobs (which run as
-- postgres) and read, not write, cron.job (supabase/postgres
-- migrations/db/migrations/20231020085357_revoke_writes_on_cron_job_from_postgres.sql).
create extension if not exists pg_cron with schema pg_catalog;
grant usage on schema cron to postgres with grant option;
grant all on all tables in schema cron to postgres with grant option;
grant all on all sequences in schema cron to postgres with grant option;
grant all on all routines in schema cron to postgres with grant option;
revoke all on table cron.job from postgres;
grant select on table cron.job to postgres with grant option;

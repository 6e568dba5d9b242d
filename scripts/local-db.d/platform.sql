-- Supabase platform pieces that a plain Debian Postgres lacks. Applied by scripts/local-db to
-- every database it prepares (idempotent), as the platform superuser supabase_admin; never part
-- of supabase/migrations, because on Supabase the platform already provides them. Modelled on
-- supabase/postgres (migrations/db/init-scripts/00000000000000-initial-schema.sql,
-- migrations/db/migrations/10000000000000_demote-postgres.sql) and the GoTrue auth schema,
-- reduced to what our migrations and tests touch. `postgres` is not a superuser here: what it
-- may do comes from the grants below, as on Supabase.

-- API roles. Like Supabase: NOLOGIN, NOINHERIT; only service_role bypasses RLS; PostgREST logs
-- in as authenticator and SET ROLEs to one of the three.
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if not exists (select from pg_roles where rolname = r) then
      execute format('create role %I nologin noinherit', r);
    end if;
  end loop;
  if not exists (select from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;
alter role service_role bypassrls;
alter role authenticator login noinherit;
-- The Supabase CLI's local password; loopback-only clusters, never a deployed secret.
alter role authenticator password 'postgres';
grant anon, authenticated, service_role to authenticator;
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';

-- Extensions live in their own schema on Supabase, reachable through the search path.
create schema if not exists extensions;
create extension if not exists pgcrypto with schema extensions;
create extension if not exists "uuid-ossp" with schema extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;

-- Supabase's default grants: API roles get everything in public unless a migration revokes it,
-- so our migrations must revoke what they do not want (exactly as on the platform).
grant usage on schema public to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on sequences to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on functions to postgres, anon, authenticated, service_role;

-- auth: the GoTrue schema, with the columns a migration may reference.
create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

create table if not exists auth.users (
  instance_id uuid,
  id uuid primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255),
  encrypted_password varchar(255),
  email_confirmed_at timestamptz,
  invited_at timestamptz,
  confirmation_token varchar(255),
  recovery_token varchar(255),
  last_sign_in_at timestamptz,
  raw_app_meta_data jsonb,
  raw_user_meta_data jsonb,
  is_super_admin boolean,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  phone text unique,
  phone_confirmed_at timestamptz,
  banned_until timestamptz,
  deleted_at timestamptz,
  is_sso_user boolean not null default false,
  is_anonymous boolean not null default false
);
create index if not exists users_email_idx on auth.users (email);
-- On Supabase only the auth service and postgres touch auth.users; API roles see nothing.
revoke all on auth.users from public, anon, authenticated;
grant all on auth.users to service_role;

-- Sessions and refresh tokens, as GoTrue keeps them (the local Auth stand-in,
-- worker/devstack/auth.py, writes them; a refresh rotates the token and keeps its parent).
create table if not exists auth.sessions (
  id uuid primary key,
  user_id uuid not null references auth.users (id) on delete cascade,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  factor_id uuid,
  aal text,
  not_after timestamptz,
  refreshed_at timestamp,
  user_agent text,
  ip inet,
  tag text
);
create index if not exists sessions_user_id_idx on auth.sessions (user_id);
create table if not exists auth.refresh_tokens (
  instance_id uuid,
  id bigserial primary key,
  token varchar(255) unique,
  user_id varchar(255),
  revoked boolean,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  parent varchar(255),
  session_id uuid references auth.sessions (id) on delete cascade
);
create index if not exists refresh_tokens_session_id_revoked_idx
  on auth.refresh_tokens (session_id, revoked);
revoke all on auth.sessions, auth.refresh_tokens from public, anon, authenticated;

-- PostgREST sets request.jwt.claims (JSON) per transaction; older versions set one
-- request.jwt.claim.<name> per claim. Supabase's helpers read both, newest first.
create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.email() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.email(), auth.jwt()
  to anon, authenticated, service_role;

-- Objects the platform superuser creates in public reach postgres and the API roles too.
alter default privileges for role supabase_admin in schema public
  grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on sequences to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on functions to postgres, anon, authenticated, service_role;

-- postgres acts as the API roles (the SQL editor, supabase_test_helpers and our tests
-- `set role service_role`), as on Supabase.
grant anon, authenticated, service_role to postgres;

-- Extensions: on Supabase postgres cannot create most of them itself; supautils creates the
-- "privileged extensions" with superuser rights on its behalf. Here the platform creates the
-- ones our migrations and `supabase test db` ask for in advance, so their
-- `create extension if not exists` is a no-op, and anything else postgres tries to create needs
-- a superuser and fails, as it would without supautils' list.
create extension if not exists supabase_vault version '0.3.1-definer';
create extension if not exists pgtap with schema extensions;
create extension if not exists plpgsql_check with schema extensions;
-- As Supabase creates it (Database -> Extensions, and `supabase db diff`'s
-- `create extension ... with schema extensions`): the extension is registered in `extensions`,
-- its objects live in `net`. The version is named: see pg_net.control.
create extension if not exists pg_net with schema extensions version '0.14.0-async';

-- The grants of supabase/postgres' demote-postgres migration: postgres may use (not own) the
-- platform's schemas.
grant all on schema auth, extensions to postgres;
grant all on all tables in schema auth, extensions to postgres;
grant all on all sequences in schema auth, extensions to postgres;
grant all on all routines in schema auth, extensions to postgres;

-- Vault: postgres stores and reads secrets (the SQL editor's `select vault.create_secret(...)`,
-- and our security definer functions, owned by postgres, read vault.decrypted_secrets).
grant usage on schema vault to postgres with grant option;
grant select, delete on vault.secrets to postgres with grant option;
grant select on vault.decrypted_secrets to postgres with grant option;
grant execute on function vault.create_secret(text, text, text, uuid),
  vault.update_secret(uuid, text, text, text, uuid) to postgres with grant option;

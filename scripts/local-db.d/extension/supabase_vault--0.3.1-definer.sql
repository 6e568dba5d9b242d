-- Local stand-in for supabase_vault 0.3.1 (see supabase/vault): same table, view and function
-- signatures, and create_secret/update_secret are security definer as in the real one.
-- Differences: secrets are encrypted with pgcrypto (pgp_sym_encrypt, AES-256) under a random
-- per-database key kept in vault._root_key, which only the extension owner can read; the
-- real Vault derives its key from a root key held outside the database by libsodium. pgcrypto is
-- expected in schema `extensions`, where scripts/local-db installs it (as Supabase does).
\echo Use "CREATE EXTENSION supabase_vault" to load this file. \quit

CREATE TABLE vault._root_key (
  id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
  key bytea NOT NULL
);
REVOKE ALL ON vault._root_key FROM PUBLIC;
INSERT INTO vault._root_key (key) VALUES (extensions.gen_random_bytes(32));

CREATE TABLE vault.secrets (
  id uuid     PRIMARY KEY DEFAULT gen_random_uuid(),
  name        text,
  description text NOT NULL default '',
  secret      text NOT NULL,
  key_id      uuid,
  -- Kept for column compatibility; pgp_sym_encrypt salts every message itself.
  nonce       bytea DEFAULT extensions.gen_random_bytes(24),
  created_at  timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
  updated_at  timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);
COMMENT ON TABLE vault.secrets IS 'Table with encrypted `secret` column for storing sensitive information on disk.';
CREATE UNIQUE INDEX ON vault.secrets USING btree (name) WHERE name IS NOT NULL;
REVOKE ALL ON vault.secrets FROM PUBLIC;

-- Security definer so that callers of create_secret/update_secret never need the key itself.
CREATE FUNCTION vault._encrypt(plaintext text)
RETURNS text
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
  SELECT encode(
    extensions.pgp_sym_encrypt(plaintext, encode(k.key, 'hex'), 'cipher-algo=aes256'),
    'base64')
  FROM vault._root_key k
$$;
REVOKE ALL ON FUNCTION vault._encrypt(text) FROM PUBLIC;

-- The view reads the key with its owner's rights, so SELECT on the view is the decrypt privilege.
CREATE VIEW vault.decrypted_secrets AS
SELECT s.id,
  s.name,
  s.description,
  s.secret,
  extensions.pgp_sym_decrypt(decode(s.secret, 'base64'), encode(k.key, 'hex')) AS decrypted_secret,
  s.key_id,
  s.nonce,
  s.created_at,
  s.updated_at
FROM vault.secrets s
CROSS JOIN vault._root_key k;
REVOKE ALL ON vault.decrypted_secrets FROM PUBLIC;

CREATE FUNCTION vault.create_secret(
  new_secret text,
  new_name text = NULL,
  new_description text = '',
  -- unused, as in the real extension
  new_key_id uuid = NULL
)
RETURNS uuid
-- As the real one (supabase/vault sql/supabase_vault--0.2.8--0.3.0.sql): callers need EXECUTE
-- only, never a privilege on vault.secrets.
SECURITY DEFINER
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
  new_id uuid;
BEGIN
  INSERT INTO vault.secrets (secret, name, description)
  VALUES (vault._encrypt(new_secret), new_name, new_description)
  RETURNING id INTO new_id;
  RETURN new_id;
END
$$;

CREATE FUNCTION vault.update_secret(
  secret_id uuid,
  new_secret text = NULL,
  new_name text = NULL,
  new_description text = NULL,
  -- unused, as in the real extension
  new_key_id uuid = NULL
)
RETURNS void
SECURITY DEFINER
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
  UPDATE vault.secrets s
  SET
    secret = CASE WHEN new_secret IS NULL THEN s.secret ELSE vault._encrypt(new_secret) END,
    name = coalesce(new_name, s.name),
    description = coalesce(new_description, s.description),
    updated_at = now()
  WHERE s.id = secret_id;
END
$$;
REVOKE ALL ON FUNCTION vault.create_secret(text, text, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.update_secret(uuid, text, text, text, uuid) FROM PUBLIC;

-- Both tables are user data: pg_dump must keep the key with the secrets it protects.
SELECT pg_catalog.pg_extension_config_dump('vault.secrets', '');
SELECT pg_catalog.pg_extension_config_dump('vault._root_key', '');

# Sourced by scripts/local-db and scripts/test: installs missing Debian packages as root.

# Packages the local Supabase-compatible Postgres needs (pg_prove ships in the Perl package).
LOCAL_DB_PACKAGES=(
  postgresql-15
  postgresql-15-cron
  postgresql-15-pgtap
  libtap-parser-sourcehandler-pgtap-perl
  postgresql-15-plpgsql-check
  postgresql-plpython3-15
  # The console's browser test drives Debian's Chromium (Playwright never downloads one).
  chromium
  # Supabase's transaction pooler stand-in: the tests run the psycopg backend through it.
  pgbouncer
)

# Prints the packages of "$@" that dpkg does not report as installed.
missing_packages() {
  local pkg status
  for pkg in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || echo "$pkg"
  done
}

# Installs the missing packages of "$@"; runs `apt-get update` only if the first attempt fails
# (a fresh image ships without package lists), and waits for other engineers' dpkg runs.
ensure_packages() {
  local missing
  mapfile -t missing < <(missing_packages "$@")
  ((${#missing[@]})) || return 0
  if ((EUID != 0)); then
    echo "missing packages (${missing[*]}); run as root to install them" >&2
    return 1
  fi
  echo "installing ${missing[*]}" >&2
  local apt=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=600)
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >&2; then
    apt-get -q -o DPkg::Lock::Timeout=600 update >&2
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >&2
  fi
}

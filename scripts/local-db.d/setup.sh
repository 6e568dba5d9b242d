# Shared by scripts/test and scripts/demo (sourced): the system packages the project needs beyond
# the database, and the project's virtualenv, reinstalled only when pyproject.toml changes.
# Expects ROOT; PYTHON defaults to python3.

# shellcheck source=packages.sh
source "$ROOT/scripts/local-db.d/packages.sh"

# Beyond the database: Dovecot for the IMAP tests and the demo, openssl for their throwaway CA,
# Python for the virtualenv.
SYSTEM_PACKAGES=(
  "${LOCAL_DB_PACKAGES[@]}"
  dovecot-core
  dovecot-imapd
  openssl
  ca-certificates
  python3
  python3-venv
)
VENV=$ROOT/.venv

install_system_packages() {
  ensure_packages "${SYSTEM_PACKAGES[@]}"
}

prepare_venv() {
  _locked_venv "$VENV" requirements-dev.lock --require-hashes
}

# A venv holding exactly one lock (remade from scratch when the lock or pyproject changes, so
# nothing outside the lock lingers) plus the project itself, editable and without dependencies.
_locked_venv() {
  local venv=$1 lock=$2
  shift 2
  local stamp=$venv/.scripts-test-installed want
  want=$(cat "$ROOT/pyproject.toml" "$ROOT/$lock" | sha256sum | cut -d' ' -f1)
  if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
    echo "virtualenv $(basename "$venv") up to date" >&2
    return 0
  fi
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv" || return 1
  (cd "$ROOT" && "$venv/bin/python" -m pip install -q --no-deps "$@" -r "$lock" &&
    "$venv/bin/python" -m pip install -q --no-deps -e .) && echo "$want" >"$stamp"
}

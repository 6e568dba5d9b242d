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
  if [[ ! -x $VENV/bin/python ]]; then
    "${PYTHON:-python3}" -m venv "$VENV" || return 1
  fi
  local stamp=$VENV/.scripts-test-installed
  local want
  want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
  if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
    echo "virtualenv up to date" >&2
    return 0
  fi
  (cd "$ROOT" && "$VENV/bin/python" -m pip install -q -e '.[dev]') && echo "$want" >"$stamp"
}

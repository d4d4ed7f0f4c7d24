# Sourced by bin/run and bin/test: the project's virtualenv, created and filled when needed.
# Python 3.11 or newer is required (the code uses 3.11's standard library; Django 5.2 LTS).

# venv_ensure prod|dev: prod installs requirements.txt (what production runs: bin/run); dev installs
# requirements-dev.txt, production's list plus the test and development tools (bin/test). Both lists
# are compiled by pip-tools with hashes (docs/development.md, "Dependencies"), and pip checks them.
venv_ensure() {
  local requirements
  case "${1:-}" in
    prod) requirements=requirements.txt ;;
    dev) requirements=requirements-dev.txt ;;
    *) echo "$0: venv_ensure takes prod or dev, not '${1:-}'" >&2; exit 2 ;;
  esac
  if [ ! -x .venv/bin/python ]; then
    local python
    python=$(command -v python3.11 || command -v python3) || {
      echo "$0: no python3.11 or python3 on PATH; install Python 3.11 (Debian/Ubuntu: apt-get install python3 python3-venv)" >&2
      exit 2
    }
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
      echo "$0: $python is $("$python" --version 2>&1); Python 3.11 or newer is required" >&2
      exit 2
    }
    echo "$0: creating .venv with $python" >&2
    "$python" -m venv .venv
  fi
  # Quick when everything is installed already: pinned requirements need no index look-up then.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r "$requirements" || {
    echo "$0: FAILED: pip could not install $requirements into .venv (see pip's message above)" >&2
    exit 2
  }
  # shellcheck disable=SC1091
  . .venv/bin/activate
}

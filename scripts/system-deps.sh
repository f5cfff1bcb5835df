#!/usr/bin/env bash
# Debian packages that the test suite drives, installed with apt-get only when missing (`make test` runs
# this first; so does CI):
#   chromium         the browser test (hnr_assets_tests/ops/test_browser.py), through Playwright;
#   fonts-liberation text in its screenshots;
#   docker-compose   1.29, validates docker/compose.yaml without a Docker engine (test_docker.py);
#   strace           records every file the audited pipeline run writes (reliability/test_pipeline_audit.py);
#   docker.io        the Docker engine (dockerd, started by scripts/stack.sh) for the stack test
#                    (hnr_assets_tests/ops/test_stack.py, docs/stack.md);
#   debootstrap      the stand-in base images that scripts/stack.sh builds where no registry answers.
# The last two are left out when HNR_SKIP_STACK=1 (a developer's opt-out of the stack test; CI never sets it).
# --no-install-recommends: docker-compose alone does not pull in the engine, docker.io not git and the like.
set -euo pipefail

missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
[[ -d /usr/share/fonts/truetype/liberation ]] || missing+=(fonts-liberation)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v strace >/dev/null 2>&1 || missing+=(strace)
if [[ ${HNR_SKIP_STACK:-} != 1 ]]; then
    [[ -x /usr/sbin/dockerd ]] || command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    [[ -x /usr/sbin/debootstrap ]] || command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
fi

if ((${#missing[@]} == 0)); then
    exit 0
fi

if ((EUID == 0)); then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "system-deps: missing Debian packages: ${missing[*]}; install them as root:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "system-deps: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

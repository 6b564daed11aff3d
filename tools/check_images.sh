#!/usr/bin/env bash
# Builds Dockerfile.eval and Dockerfile and proves each image does its job:
#   - evaluation image: evaluate-accuracy.py on a demo accuracy log gives the same results, checks
#     and per-language MBXP table as this machine's .venv on that log; the image stays under 1.5 GB;
#   - main image: the demo Offline run through main.py (CPU) ends VALID.
# The builder is the first that works here: docker, podman, then buildah (chroot isolation).
# A base that cannot be pulled is replaced by a stand-in: a Debian 12 rootfs with Debian's
# Python 3.11, tagged python:3.11-slim-bookworm; the main image is always built FROM that CPU
# base (BASE_IMAGE), since the CUDA base would be several GB that a CPU cannot exercise.
# Needs root, the repository's .venv (tools/setup.sh) and the demo assets (MIXTRAL_DEMO_DIR or
# demo_assets/). Keeps only build/images/ (the stand-in rootfs tarball and the logs); removes
# every image, container and store it made. On failure the last line names the step; exit 1.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

EVAL_BASE=python:3.11-slim-bookworm  # FROM of Dockerfile.eval, and BASE_IMAGE of the check's main image
EVAL_TAG=localhost/mixtral-eval-check:latest
MAIN_TAG=localhost/mixtral-mlperf-check:latest
EVAL_MAX_BYTES=1500000000
# Bump when the stand-in recipe changes, so a cached rootfs of the old recipe is not reused.
STANDIN_RECIPE=1
cache="$repo/build/images"
standin_tar="$cache/standin-bookworm-python3.11-r$STANDIN_RECIPE.tar"
logs="$cache/logs"
py="$repo/.venv/bin/python"

step=""
step_log=""
tool=""
store=""       # podman/buildah: a private storage root, removed at the end
imported=()    # images this run imported or built, removed at the end (docker)
timings=()

say() { echo "check_images: $*"; }

begin() {  # begin NAME: the step that a failure will name; its output goes to logs/NAME.log
  step="$1"
  step_log="$logs/${1//[^A-Za-z0-9.]/-}.log"
  : >"$step_log"
  step_start=$SECONDS
  say "$step"
}

done_step() {
  timings+=("$step: $((SECONDS - step_start)) s")
}

cleanup() {
  local status=$? started=$SECONDS
  set +e
  if [[ $tool == docker ]]; then
    for image in "${imported[@]}"; do docker rmi -f "$image" >/dev/null 2>&1; done
  fi
  if [[ -n "$store" && -d "$store" ]]; then
    # Containers first, so that no overlay mount is left under the store when it is deleted.
    if [[ $tool == podman ]]; then podman "${storage[@]}" rm --all --force >/dev/null 2>&1; fi
    if command -v buildah >/dev/null; then buildah "${storage[@]}" rm --all >/dev/null 2>&1; fi
    findmnt -rn -o TARGET | grep "^$store/" | sort -r | while read -r target; do umount -l "$target"; done
    rm -rf "$store"
  fi
  rm -rf "${work:-}" "$cache/rootfs.tmp"
  if [[ $status -eq 0 ]]; then
    say "cleaned up in $((SECONDS - started)) s; $SECONDS s in all"
  else
    if [[ -s "$step_log" ]]; then
      echo "--- last lines of $step_log:" >&2
      tail -n 30 "$step_log" >&2
    fi
    echo "check_images: FAILED at step \"$step\" (exit $status; log: $step_log)" >&2
    exit 1
  fi
}
trap cleanup EXIT

logged() {  # logged CMD...: runs CMD with its output in the step's log
  "$@" >>"$step_log" 2>&1
}

mkdir -p "$logs"
begin "preconditions"
if [[ "$(id -u)" -ne 0 ]]; then
  echo "check_images: run as root (debootstrap, chroot and the builders need it)" >>"$step_log"
  exit 1
fi
if [[ ! -x "$py" ]]; then
  echo "check_images: no $py: run bash tools/setup.sh first" >>"$step_log"
  exit 1
fi
# Shared packages must be pinned alike, else the evaluation image scores with other code.
logged "$py" - <<'EOF'
import sys
from pathlib import Path

def pins(name):
    lines = (line.split("#")[0].strip() for line in Path(name).read_text().splitlines())
    return dict(line.split("==") for line in lines if line)

main, evaluation = pins("requirements.txt"), pins("requirements-eval.txt")
drift = [f"{pkg}: requirements-eval.txt {pin}, requirements.txt {main.get(pkg)}"
         for pkg, pin in evaluation.items() if main.get(pkg) != pin]
if drift:
    sys.exit("pins differ: " + "; ".join(drift))
EOF
work="$(mktemp -d "${TMPDIR:-/var/tmp}/check-images.XXXXXX")"
done_step

begin "choose a builder"
storage=()
driver=""
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  tool=docker
else
  if ! command -v podman >/dev/null && ! command -v buildah >/dev/null; then
    logged apt-get update
    logged env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends buildah
  fi
  tool=buildah
  command -v podman >/dev/null && podman info >/dev/null 2>&1 && tool=podman
  # A private store: nothing of another user's images is touched, and removal is one rm.
  # overlay where the kernel and filesystem allow it; vfs, which copies every layer whole, elsewhere.
  store="$work/storage"
  driver=vfs
  "$tool" --root "$store/root" --runroot "$store/run" --storage-driver overlay info >/dev/null 2>&1 && driver=overlay
  # A store is made for one driver.
  [[ $driver == overlay ]] || rm -rf "$store"
  storage=(--root "$store/root" --runroot "$store/run" --storage-driver "$driver")
fi
say "builder: $tool${driver:+, storage driver $driver}"
done_step

make_standin_rootfs() {  # writes $standin_tar: Debian 12 minbase, Python 3.11 as python/pip, this host's CAs
  local rootfs="$cache/rootfs.tmp"
  command -v debootstrap >/dev/null || {
    logged apt-get update
    logged env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap
  }
  rm -rf "$rootfs"
  logged debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
    bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  # The official image's apt sources: updates and security too, so apt-get sees the same versions.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # The official image's python and pip, in /usr/local/bin, install as root without complaint.
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
  rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
  # A host that reaches registries through its own CAs: the builds' pip, apt and npm must trust
  # them too; under /usr/local/share/ca-certificates a later update-ca-certificates keeps them.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    logged chroot "$rootfs" update-ca-certificates
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$standin_tar.tmp" .
  mv "$standin_tar.tmp" "$standin_tar"
  rm -rf "$rootfs"
}

# pip ignores the system store (certifi) and node has its own: both are pointed at the bundle.
standin_env=(LANG=C.UTF-8
  SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt
  REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt)

import_standin() {  # import_standin NAME: the cached rootfs as image NAME
  local changes=() name="$1" ctr
  case "$tool" in
    docker | podman)
      for e in "${standin_env[@]}"; do changes+=(--change "ENV $e"); done
      logged "$tool" "${storage[@]}" import "${changes[@]}" --change 'CMD ["python3"]' "$standin_tar" "$name"
      imported+=("$name") ;;
    buildah)
      ctr="$(buildah "${storage[@]}" from scratch)"
      logged buildah "${storage[@]}" add "$ctr" "$standin_tar" /
      for e in "${standin_env[@]}"; do changes+=(--env "$e"); done
      logged buildah "${storage[@]}" config "${changes[@]}" --cmd python3 "$ctr"
      logged buildah "${storage[@]}" commit --rm "$ctr" "$name" ;;
  esac
}

begin "base image $EVAL_BASE"
pulled=0
case "$tool" in
  docker) docker image inspect "$EVAL_BASE" >/dev/null 2>&1 || logged timeout 600 docker pull "$EVAL_BASE" ;;
  *) logged timeout 600 "$tool" "${storage[@]}" pull "docker.io/library/$EVAL_BASE" ;;
esac && pulled=1
if [[ $pulled -eq 0 ]]; then
  if [[ ! -s "$standin_tar" ]]; then
    say "no registry: building the stand-in rootfs (Debian 12, Python 3.11) into $standin_tar"
    make_standin_rootfs
  else
    say "no registry: the stand-in rootfs cached in $standin_tar"
  fi
  import_standin "docker.io/library/$EVAL_BASE"
fi
pull_policy=()
if [[ $tool != docker && $pulled -eq 0 ]]; then pull_policy=(--pull=never); fi
done_step

run_in() {  # run_in IMAGE [-v MOUNT]... -- CMD...: CMD in a fresh container of IMAGE
  local image="$1" mounts=() ctr status=0
  shift
  while [[ "$1" != -- ]]; do mounts+=("$1" "$2"); shift 2; done
  shift
  case "$tool" in
    docker | podman) "$tool" "${storage[@]}" run --rm --network none "${mounts[@]}" "$image" "$@" ;;
    buildah)
      ctr="$(buildah "${storage[@]}" from --pull=never "$image")"
      buildah "${storage[@]}" run --isolation chroot "${mounts[@]}" "$ctr" -- "$@" || status=$?
      buildah "${storage[@]}" rm "$ctr" >/dev/null
      return $status ;;
  esac
}

if [[ $tool == podman ]]; then
  begin "podman runs a container"
  # podman is installed in places where it cannot start one (cgroups, rlimits): buildah,
  # which shares podman's store, still can.
  if ! logged run_in "docker.io/library/$EVAL_BASE" -- true; then
    if command -v buildah >/dev/null; then
      tool=buildah
      say "podman cannot run a container here; builder: buildah"
    else
      exit 1
    fi
  fi
  done_step
fi

# The host's pip indexes (a mirror, a local wheel folder) are passed to the builds as build
# arguments; podman and buildah mount the local ones read-only under /mnt/host-pip.
pip_args=()
add_pip_setting() {  # add_pip_setting KEY: the host's pip setting KEY (index-url, ...) as a build argument
  local key="$1" var value entry path dir kept=()
  var="PIP_$(tr 'a-z-' 'A-Z_' <<<"$key")"
  value="${!var:-$("$py" -m pip config get "global.$key" 2>/dev/null || true)}"
  for entry in $value; do
    path="${entry#file://}"
    if [[ "$path" == /* ]]; then
      if [[ $tool == docker ]]; then
        say "pip $key $entry: a local folder, which docker build cannot mount; left out"
        continue
      fi
      # An index's root holds simple/ and the files its pages link to (../../files/...).
      dir="$path"
      [[ "$(basename "$path")" == simple ]] && dir="$(dirname "$path")"
      pip_args+=(-v "$dir:/mnt/host-pip$dir:ro")
      entry="${entry%"$path"}/mnt/host-pip$path"
    fi
    kept+=("$entry")
  done
  if [[ ${#kept[@]} -gt 0 ]]; then pip_args+=(--build-arg "$var=${kept[*]}"); fi
}
for key in index-url extra-index-url find-links; do add_pip_setting "$key"; done

build() {  # build DOCKERFILE TAG [BUILD-ARG]...
  local file="$1" tag="$2" extra=()
  shift 2
  for a in "$@"; do extra+=(--build-arg "$a"); done
  case "$tool" in
    docker) logged docker build -f "$file" -t "$tag" "${pip_args[@]}" "${extra[@]}" . ;;
    podman) logged podman "${storage[@]}" build "${pull_policy[@]}" -f "$file" -t "$tag" "${pip_args[@]}" "${extra[@]}" . ;;
    buildah) logged buildah "${storage[@]}" bud --isolation chroot "${pull_policy[@]}" -f "$file" -t "$tag" \
      "${pip_args[@]}" "${extra[@]}" . ;;
  esac
  imported+=("$tag")
}

image_bytes() {
  case "$tool" in
    docker) docker image inspect -f '{{.Size}}' "$1" ;;
    *) podman "${storage[@]}" image inspect -f '{{.Size}}' "$1" 2>/dev/null \
      || buildah "${storage[@]}" images --json "$1" | "$py" -c 'import json,sys; print(json.load(sys.stdin)[0]["size"])' ;;
  esac
}

demo="${MIXTRAL_DEMO_DIR:-$repo/demo_assets}"
demo="$(realpath -m "$demo")"

begin "build Dockerfile.eval"
build Dockerfile.eval "$EVAL_TAG"
eval_bytes="$(image_bytes "$EVAL_TAG")"
say "evaluation image: $((eval_bytes / 1000000)) MB"
if [[ $eval_bytes -gt $EVAL_MAX_BYTES ]]; then
  echo "evaluation image is $eval_bytes bytes, over $EVAL_MAX_BYTES" >>"$step_log"
  exit 1
fi
done_step

begin "demo accuracy log on the host"
export MIXTRAL_DEMO_DIR="$demo"
logged "$py" -m harness.demo
mkdir -p "$work/accuracy" "$work/eval-host" "$work/eval-image" "$work/offline"
logged "$py" main.py --scenario Offline --accuracy --output-log-dir "$work/accuracy"
logged "$py" evaluate-accuracy.py --mlperf-accuracy-file "$work/accuracy/mlperf_log_accuracy.json" \
  --dataset-file "$demo/dataset.pkl" --output-dir "$work/eval-host" --no-progress
done_step

begin "evaluate-accuracy.py in the evaluation image"
logged run_in "$EVAL_TAG" -v "$work/accuracy:/logs:ro" -v "$demo:/demo:ro" -v "$work/eval-image:/out" -- \
  python evaluate-accuracy.py --mlperf-accuracy-file /logs/mlperf_log_accuracy.json \
  --dataset-file /demo/dataset.pkl --output-dir /out --no-progress
sed -n '/^Results/,/^Wrote/p' "$step_log"
# Everything but where the files lay and how long each step took must be equal.
logged "$py" - "$work/eval-host/results.json" "$work/eval-image/results.json" <<'EOF'
import json
import sys

host, image = (json.load(open(path)) for path in sys.argv[1:])
differ = [key for key in host if key not in ("inputs", "seconds") and host[key] != image.get(key)]
if differ or not host["mbxp_languages"]:
    sys.exit(f"the image's results.json differs from the host's in {differ or 'mbxp_languages (empty)'}")
print("evaluation image: results, checks, rows and per-language MBXP table equal the host's")
EOF
tail -n 1 "$step_log"
done_step

begin "build Dockerfile"
build Dockerfile "$MAIN_TAG" "BASE_IMAGE=docker.io/library/$EVAL_BASE"
say "main image (CPU base, CPU torch where the host's indexes give it): $(($(image_bytes "$MAIN_TAG") / 1000000)) MB"
done_step

begin "demo Offline run in the main image"
logged run_in "$MAIN_TAG" -v "$demo:/demo:ro" -v "$work/offline:/out" -- \
  env MIXTRAL_DEMO_DIR=/demo python main.py --scenario Offline --device cpu --output-log-dir /out
if ! grep -q "Result is : VALID" "$work/offline/mlperf_log_summary.txt"; then
  grep -m1 "Result is" "$work/offline/mlperf_log_summary.txt" >>"$step_log" || true
  exit 1
fi
say "main image: demo Offline run $(grep -m1 'Result is' "$work/offline/mlperf_log_summary.txt")"
done_step

step="clean up"
say "passed in $SECONDS s:"
printf '  %s\n' "${timings[@]}"

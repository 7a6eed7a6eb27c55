#!/usr/bin/env bash
# Deploys the three engagement-events functions (batch_import, convert_timestamps,
# verify_service_jwt) as 2nd-gen HTTP Cloud Functions, with their secrets from Secret Manager,
# and the Cloud Scheduler job that posts a steps_import batch to batch_import on a schedule.
# Safe to run again: functions are redeployed with the same settings, secrets and service
# accounts are created only when missing, and the scheduler job is updated when it exists.
# `./deploy.sh --help` explains every option and variable; docs/deployment.md explains the
# choices (authentication of the scheduler, the settings that cap the load on the database).
set -euo pipefail

# gcloud uploads the project from its root (--source=.); file arguments are read relative to
# where the script was started.
invoked_from=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")"

usage() {
  cat <<'EOF'
Usage: ./deploy.sh [options]

Deploys batch_import, convert_timestamps and verify_service_jwt as 2nd-gen HTTP Cloud Functions
(Python 3.13) and creates or updates the Cloud Scheduler job that posts a steps_import batch to
batch_import. Everything it needs is checked before anything is changed.

Options (each also settable by the variable in brackets):
  --project ID              Google Cloud project to deploy to [PROJECT_ID]; required
  --region REGION           region of the functions and the scheduler job [REGION]; required
  --sink postgres|rest      where batch_import writes [SINK]; default postgres:
                              postgres  DATABASE_URL (Supavisor transaction pooler, port 6543)
                              rest      SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY (Data API)
  --credentials LIST        which service credentials the functions accept, comma-separated
                            [CREDENTIALS]; default jwt_secret,secret_keys:
                              jwt_secret   legacy HS256 JWTs (secret SUPABASE_JWT_SECRET)
                              secret_keys  sb_secret_ keys (secret SUPABASE_SECRET_KEYS); the
                                           scheduler job sends the first key of this list
                              jwks         asymmetric JWTs checked against SUPABASE_URL's JWKS
  --access public|private   who may reach the functions at the Google layer [ACCESS];
                            default public (wearables integrations call batch_import over
                            HTTP with a Supabase credential and have no Google identity);
                            private deploys with --no-allow-unauthenticated, so only Google
                            identities with the invoker role (the scheduler's) get through
  --runtime-service-account EMAIL
                            identity the functions run as [RUNTIME_SERVICE_ACCOUNT]; default
                            engagement-functions@PROJECT.iam.gserviceaccount.com
  --scheduler-service-account EMAIL
                            identity of the scheduler's OIDC token [SCHEDULER_SERVICE_ACCOUNT];
                            default engagement-scheduler@PROJECT.iam.gserviceaccount.com
  --secret-prefix PREFIX    prefix of the Secret Manager secret names [SECRET_PREFIX]; default
                            "engagement-": engagement-supabase-jwt-secret,
                            engagement-supabase-secret-keys, engagement-database-url,
                            engagement-supabase-service-role-key
  --create-secrets          create missing secrets, add a version where a value given in the
                            environment differs from the stored one, and grant the runtime
                            service account roles/secretmanager.secretAccessor on each secret.
                            Values come from the variables SUPABASE_JWT_SECRET,
                            SUPABASE_SECRET_KEYS, DATABASE_URL, SUPABASE_SERVICE_ROLE_KEY, or
                            are asked for without echo when stdin is a terminal; a missing
                            SUPABASE_SECRET_KEYS is generated (one random sb_secret_ key that
                            only these functions accept). Values are passed to gcloud on stdin,
                            never as arguments, and never printed.
  --create-service-accounts create the two service accounts when they do not exist
  --enable-apis             enable the Google APIs the deployment uses (idempotent)
  --schedule CRON           when the scheduler job runs [SCHEDULE]; default "0 3 * * *"
  --time-zone ZONE          time zone of the schedule [SCHEDULE_TIME_ZONE]; default Etc/UTC
  --scheduler-job NAME      name of the scheduler job [SCHEDULER_JOB]; default
                            engagement-steps-import
  --scheduler-body FILE     JSON batch the job posts [SCHEDULER_BODY_FILE]; required unless
                            --no-scheduler; every event must be a steps_import event
  --no-scheduler            deploy the functions only; leave any scheduler job alone
  --dry-run                 print every command that would change something, run none of
                            them (read-only checks such as describe still run)
  -h, --help                this text

Limits and load caps (defaults in brackets; docs/deployment.md has the arithmetic):
  BATCH_IMPORT_MEMORY [1Gi]  BATCH_IMPORT_CPU [1]  BATCH_IMPORT_TIMEOUT seconds [60]
  BATCH_IMPORT_MAX_INSTANCES [10]  BATCH_IMPORT_CONCURRENCY [4]
  HELPER_MEMORY [512Mi]  HELPER_CPU [1]  HELPER_TIMEOUT seconds [30]
  HELPER_MAX_INSTANCES [5]  HELPER_CONCURRENCY [4]       (convert_timestamps, verify_service_jwt)
  TIME_BUDGET_SECONDS [50]   time batch_import may spend writing; must be at least 10 s less
                             than BATCH_IMPORT_TIMEOUT
  POOLER_MAX_CLIENTS [200]   client connections the Supavisor pooler accepts (Micro compute);
                             with --sink postgres, BATCH_IMPORT_MAX_INSTANCES x
                             min(BATCH_IMPORT_CONCURRENCY, 4 connections per instance) must stay
                             at or under half of it
  SCHEDULER_ATTEMPT_DEADLINE seconds [90]  SCHEDULER_MAX_RETRIES [3]

Plain settings passed to the functions when set (see docs/functions.md):
  SUPABASE_URL (required for --sink rest and for jwks; whenever it is set, the functions also
  accept JWTs signed with the project's asymmetric keys, from its JWKS), SUPABASE_JWKS_URL,
  MAX_BATCH_EVENTS, MAX_BODY_BYTES, MAX_EVENT_BYTES, FUTURE_SKEW_SECONDS,
  RATE_LIMIT_REQUESTS_PER_MINUTE, RATE_LIMIT_EVENTS_PER_MINUTE (the last two to batch_import only).
  Always set: GOOGLE_CLOUD_PROJECT (for the logs' trace links) and TIME_BUDGET_SECONDS.

Examples:
  PROJECT_ID=my-project REGION=europe-west1 SCHEDULER_BODY_FILE=steps.json ./deploy.sh --dry-run
  DATABASE_URL=... SUPABASE_JWT_SECRET=... ./deploy.sh --project my-project \
      --region europe-west1 --create-service-accounts --create-secrets --enable-apis \
      --scheduler-body steps.json
EOF
}

# ---------------------------------------------------------------------------- settings

PROJECT_ID=${PROJECT_ID:-}
REGION=${REGION:-}
SINK=${SINK:-postgres}
CREDENTIALS=${CREDENTIALS:-jwt_secret,secret_keys}
ACCESS=${ACCESS:-public}
RUNTIME_SERVICE_ACCOUNT=${RUNTIME_SERVICE_ACCOUNT:-}
SCHEDULER_SERVICE_ACCOUNT=${SCHEDULER_SERVICE_ACCOUNT:-}
SECRET_PREFIX=${SECRET_PREFIX:-engagement-}
SCHEDULE=${SCHEDULE:-0 3 * * *}
SCHEDULE_TIME_ZONE=${SCHEDULE_TIME_ZONE:-Etc/UTC}
SCHEDULER_JOB=${SCHEDULER_JOB:-engagement-steps-import}
SCHEDULER_BODY_FILE=${SCHEDULER_BODY_FILE:-}
SCHEDULER_ATTEMPT_DEADLINE=${SCHEDULER_ATTEMPT_DEADLINE:-90}
SCHEDULER_MAX_RETRIES=${SCHEDULER_MAX_RETRIES:-3}

BATCH_IMPORT_MEMORY=${BATCH_IMPORT_MEMORY:-1Gi}
BATCH_IMPORT_CPU=${BATCH_IMPORT_CPU:-1}
BATCH_IMPORT_TIMEOUT=${BATCH_IMPORT_TIMEOUT:-60}
BATCH_IMPORT_MAX_INSTANCES=${BATCH_IMPORT_MAX_INSTANCES:-10}
BATCH_IMPORT_CONCURRENCY=${BATCH_IMPORT_CONCURRENCY:-4}
HELPER_MEMORY=${HELPER_MEMORY:-512Mi}
HELPER_CPU=${HELPER_CPU:-1}
HELPER_TIMEOUT=${HELPER_TIMEOUT:-30}
HELPER_MAX_INSTANCES=${HELPER_MAX_INSTANCES:-5}
HELPER_CONCURRENCY=${HELPER_CONCURRENCY:-4}
TIME_BUDGET_SECONDS=${TIME_BUDGET_SECONDS:-50}
POOLER_MAX_CLIENTS=${POOLER_MAX_CLIENTS:-200}

# Connections one instance's direct sink opens at most (PostgresSink's max_connections).
readonly SINK_CONNECTIONS_PER_INSTANCE=4
readonly RUNTIME=python313
readonly FUNCTIONS=(batch_import convert_timestamps verify_service_jwt)

DRY_RUN=0
CREATE_SECRETS=0
CREATE_SERVICE_ACCOUNTS=0
ENABLE_APIS=0
SCHEDULER=1

errors=()
fail_usage() {
  printf 'deploy.sh: %s\n' "$1" >&2
  echo "Run ./deploy.sh --help for the options." >&2
  exit 2
}

while [ "$#" -gt 0 ]; do
  option=$1
  case "$option" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --create-secrets) CREATE_SECRETS=1 ;;
    --create-service-accounts) CREATE_SERVICE_ACCOUNTS=1 ;;
    --enable-apis) ENABLE_APIS=1 ;;
    --no-scheduler) SCHEDULER=0 ;;
    --project | --region | --sink | --credentials | --access | --runtime-service-account | \
      --scheduler-service-account | --secret-prefix | --schedule | --time-zone | \
      --scheduler-job | --scheduler-body)
      [ "$#" -ge 2 ] || fail_usage "$option needs a value"
      value=$2
      shift
      case "$option" in
        --project) PROJECT_ID=$value ;;
        --region) REGION=$value ;;
        --sink) SINK=$value ;;
        --credentials) CREDENTIALS=$value ;;
        --access) ACCESS=$value ;;
        --runtime-service-account) RUNTIME_SERVICE_ACCOUNT=$value ;;
        --scheduler-service-account) SCHEDULER_SERVICE_ACCOUNT=$value ;;
        --secret-prefix) SECRET_PREFIX=$value ;;
        --schedule) SCHEDULE=$value ;;
        --time-zone) SCHEDULE_TIME_ZONE=$value ;;
        --scheduler-job) SCHEDULER_JOB=$value ;;
        --scheduler-body) SCHEDULER_BODY_FILE=$value ;;
      esac
      ;;
    *) fail_usage "unknown option: $option" ;;
  esac
  shift
done

case "$SCHEDULER_BODY_FILE" in
  "" | /*) ;;
  *) SCHEDULER_BODY_FILE="$invoked_from/$SCHEDULER_BODY_FILE" ;;
esac

# ---------------------------------------------------------------------------- input checks
# Everything here runs before the first gcloud call, and reports every problem at once.

need() { errors+=("$1"); }

positive_int() {  # NAME VALUE
  [[ $2 =~ ^[1-9][0-9]*$ ]] || need "$1 must be a whole number greater than zero (got '$2')"
}

if [ -z "$PROJECT_ID" ]; then
  need "PROJECT_ID is not set: give --project ID or PROJECT_ID=..."
elif ! [[ $PROJECT_ID =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]]; then
  need "PROJECT_ID '$PROJECT_ID' is not a Google Cloud project id (6-30 lowercase letters, digits, hyphens)"
fi
if [ -z "$REGION" ]; then
  need "REGION is not set: give --region REGION or REGION=... (for example europe-west1)"
elif ! [[ $REGION =~ ^[a-z]+-[a-z]+[0-9]+$ ]]; then
  need "REGION '$REGION' is not a Google Cloud region name (for example europe-west1)"
fi
case "$SINK" in postgres | rest) ;; *) need "SINK must be postgres or rest (got '$SINK')" ;; esac
case "$ACCESS" in public | private) ;; *) need "ACCESS must be public or private (got '$ACCESS')" ;; esac

use_jwt_secret=0 use_secret_keys=0 use_jwks=0
IFS=',' read -r -a credential_kinds <<<"$CREDENTIALS"
for kind in ${credential_kinds[@]+"${credential_kinds[@]}"}; do
  case "$kind" in
    jwt_secret) use_jwt_secret=1 ;;
    secret_keys) use_secret_keys=1 ;;
    jwks) use_jwks=1 ;;
    *) need "CREDENTIALS: unknown kind '$kind' (use jwt_secret, secret_keys, jwks)" ;;
  esac
done
if [ $((use_jwt_secret + use_secret_keys + use_jwks)) -eq 0 ]; then
  need "CREDENTIALS names no credential kind: the functions could authenticate nobody"
fi

SUPABASE_URL=${SUPABASE_URL:-}
if [ -n "$SUPABASE_URL" ] && ! [[ $SUPABASE_URL =~ ^https://[^,[:space:]]+$ ]]; then
  need "SUPABASE_URL must be an https:// URL without commas or spaces"
fi
if [ -z "$SUPABASE_URL" ] && [ "$SINK" = rest ]; then
  need "SUPABASE_URL is not set: the REST sink (--sink rest) writes to it"
fi
if [ -z "$SUPABASE_URL" ] && [ "$use_jwks" -eq 1 ] && [ -z "${SUPABASE_JWKS_URL:-}" ]; then
  need "SUPABASE_URL (or SUPABASE_JWKS_URL) is not set: jwks credentials need the project's JWKS"
fi
if [ -n "${SUPABASE_JWKS_URL:-}" ] && ! [[ $SUPABASE_JWKS_URL =~ ^https://[^,[:space:]]+$ ]]; then
  need "SUPABASE_JWKS_URL must be an https:// URL without commas or spaces"
fi

for name in BATCH_IMPORT_CPU BATCH_IMPORT_TIMEOUT BATCH_IMPORT_MAX_INSTANCES \
  BATCH_IMPORT_CONCURRENCY HELPER_CPU HELPER_TIMEOUT HELPER_MAX_INSTANCES HELPER_CONCURRENCY \
  TIME_BUDGET_SECONDS POOLER_MAX_CLIENTS SCHEDULER_ATTEMPT_DEADLINE; do
  positive_int "$name" "${!name}"
done
[[ $SCHEDULER_MAX_RETRIES =~ ^[0-9]+$ ]] ||
  need "SCHEDULER_MAX_RETRIES must be a whole number (got '$SCHEDULER_MAX_RETRIES')"
for name in BATCH_IMPORT_MEMORY HELPER_MEMORY; do
  [[ ${!name} =~ ^[1-9][0-9]*(Mi|Gi)$ ]] || need "$name must look like 512Mi or 1Gi (got '${!name}')"
done
for name in MAX_BATCH_EVENTS MAX_BODY_BYTES MAX_EVENT_BYTES FUTURE_SKEW_SECONDS; do
  if [ -n "${!name:-}" ]; then positive_int "$name" "${!name}"; fi
done
for name in RATE_LIMIT_REQUESTS_PER_MINUTE RATE_LIMIT_EVENTS_PER_MINUTE; do
  if [ -n "${!name:-}" ] && ! [[ ${!name} =~ ^[0-9]+$ ]]; then
    need "$name must be a whole number, 0 to disable (got '${!name}')"
  fi
done

numeric() { [[ $1 =~ ^[0-9]+$ ]]; }
events_limit=${RATE_LIMIT_EVENTS_PER_MINUTE:-}
if numeric "$events_limit" && [ "$events_limit" -gt 0 ] && numeric "${MAX_BATCH_EVENTS:-10000}" &&
  [ "$events_limit" -lt "${MAX_BATCH_EVENTS:-10000}" ]; then
  need "RATE_LIMIT_EVENTS_PER_MINUTE ($events_limit) must be 0 or at least MAX_BATCH_EVENTS (${MAX_BATCH_EVENTS:-10000}), or a full batch could never pass"
fi
if numeric "$TIME_BUDGET_SECONDS" && numeric "$BATCH_IMPORT_TIMEOUT" &&
  [ $((TIME_BUDGET_SECONDS + 10)) -gt "$BATCH_IMPORT_TIMEOUT" ]; then
  need "TIME_BUDGET_SECONDS ($TIME_BUDGET_SECONDS) must be at least 10 s under BATCH_IMPORT_TIMEOUT ($BATCH_IMPORT_TIMEOUT): the function needs time to parse, validate and answer"
fi
if numeric "$BATCH_IMPORT_CONCURRENCY" && numeric "$BATCH_IMPORT_MAX_INSTANCES" &&
  numeric "$POOLER_MAX_CLIENTS" && [ "$SINK" = postgres ]; then
  per_instance=$((BATCH_IMPORT_CONCURRENCY < SINK_CONNECTIONS_PER_INSTANCE ? BATCH_IMPORT_CONCURRENCY : SINK_CONNECTIONS_PER_INSTANCE))
  connections=$((BATCH_IMPORT_MAX_INSTANCES * per_instance))
  if [ $((connections * 2)) -gt "$POOLER_MAX_CLIENTS" ]; then
    need "batch_import could open $connections pooler connections ($BATCH_IMPORT_MAX_INSTANCES instances x $per_instance), more than half of POOLER_MAX_CLIENTS ($POOLER_MAX_CLIENTS): lower BATCH_IMPORT_MAX_INSTANCES"
  fi
fi
if numeric "$SCHEDULER_ATTEMPT_DEADLINE" && numeric "$BATCH_IMPORT_TIMEOUT" &&
  [ "$SCHEDULER_ATTEMPT_DEADLINE" -le "$BATCH_IMPORT_TIMEOUT" ]; then
  need "SCHEDULER_ATTEMPT_DEADLINE ($SCHEDULER_ATTEMPT_DEADLINE) must exceed BATCH_IMPORT_TIMEOUT ($BATCH_IMPORT_TIMEOUT), or the scheduler retries a request that is still running"
fi
if ! [[ $SECRET_PREFIX =~ ^[A-Za-z0-9_-]*$ ]]; then
  need "SECRET_PREFIX may hold only letters, digits, - and _ (got '$SECRET_PREFIX')"
fi

if [ "$SCHEDULER" -eq 1 ]; then
  if [ "$use_secret_keys" -eq 0 ]; then
    need "the scheduler job sends an sb_secret_ key: add secret_keys to CREDENTIALS, or use --no-scheduler"
  fi
  if [ -z "$SCHEDULER_BODY_FILE" ]; then
    need "SCHEDULER_BODY_FILE is not set: give --scheduler-body FILE (the steps_import batch to post), or use --no-scheduler"
  elif [ ! -r "$SCHEDULER_BODY_FILE" ]; then
    need "SCHEDULER_BODY_FILE '$SCHEDULER_BODY_FILE' is not a readable file"
  elif command -v python3 >/dev/null 2>&1; then
    body_status=0
    body_problem=$(python3 - "$SCHEDULER_BODY_FILE" 2>&1 <<'PY'
import json, sys
def refuse(problem):
    print(problem)
    sys.exit(3)
try:
    with open(sys.argv[1], encoding="utf-8") as handle:
        body = json.load(handle)
except (OSError, ValueError) as exc:
    refuse(f"is not valid JSON ({type(exc).__name__})")
events = body.get("events") if isinstance(body, dict) else body
if not isinstance(events, list) or not events:
    refuse('must be a batch: {"events": [...]} or a non-empty array of events')
if not all(isinstance(e, dict) and e.get("event_type") == "steps_import" for e in events):
    refuse("must hold steps_import events only")
PY
    ) || body_status=$?
    if [ "$body_status" -eq 3 ]; then
      need "SCHEDULER_BODY_FILE '$SCHEDULER_BODY_FILE' $body_problem"
    elif [ "$body_status" -ne 0 ]; then
      need "SCHEDULER_BODY_FILE could not be checked: python3 failed (exit $body_status)"
    fi
  fi
  if ! [[ $SCHEDULER_JOB =~ ^[A-Za-z0-9_-]{1,500}$ ]]; then
    need "SCHEDULER_JOB may hold only letters, digits, - and _ (got '$SCHEDULER_JOB')"
  fi
fi

# Values for --create-secrets must not travel on a command line; check their shape here.
if [ "$CREATE_SECRETS" -eq 1 ] && [ -n "${SUPABASE_SECRET_KEYS:-}" ]; then
  IFS=',' read -r -a given_keys <<<"$SUPABASE_SECRET_KEYS"
  for key in "${given_keys[@]}"; do
    [[ $key =~ ^sb_secret_[A-Za-z0-9_-]+$ ]] ||
      need "SUPABASE_SECRET_KEYS: every key must be sb_secret_ followed by letters, digits, - or _"
  done
fi
if [ "$CREATE_SECRETS" -eq 1 ] && [ -n "${DATABASE_URL:-}" ] && ! [[ $DATABASE_URL =~ ^postgres(ql)?:// ]]; then
  need "DATABASE_URL must be a postgresql:// URL (the Supavisor transaction pooler, port 6543)"
fi

if [ "${#errors[@]}" -gt 0 ]; then
  echo "deploy.sh: nothing was changed, because:" >&2
  printf '  - %s\n' "${errors[@]}" >&2
  echo "Run ./deploy.sh --help for the options." >&2
  exit 2
fi

RUNTIME_SERVICE_ACCOUNT=${RUNTIME_SERVICE_ACCOUNT:-engagement-functions@${PROJECT_ID}.iam.gserviceaccount.com}
SCHEDULER_SERVICE_ACCOUNT=${SCHEDULER_SERVICE_ACCOUNT:-engagement-scheduler@${PROJECT_ID}.iam.gserviceaccount.com}
if [ "$CREATE_SERVICE_ACCOUNTS" -eq 1 ]; then
  for account_email in "$RUNTIME_SERVICE_ACCOUNT" "$SCHEDULER_SERVICE_ACCOUNT"; do
    if ! [[ $account_email =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]@${PROJECT_ID}\.iam\.gserviceaccount\.com$ ]]; then
      echo "deploy.sh: --create-service-accounts creates accounts of project $PROJECT_ID only; $account_email is not one (create it yourself, or drop the option). Nothing was changed." >&2
      exit 2
    fi
  done
fi

# ---------------------------------------------------------------------------- helpers

say() { printf '==> %s\n' "$*"; }

quoted() {  # the command as it could be pasted into a shell
  local out="" word
  for word in "$@"; do out+="$(printf '%q' "$word") "; done
  printf '%s' "${out% }"
}

# A command that changes something: printed, then run (or only printed with --dry-run).
change() {
  if [ "$DRY_RUN" -eq 1 ]; then
    printf '[dry-run] %s\n' "$(quoted "$@")"
  else
    printf '+ %s\n' "$(quoted "$@")"
    "$@"
  fi
}

# The same, with the value of the variable named $1 on the command's stdin (never printed).
change_with_secret() {
  local variable=$1
  shift
  if [ "$DRY_RUN" -eq 1 ]; then
    printf '[dry-run] %s < (value of %s, not shown)\n' "$(quoted "$@")" "$variable"
  else
    printf '+ %s < (value of %s, not shown)\n' "$(quoted "$@")" "$variable"
    printf '%s' "${!variable}" | "$@"
  fi
}

# A read-only question to gcloud: true when the resource exists.
exists() { gcloud "$@" --project="$PROJECT_ID" --format='value(name)' >/dev/null 2>&1; }

# ---------------------------------------------------------------------------- gcloud checks

if ! command -v gcloud >/dev/null 2>&1; then
  echo "deploy.sh: gcloud is not on PATH: install the Google Cloud CLI and run gcloud auth login" >&2
  exit 2
fi
account=$(gcloud auth list --filter=status:ACTIVE --format='value(account)' 2>/dev/null || true)
if [ -z "$account" ]; then
  echo "deploy.sh: gcloud has no active account: run gcloud auth login (or activate a service account)" >&2
  exit 2
fi
mode=""
if [ "$DRY_RUN" -eq 1 ]; then mode=" (dry run: nothing is changed)"; fi
say "deploying to project $PROJECT_ID, region $REGION, as $account$mode"

# ---------------------------------------------------------------------------- the plan

# Secrets: environment variable of the functions -> Secret Manager secret name.
secret_name() {
  case "$1" in
    SUPABASE_JWT_SECRET) echo "${SECRET_PREFIX}supabase-jwt-secret" ;;
    SUPABASE_SECRET_KEYS) echo "${SECRET_PREFIX}supabase-secret-keys" ;;
    DATABASE_URL) echo "${SECRET_PREFIX}database-url" ;;
    SUPABASE_SERVICE_ROLE_KEY) echo "${SECRET_PREFIX}supabase-service-role-key" ;;
  esac
}

auth_secrets=()
[ "$use_jwt_secret" -eq 1 ] && auth_secrets+=(SUPABASE_JWT_SECRET)
[ "$use_secret_keys" -eq 1 ] && auth_secrets+=(SUPABASE_SECRET_KEYS)
if [ "$SINK" = postgres ]; then sink_secret=DATABASE_URL; else sink_secret=SUPABASE_SERVICE_ROLE_KEY; fi
all_secrets=(${auth_secrets[@]+"${auth_secrets[@]}"} "$sink_secret")

secrets_of() {  # FUNCTION -> "VAR=secret:latest,..."; only batch_import gets the sink's secret
  local list=() variable
  for variable in ${auth_secrets[@]+"${auth_secrets[@]}"}; do list+=("$variable=$(secret_name "$variable"):latest"); done
  if [ "$1" = batch_import ]; then list+=("$sink_secret=$(secret_name "$sink_secret"):latest"); fi
  local IFS=,
  printf '%s' "${list[*]}"
}

env_of() {  # FUNCTION CONCURRENCY -> "VAR=value,..." of the plain settings that are set
  # GOOGLE_CLOUD_PROJECT: the Python runtimes of 2nd-gen functions do not set it, and the log
  # lines need it to link their trace id to Cloud Trace (functions/log.py).
  # WORKERS and THREADS: functions-framework starts gunicorn with WORKERS processes (default 1)
  # of THREADS threads (default 4 per CPU). One process, so that the instance keeps one
  # connection pool and one JWKS cache; one thread per request the instance is given at once
  # (docs/deployment.md, "Server settings").
  local list=("GOOGLE_CLOUD_PROJECT=$PROJECT_ID" "WORKERS=1" "THREADS=$2") name
  for name in SUPABASE_URL SUPABASE_JWKS_URL MAX_BATCH_EVENTS MAX_BODY_BYTES MAX_EVENT_BYTES \
    FUTURE_SKEW_SECONDS; do
    if [ -n "${!name:-}" ]; then list+=("$name=${!name}"); fi
  done
  if [ "$1" = batch_import ]; then
    list+=("TIME_BUDGET_SECONDS=$TIME_BUDGET_SECONDS")
    for name in RATE_LIMIT_REQUESTS_PER_MINUTE RATE_LIMIT_EVENTS_PER_MINUTE; do
      if [ -n "${!name:-}" ]; then list+=("$name=${!name}"); fi
    done
  fi
  local IFS=,
  printf '%s' "${list[*]}"
}

# ---------------------------------------------------------------------------- read-only checks

missing=()
for account_email in "$RUNTIME_SERVICE_ACCOUNT" "$SCHEDULER_SERVICE_ACCOUNT"; do
  if [ "$account_email" = "$SCHEDULER_SERVICE_ACCOUNT" ] && [ "$SCHEDULER" -eq 0 ]; then continue; fi
  if ! exists iam service-accounts describe "$account_email" && [ "$CREATE_SERVICE_ACCOUNTS" -eq 0 ]; then
    missing+=("service account $account_email does not exist: create it, or run with --create-service-accounts")
  fi
done
existing_secrets=" "
secret_exists() { [[ $existing_secrets == *" $1 "* ]]; }
for variable in "${all_secrets[@]}"; do
  if exists secrets describe "$(secret_name "$variable")"; then
    existing_secrets+="$variable "
  else
    if [ "$CREATE_SECRETS" -eq 0 ]; then
      missing+=("secret $(secret_name "$variable") (for $variable) does not exist: run with --create-secrets and $variable set")
    fi
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deploy.sh: nothing was changed, because:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 2
fi

# ---------------------------------------------------------------------------- values of secrets
# Asked for before anything changes, so that a missing value stops the run with nothing done.
# A dry run needs no values: it shows where each would go.

random_secret_key() {
  printf 'sb_secret_%s' "$(head -c 30 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
}

if [ "$CREATE_SECRETS" -eq 1 ] && [ "$DRY_RUN" -eq 0 ]; then
  for variable in "${all_secrets[@]}"; do
    if [ -n "${!variable:-}" ]; then continue; fi
    if secret_exists "$variable"; then continue; fi  # keep what is stored
    if [ "$variable" = SUPABASE_SECRET_KEYS ]; then
      SUPABASE_SECRET_KEYS=$(random_secret_key)
      say "SUPABASE_SECRET_KEYS not given: generated one sb_secret_ key for the scheduler job"
    elif [ -t 0 ]; then
      read -r -s -p "Value for $variable (not echoed): " "${variable?}"
      echo
      [ -n "${!variable}" ] || { echo "deploy.sh: $variable is empty; nothing was changed" >&2; exit 2; }
    else
      echo "deploy.sh: secret $(secret_name "$variable") does not exist and $variable is not set; set it in the environment. Nothing was changed." >&2
      exit 2
    fi
  done
fi

if [ "$SCHEDULER" -eq 1 ]; then
  # The key the job sends: the first of SUPABASE_SECRET_KEYS as the functions will have it (with
  # --create-secrets, the value about to be stored; otherwise the stored one, read back so that a
  # stray variable cannot diverge from it). Checked before anything changes. A dry run reads no
  # secret and uses a placeholder.
  scheduler_key=""
  if [ "$CREATE_SECRETS" -eq 1 ] && [ -n "${SUPABASE_SECRET_KEYS:-}" ]; then
    scheduler_key=${SUPABASE_SECRET_KEYS%%,*}
  elif [ "$DRY_RUN" -eq 0 ]; then
    scheduler_key=$(gcloud secrets versions access latest --secret="$(secret_name SUPABASE_SECRET_KEYS)" \
      --project="$PROJECT_ID" 2>/dev/null || true)
    scheduler_key=${scheduler_key%%,*}
  fi
  scheduler_key=${scheduler_key//[[:space:]]/}
  if ! [[ $scheduler_key =~ ^sb_secret_[A-Za-z0-9_-]+$ ]]; then
    if [ "$DRY_RUN" -eq 1 ]; then
      scheduler_key=sb_secret_DRY_RUN_PLACEHOLDER
    else
      echo "deploy.sh: the first entry of secret $(secret_name SUPABASE_SECRET_KEYS) is not an sb_secret_ key, so the scheduler job could not authenticate; nothing was changed" >&2
      exit 2
    fi
  fi
fi

# ---------------------------------------------------------------------------- changes

if [ "$ENABLE_APIS" -eq 1 ]; then
  say "enabling the APIs"
  change gcloud services enable cloudfunctions.googleapis.com run.googleapis.com \
    cloudbuild.googleapis.com artifactregistry.googleapis.com secretmanager.googleapis.com \
    cloudscheduler.googleapis.com --project="$PROJECT_ID" --quiet
fi

if [ "$CREATE_SERVICE_ACCOUNTS" -eq 1 ]; then
  for account_email in "$RUNTIME_SERVICE_ACCOUNT" "$SCHEDULER_SERVICE_ACCOUNT"; do
    if [ "$account_email" = "$SCHEDULER_SERVICE_ACCOUNT" ] && [ "$SCHEDULER" -eq 0 ]; then continue; fi
    if exists iam service-accounts describe "$account_email"; then
      say "service account $account_email exists"
    else
      change gcloud iam service-accounts create "${account_email%%@*}" \
        --display-name="engagement events: ${account_email%%@*}" --project="$PROJECT_ID" --quiet
    fi
  done
fi

if [ "$CREATE_SECRETS" -eq 1 ]; then
  for variable in "${all_secrets[@]}"; do
    name=$(secret_name "$variable")
    if ! secret_exists "$variable"; then
      change_with_secret "$variable" gcloud secrets create "$name" --replication-policy=automatic \
        --data-file=- --project="$PROJECT_ID" --quiet
    elif [ -n "${!variable:-}" ] && [ "$DRY_RUN" -eq 1 ]; then
      say "secret $name exists; a new version is added if $variable differs from the stored value"
      change_with_secret "$variable" gcloud secrets versions add "$name" --data-file=- \
        --project="$PROJECT_ID" --quiet
    elif [ -n "${!variable:-}" ]; then
      stored=$(gcloud secrets versions access latest --secret="$name" --project="$PROJECT_ID" 2>/dev/null || true)
      if [ "$stored" = "${!variable}" ]; then
        say "secret $name already holds the given $variable"
      else
        change_with_secret "$variable" gcloud secrets versions add "$name" --data-file=- \
          --project="$PROJECT_ID" --quiet
      fi
    else
      say "secret $name exists; $variable not given, keeping the stored value"
    fi
    change gcloud secrets add-iam-policy-binding "$name" \
      --member="serviceAccount:$RUNTIME_SERVICE_ACCOUNT" --role=roles/secretmanager.secretAccessor \
      --condition=None --project="$PROJECT_ID" --quiet
  done
fi

if [ "$ACCESS" = public ]; then access_flag=--allow-unauthenticated; else access_flag=--no-allow-unauthenticated; fi

for function in "${FUNCTIONS[@]}"; do
  if [ "$function" = batch_import ]; then
    memory=$BATCH_IMPORT_MEMORY cpu=$BATCH_IMPORT_CPU timeout=$BATCH_IMPORT_TIMEOUT
    max_instances=$BATCH_IMPORT_MAX_INSTANCES concurrency=$BATCH_IMPORT_CONCURRENCY
  else
    memory=$HELPER_MEMORY cpu=$HELPER_CPU timeout=$HELPER_TIMEOUT
    max_instances=$HELPER_MAX_INSTANCES concurrency=$HELPER_CONCURRENCY
  fi
  env_vars=$(env_of "$function" "$concurrency")
  secret_refs=$(secrets_of "$function")
  if [ -n "$secret_refs" ]; then secrets_flag=--set-secrets="$secret_refs"; else secrets_flag=--clear-secrets; fi
  say "deploying $function"
  change gcloud functions deploy "$function" --gen2 --project="$PROJECT_ID" --region="$REGION" \
    --runtime="$RUNTIME" --source=. --entry-point="$function" --trigger-http "$access_flag" \
    --service-account="$RUNTIME_SERVICE_ACCOUNT" --memory="$memory" --cpu="$cpu" \
    --timeout="${timeout}s" --min-instances=0 --max-instances="$max_instances" \
    --concurrency="$concurrency" --ingress-settings=all --set-env-vars="$env_vars" "$secrets_flag" \
    --update-labels=app=engagement-events --quiet
done

if [ "$SCHEDULER" -eq 0 ]; then
  say "done (--no-scheduler: the scheduler job was left alone)"
  exit 0
fi

# ---------------------------------------------------------------------------- scheduler job

say "scheduler job $SCHEDULER_JOB"
# The job may call batch_import at the Google layer: it is the only identity that needs the
# invoker role when --access private, and holding it costs nothing when --access public.
change gcloud functions add-invoker-policy-binding batch_import --region="$REGION" \
  --member="serviceAccount:$SCHEDULER_SERVICE_ACCOUNT" --project="$PROJECT_ID" --quiet

if [ "$DRY_RUN" -eq 1 ]; then
  url=$(gcloud functions describe batch_import --gen2 --region="$REGION" --project="$PROJECT_ID" \
    --format='value(serviceConfig.uri)' 2>/dev/null || true)
  url=${url:-https://BATCH_IMPORT_URL}
else
  url=$(gcloud functions describe batch_import --gen2 --region="$REGION" --project="$PROJECT_ID" \
    --format='value(serviceConfig.uri)')
fi

# The apikey header holds a secret, so it goes to gcloud in a flags file only this user can
# read (mktemp makes it 0600), never on the command line; the file is removed on exit.
headers_file=$(mktemp "${TMPDIR:-/tmp}/deploy-scheduler-headers.XXXXXX")
trap 'rm -f "$headers_file"' EXIT
if exists scheduler jobs describe "$SCHEDULER_JOB" --location="$REGION"; then
  job_action=update headers_flag=--update-headers
else
  job_action=create headers_flag=--headers
fi
printf '{"%s": {"apikey": "%s", "Content-Type": "application/json"}}\n' \
  "$headers_flag" "$scheduler_key" >"$headers_file"
change gcloud scheduler jobs "$job_action" http "$SCHEDULER_JOB" --location="$REGION" \
  --project="$PROJECT_ID" --schedule="$SCHEDULE" --time-zone="$SCHEDULE_TIME_ZONE" \
  --uri="$url" --http-method=POST --message-body-from-file="$SCHEDULER_BODY_FILE" \
  --oidc-service-account-email="$SCHEDULER_SERVICE_ACCOUNT" --oidc-token-audience="$url" \
  --attempt-deadline="${SCHEDULER_ATTEMPT_DEADLINE}s" --max-retry-attempts="$SCHEDULER_MAX_RETRIES" \
  --min-backoff=30s --max-backoff=600s \
  --description="Posts a steps_import batch to batch_import (deploy.sh)" \
  --flags-file="$headers_file" --quiet

say "done: batch_import is at $url"

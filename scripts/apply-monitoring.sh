#!/usr/bin/env bash
# Applies the Cloud Monitoring definitions in monitoring/ to a Google Cloud project with gcloud:
# log-based metrics (monitoring/log-metrics/<name>.yaml), alert policies
# (monitoring/alert-policies/*.json) and the dashboard (monitoring/dashboards/*.json).
# Each is created when missing and updated when present (metrics by name, policies and
# dashboards by displayName), so running it again changes nothing that is already right.
# docs/runbook.md explains what each definition watches.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/apply-monitoring.sh [--project ID] [--notification-channels LIST] [--dry-run]

Creates or updates the engagement functions' log-based metrics, alert policies and dashboard.

Options:
  --project ID                  Google Cloud project to apply to. Default: $GOOGLE_CLOUD_PROJECT,
                                else gcloud's configured project.
  --notification-channels LIST  Comma-separated notification channel resource names
                                (projects/ID/notificationChannels/N) that every alert policy
                                notifies. The files are the source of truth: an update replaces a
                                policy's channels with this list, so pass it on every run.
  --dry-run                     Print every gcloud command (with the create-or-update decision
                                as shell) without running anything; needs no gcloud login.
  -h, --help                    Show this help.

Needs: gcloud (logged in, with roles/logging.configWriter and roles/monitoring.editor) and
python3 (to read display names from the JSON files).
EOF
}

die() {
    echo "apply-monitoring.sh: $*" >&2
    exit 1
}

project="${GOOGLE_CLOUD_PROJECT:-}"
channels=""
dry_run=0
while [ $# -gt 0 ]; do
    case "$1" in
    --project)
        [ $# -ge 2 ] || die "--project needs a project id"
        project="$2"
        shift 2
        ;;
    --project=*)
        project="${1#*=}"
        shift
        ;;
    --notification-channels)
        [ $# -ge 2 ] || die "--notification-channels needs a list"
        channels="$2"
        shift 2
        ;;
    --notification-channels=*)
        channels="${1#*=}"
        shift
        ;;
    --dry-run)
        dry_run=1
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown option: $1"
        ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# --- inputs, checked before anything is touched ------------------------------------------------
command -v python3 >/dev/null 2>&1 || die "python3 is needed to read the definitions"
metrics=(monitoring/log-metrics/*.yaml)
policies=(monitoring/alert-policies/*.json)
dashboards=(monitoring/dashboards/*.json)
for file in "${metrics[@]}" "${policies[@]}" "${dashboards[@]}"; do
    [ -f "$file" ] || die "missing definition files under monitoring/ (looked for $file)"
done
for file in "${policies[@]}" "${dashboards[@]}"; do
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$file" 2>/dev/null ||
        die "$file is not valid JSON"
done

if [ "$dry_run" -eq 0 ]; then
    command -v gcloud >/dev/null 2>&1 ||
        die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"
    if [ -z "$project" ]; then
        project="$(gcloud config get-value project 2>/dev/null || true)"
    fi
fi
[ -n "$project" ] || die "no project: pass --project ID or set GOOGLE_CLOUD_PROJECT"
[[ "$project" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
    die "not a Google Cloud project id: $project"
if [ -n "$channels" ]; then
    IFS=',' read -r -a channel_list <<<"$channels"
    for channel in "${channel_list[@]}"; do
        [[ "$channel" =~ ^projects/[^/]+/notificationChannels/[0-9]+$ ]] ||
            die "not a notification channel resource name: $channel"
    done
fi
if [ "$dry_run" -eq 0 ]; then
    account="$(gcloud auth list --filter=status:ACTIVE --format='value(account)' 2>/dev/null || true)"
    [ -n "$account" ] || die "gcloud is not logged in: run gcloud auth login"
fi

# --- helpers -----------------------------------------------------------------------------------

# One argument quoted for a shell only when it needs it, so printed commands can be pasted.
quote() {
    if [[ "$1" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

# A command as one line of shell.
line() {
    local out="" arg
    for arg in "$@"; do
        out+="$(quote "$arg") "
    done
    printf '%s' "${out% }"
}

display_name() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["displayName"])' "$1"
}

workdir=""
cleanup() {
    if [ -n "$workdir" ]; then
        rm -rf "$workdir"
    fi
}
trap cleanup EXIT
if [ -n "$channels" ]; then
    # Created here, not where it is used: that runs in a command substitution's subshell.
    workdir="$(mktemp -d)"
fi

# The policy file to send: the definition itself, or a copy naming the notification channels.
policy_file() {
    local file="$1"
    if [ -z "$channels" ]; then
        printf '%s' "$file"
        return
    fi
    local copy
    copy="$workdir/$(basename "$file")"
    python3 - "$file" "$copy" "$channels" <<'PY'
import json
import sys

source, target, channels = sys.argv[1:4]
with open(source) as handle:
    policy = json.load(handle)
policy["notificationChannels"] = channels.split(",")
with open(target, "w") as handle:
    json.dump(policy, handle, indent=2)
PY
    printf '%s' "$copy"
}

apply_metric() {
    local file="$1" name
    name="$(basename "$file" .yaml)"
    local describe=(gcloud logging metrics describe "$name" "--project=$project")
    local update=(gcloud logging metrics update "$name" "--project=$project" "--config-from-file=$file")
    local create=(gcloud logging metrics create "$name" "--project=$project" "--config-from-file=$file")
    if [ "$dry_run" -eq 1 ]; then
        echo "if $(line "${describe[@]}") >/dev/null 2>&1; then $(line "${update[@]}"); else $(line "${create[@]}"); fi"
    elif "${describe[@]}" >/dev/null 2>&1; then
        echo "log-based metric $name: updating"
        "${update[@]}"
    else
        echo "log-based metric $name: creating"
        "${create[@]}"
    fi
}

# Alert policies and dashboards have server-chosen ids: find an existing one by displayName.
apply_named() {
    local kind="$1" file="$2" flag="$3" title sent
    title="$(display_name "$file")"
    sent="$file"
    if [ "$kind" = policies ]; then
        sent="$(policy_file "$file")"
        if [ "$dry_run" -eq 1 ] && [ "$sent" != "$file" ]; then
            echo "# $sent: $file with notificationChannels $channels"
        fi
    fi
    local list=(gcloud monitoring "$kind" list "--project=$project"
        "--filter=displayName=\"$title\"" "--format=value(name)" --limit=1)
    local create=(gcloud monitoring "$kind" create "--project=$project" "$flag=$sent")
    if [ "$dry_run" -eq 1 ]; then
        echo "name=\"\$($(line "${list[@]}"))\"; if [ -n \"\$name\" ]; then gcloud monitoring $kind update \"\$name\" $(line "--project=$project" "$flag=$sent"); else $(line "${create[@]}"); fi"
        return
    fi
    local name
    name="$("${list[@]}")"
    if [ -n "$name" ]; then
        echo "$kind \"$title\": updating $name"
        gcloud monitoring "$kind" update "$name" "--project=$project" "$flag=$sent"
    else
        echo "$kind \"$title\": creating"
        "${create[@]}"
    fi
}

# --- apply: metrics first (the policies and the dashboard chart them) ---------------------------
if [ "$dry_run" -eq 1 ]; then
    echo "# dry run for project $project: nothing is sent; each line is what would run"
fi
for file in "${metrics[@]}"; do
    apply_metric "$file"
done
for file in "${policies[@]}"; do
    apply_named policies "$file" --policy-from-file
done
for file in "${dashboards[@]}"; do
    apply_named dashboards "$file" --config-from-file
done
if [ "$dry_run" -eq 0 ]; then
    echo "monitoring applied to $project: ${#metrics[@]} log-based metrics, ${#policies[@]} alert policies, ${#dashboards[@]} dashboards"
fi

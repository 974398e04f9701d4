#!/usr/bin/env bash
# Capacity of scanhook on PostgreSQL with 1 and with 3 replicas, on this
# machine, loopback only.
#
#   SCANHOOK_TEST_POSTGRES=postgres://... scripts/load-pg.sh
#
# Builds scanhook, defender-sim and scripts/loadgen; starts the simulator;
# for REPLICAS in 1 3: creates a fresh schema, starts that many `scanhook
# serve` processes on it, and has $CONNECTIONS senders (split evenly over
# the replicas, as a load balancer would) post Defender alerts with unique
# ids back to back for $DURATION with vegeta. Prints accepted/s and latency
# per run, and checks that the database holds every acknowledged alert.
# Environment: DURATION=20s CONNECTIONS=30 DEVICES=500 INVENTORY=2000.
set -euo pipefail

DSN=${SCANHOOK_TEST_POSTGRES:?set SCANHOOK_TEST_POSTGRES to a database this script may create schemas in}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-30}
DEVICES=${DEVICES:-500}
INVENTORY=${INVENTORY:-2000}

cd "$(dirname "$0")/.."
for tool in jq psql curl; do
	command -v "$tool" >/dev/null || { echo "load-pg: needs $tool" >&2; exit 1; }
done
export PATH="$PATH:$(go env GOPATH)/bin"
export PGOPTIONS='-c client_min_messages=warning'
command -v vegeta >/dev/null || go install github.com/tsenart/vegeta/v12@v12.13.0

WORK=$(mktemp -d /tmp/scanhook-loadpg.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do
		kill -9 "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT

go build -o "$WORK/bin/" ./cmd/scanhook ./cmd/defender-sim ./scripts/loadgen
port() { "$WORK/bin/loadgen" port; }

SIM_PORT=$(port)
printf 'load-pg-admin-token-0123456789\n' >"$WORK/admin-token"
"$WORK/bin/defender-sim" --addr "127.0.0.1:$SIM_PORT" --generate "$INVENTORY" \
	--ca-file "$WORK/ca.pem" --admin-token-file "$WORK/admin-token" --log-level warn >"$WORK/sim.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do [[ -s $WORK/ca.pem ]] && grep -q client_secret_file "$WORK/sim.out" && break; sleep 0.1; done
curl -fsS --cacert "$WORK/ca.pem" -H "Authorization: Bearer $(cat "$WORK/admin-token")" \
	"https://127.0.0.1:$SIM_PORT/admin/machines" >"$WORK/machines.json"
printf 'load-pg-webhook-token-0123456789' >"$WORK/token"
cp examples/rules.yaml "$WORK/rules.yaml"

run() {
	local replicas=$1 schema="loadpg_$$_$1"
	psql -q "$DSN" -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema;"
	local dsn
	dsn=$(jq -rn --arg d "$DSN" --arg s "$schema" '$d + (if ($d | contains("?")) then "&" else "?" end) + "search_path=" + $s')
	printf '%s' "$dsn" >"$WORK/dsn"
	{
		echo "listen: 127.0.0.1:0"
		echo "rules: rules.yaml"
		echo "store: {driver: postgres, dsn_file: dsn}"
		sed -n '/^defender:/,/client_secret_file/p' "$WORK/sim.out"
		echo "sources:"
		echo "  defender:"
		echo "    auth: {bearer_token_file: token}"
		echo "server: {ingest_per_second: 0}"
		echo "log: {level: warn}"
	} >"$WORK/config.yaml"
	local ports=() pids=()
	for _ in $(seq 1 "$replicas"); do
		local p
		p=$(port)
		SSL_CERT_FILE="$WORK/ca.pem" "$WORK/bin/scanhook" serve --config "$WORK/config.yaml" --listen "127.0.0.1:$p" \
			>>"$WORK/serve.log" 2>&1 &
		pids+=($!)
		PIDS+=($!)
		ports+=("$p")
	done
	for p in "${ports[@]}"; do
		for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$p/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
	done
	local per=$((CONNECTIONS / replicas)) i=0 load vpids=()
	load=$(cut -d' ' -f1 /proc/loadavg)
	for p in "${ports[@]}"; do
		{ "$WORK/bin/loadgen" targets -url "http://127.0.0.1:$p/v1/webhooks/defender" -token-file "$WORK/token" \
			-machines "$WORK/machines.json" -devices "$DEVICES" -run "pg$replicas-$i-$$" || true; } |
			vegeta attack -lazy -format=json -rate=0 -max-workers="$per" -workers="$per" \
				-duration="$DURATION" -timeout=10s -keepalive=true >"$WORK/r$replicas-$i.bin" &
		vpids+=($!)
		i=$((i + 1))
	done
	wait "${vpids[@]}"
	vegeta report -type=json "$WORK"/r"$replicas"-*.bin >"$WORK/r$replicas.json"
	local n202 secs rps p50 p99 stored
	n202=$(jq '.status_codes["202"] // 0' "$WORK/r$replicas.json")
	secs=$(jq '(.duration + .wait) / 1e9' "$WORK/r$replicas.json")
	rps=$(jq -n --argjson n "$n202" --argjson s "$secs" '$n / $s | floor')
	read -r p50 p99 < <(jq -r '.latencies | [.["50th"], .["99th"]] | map(. / 1e6 * 10 | round / 10) | @tsv' "$WORK/r$replicas.json")
	for p in "${pids[@]}"; do
		kill -9 "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	stored=$(psql -tAq "$DSN" -c "SELECT count(*) FROM $schema.alerts")
	psql -q "$DSN" -c "DROP SCHEMA $schema CASCADE;"
	printf 'replicas=%d  accepted=%d/s  p50=%sms  p99=%sms  202s=%d  alerts in the database=%d  loadavg=%s\n' \
		"$replicas" "$rps" "$p50" "$p99" "$n202" "$stored" "$load"
	if ((stored < n202)); then
		echo "load-pg: $((n202 - stored)) acknowledged alerts are missing from the database" >&2
		exit 1
	fi
}

run 1
run 3

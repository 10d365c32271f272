#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, no ZooKeeper) on 127.0.0.1 for development and CI.
#
#   scripts/kafka.sh install     fetch the broker jars from Maven Central (once; cached after that)
#   scripts/kafka.sh start       format storage on first use, start in the background, wait until ready
#   scripts/kafka.sh status      say whether it runs (exit 0) or not (exit 3)
#   scripts/kafka.sh logs [N|-f] last N lines of the broker log (default 50), or follow it
#   scripts/kafka.sh stop        graceful stop, kill -9 after STREAMRL_KAFKA_STOP_TIMEOUT seconds
#   scripts/kafka.sh wipe        stop and delete the data dir (topics, offsets, transactions)
#   scripts/kafka.sh acl ARGS    Kafka's AclCommand against this broker as the SASL admin
#                                (e.g. acl --list); only with STREAMRL_KAFKA_SASL_USERS
#   scripts/kafka.sh tls-client NAME  a client certificate signed by the TLS mode's CA (mutual TLS)
#   scripts/kafka.sh cluster [N]  a replicated loopback cluster of N nodes [3] on ports 29092...
#                                (cluster-status, cluster-stop, cluster-node-start|stop I,
#                                cluster-wipe; see scripts/kafka/cluster.sh)
#
# Environment (defaults in brackets):
#   STREAMRL_KAFKA_VERSION          Kafka release [4.1.1]
#   STREAMRL_KAFKA_PORT             client listener on 127.0.0.1 [9092]
#   STREAMRL_KAFKA_CONTROLLER_PORT  KRaft controller listener on 127.0.0.1 [client port + 1]
#   STREAMRL_CACHE                  jar cache, kept across clones [~/.cache/streamrl]
#   STREAMRL_KAFKA_DATA             log dirs, config, pid and log file [$STREAMRL_CACHE/kafka-data]
#   STREAMRL_KAFKA_HEAP             JVM max heap [768m]
#   STREAMRL_KAFKA_START_TIMEOUT    seconds to wait for the broker to serve metadata [90]
#   STREAMRL_KAFKA_STOP_TIMEOUT     seconds to wait for a graceful stop [30]
#   STREAMRL_KAFKA_SASL_USERS       "admin:pw user:pw ..." turns on SASL on the client port
#                                   (SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN) and ACLs
#                                   (StandardAuthorizer); the first user is the super user. SCRAM
#                                   users are created when the data dir is first formatted; PLAIN
#                                   users on every start. Unset [default]: no SASL, no authorization.
#   STREAMRL_KAFKA_TLS              1: TLS on the client port (SSL, or SASL_SSL with SASL users),
#                                   with a throwaway CA and broker certificate in $DATA/tls; clients
#                                   trust $DATA/tls/ca.pem (?ssl_cafile=). Unset or 0 [default]: none.
#   STREAMRL_KAFKA_TLS_HOSTS        names in the broker certificate ["localhost 127.0.0.1"]
#   STREAMRL_KAFKA_TLS_CLIENT_AUTH  none|requested|required: client certificates (mutual TLS) [none]
#
# Why jars from Maven Central rather than the release tarball: Maven Central is the one Java
# source every dev box and CI machine here reaches, and Maven's local repo makes the second
# install free. The libs/ dir has the same layout as the tarball's, so any Kafka class runs with
# `java -cp "$STREAMRL_CACHE/kafka/<version>/libs/*" <class>` (e.g. ProducerPerformance).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="${STREAMRL_KAFKA_VERSION:-4.1.1}"
# log4j api, core and the slf4j2 binding must share one version; 2.24.3 is what Kafka 4.1 ships.
LOG4J_VERSION="${STREAMRL_KAFKA_LOG4J_VERSION:-2.24.3}"
CACHE="${STREAMRL_CACHE:-$HOME/.cache/streamrl}"
LIBS="$CACHE/kafka/$VERSION/libs"
DATA="${STREAMRL_KAFKA_DATA:-$CACHE/kafka-data}"
PORT="${STREAMRL_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${STREAMRL_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
HEAP="${STREAMRL_KAFKA_HEAP:-768m}"
START_TIMEOUT="${STREAMRL_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${STREAMRL_KAFKA_STOP_TIMEOUT:-30}"
PID_FILE="$DATA/broker.pid"
LOG_FILE="$DATA/broker.log"
PYTHON="${PYTHON:-python3}"

say() { echo "kafka: $*"; }
die() { echo "kafka: error: $*" >&2; exit 1; }

check_java() {
    command -v java >/dev/null || die "java not found; Kafka $VERSION needs Java 17+ (apt-get install openjdk-17-jre-headless)"
    local v
    v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\).*/\1/p' | head -n1)"
    [[ -n "$v" && "$v" -ge 17 ]] || die "Kafka $VERSION needs Java 17+, found: $(java -version 2>&1 | head -n1)"
}

installed() { [[ -f "$LIBS/.complete" ]]; }

cmd_install() {
    check_java
    if installed; then
        say "$VERSION already installed ($LIBS)"
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found; install Maven 3.6+ (apt-get install maven) to fetch the Kafka jars"
    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: $tmp is local
    trap "rm -rf '$tmp'" EXIT
    sed -e "s/@KAFKA_VERSION@/$VERSION/g" -e "s/@LOG4J_VERSION@/$LOG4J_VERSION/g" \
        "$HERE/kafka/pom.xml" >"$tmp/pom.xml"
    say "fetching Kafka $VERSION jars from Maven Central into $LIBS"
    # Into a scratch dir first and renamed at the end, so an interrupted install never leaves a
    # half-filled libs/ that a later start would trust.
    if ! mvn -B -q -f "$tmp/pom.xml" -Dmaven.repo.local="$CACHE/maven" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
        tail -n 30 "$tmp/mvn.log" >&2
        die "Maven could not fetch org.apache.kafka:kafka_2.13:$VERSION (is the version right and Maven Central reachable?)"
    fi
    touch "$tmp/libs/.complete"
    mkdir -p "$(dirname "$LIBS")"
    rm -rf "$LIBS"
    mv "$tmp/libs" "$LIBS"
    say "installed $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1))"
}

# The pid in the pid file, if that process is alive and is our broker (pids get reused).
broker_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' \
        && echo "$pid"
}

# With SASL or TLS the client port answers nothing before authentication or a handshake, so
# readiness there is the broker's own "started" line (logged after it registered with the
# controller) plus an open port.
answers() {
    if [[ -n "$SASL_USERS" || -n "$TLS" ]]; then
        local t0=$SECONDS
        while true; do
            grep -q "Kafka Server started" "$LOG_FILE" 2>/dev/null \
                && "$PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$PORT" 2>/dev/null \
                && return 0
            ((SECONDS - t0 >= ${1:-0})) && return 1
            sleep 0.25
        done
    fi
    "$PYTHON" "$HERE/kafka/ready.py" 127.0.0.1 "$PORT" "${1:-0}"
}

write_config() {
    sed -e "s#@PORT@#$PORT#g" -e "s#@CONTROLLER_PORT@#$CONTROLLER_PORT#g" -e "s#@DATA@#$DATA#g" \
        "$HERE/kafka/server.properties" >"$DATA/server.properties"
    cp "$HERE/kafka/log4j2.properties" "$DATA/log4j2.properties"
    [[ "$PROTOCOL" == PLAINTEXT ]] && return 0
    # Later keys win in a Java properties file: this block replaces the plaintext listener.
    printf '%s\n' "# client port: $PROTOCOL (scripts/kafka.sh)" \
        "listeners=$PROTOCOL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT" \
        "advertised.listeners=$PROTOCOL://127.0.0.1:$PORT" "inter.broker.listener.name=$PROTOCOL" \
        "listener.security.protocol.map=$PROTOCOL:$PROTOCOL,CONTROLLER:PLAINTEXT" >>"$DATA/server.properties"
    [[ -n "$TLS" ]] && tls_properties >>"$DATA/server.properties"
    if [[ -n "$SASL_USERS" ]]; then
        sed -e "s#@LISTENER@#${PROTOCOL,,}#g" -e "s#@ADMIN@#$(sed_escape "$(sasl_admin)")#g" \
            -e "s#@ADMIN_PASSWORD@#$(sed_escape "$(sasl_admin_password)")#g" \
            -e "s#@PLAIN_USERS@#$(sed_escape "$(plain_users)")#g" \
            "$HERE/kafka/sasl.properties" >>"$DATA/server.properties"
    fi
    # The AclCommand's client config; kept in the data dir (0600), which holds the data anyway.
    (umask 077; {
        echo "security.protocol=$PROTOCOL"
        if [[ -n "$TLS" ]]; then
            printf '%s\n' "ssl.truststore.type=PEM" "ssl.truststore.location=$DATA/tls/ca.pem"
            # With mutual TLS the tool shows the broker's own certificate (it is this machine's).
            [[ "$TLS_CLIENT_AUTH" != none ]] && printf '%s\n' "ssl.keystore.type=PKCS12" \
                "ssl.keystore.location=$DATA/tls/broker.p12" "ssl.keystore.password=$(tls_password)" \
                "ssl.key.password=$(tls_password)"
        fi
        if [[ -n "$SASL_USERS" ]]; then
            printf '%s\n' "sasl.mechanism=SCRAM-SHA-512" \
                "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$(sasl_admin)\" password=\"$(sasl_admin_password)\";"
        fi
    } >"$DATA/admin.properties")
}

# A value safe on the right-hand side of sed's s#...#VALUE#.
sed_escape() { printf '%s' "$1" | sed -e 's/[\\&#]/\\&/g'; }

SASL_USERS="${STREAMRL_KAFKA_SASL_USERS:-}"
sasl_admin() { local first="${SASL_USERS%% *}"; echo "${first%%:*}"; }
sasl_admin_password() { local first="${SASL_USERS%% *}"; echo "${first#*:}"; }
# --add-scram arguments of the storage format, two per "user:password" (SHA-512 and SHA-256).
scram_args() {
    local pair mechanism
    for pair in $SASL_USERS; do
        [[ "$pair" == *:* ]] || die "STREAMRL_KAFKA_SASL_USERS entries are user:password, got '$pair'"
        for mechanism in SCRAM-SHA-512 SCRAM-SHA-256; do
            printf '%s\n' "--add-scram" "$mechanism=[name=${pair%%:*},password=${pair#*:}]"
        done
    done
}
# The PLAIN login module's user table: user_NAME="password" for every user.
plain_users() {
    local pair
    for pair in $SASL_USERS; do
        printf 'user_%s="%s" ' "${pair%%:*}" "${pair#*:}"
    done
}

TLS="${STREAMRL_KAFKA_TLS:-}"
case "$TLS" in
    1 | true | yes) TLS=1 ;;
    "" | 0 | false | no) TLS="" ;;
    *) die "STREAMRL_KAFKA_TLS is 1 (TLS on the client port) or 0/unset, got '$TLS'" ;;
esac
TLS_HOSTS="${STREAMRL_KAFKA_TLS_HOSTS:-localhost 127.0.0.1}"
TLS_CLIENT_AUTH="${STREAMRL_KAFKA_TLS_CLIENT_AUTH:-none}"
[[ "$TLS_CLIENT_AUTH" =~ ^(none|requested|required)$ ]] \
    || die "STREAMRL_KAFKA_TLS_CLIENT_AUTH is none, requested or required, got '$TLS_CLIENT_AUTH'"
PROTOCOL=PLAINTEXT
[[ -n "$SASL_USERS" ]] && PROTOCOL=SASL_PLAINTEXT
[[ -n "$TLS" ]] && PROTOCOL="${PROTOCOL/PLAINTEXT/SSL}"
# shellcheck source=kafka/tls.sh
source "$HERE/kafka/tls.sh"
# shellcheck source=kafka/cluster.sh
source "$HERE/kafka/cluster.sh"

# What a client puts in its log URL for this broker.
client_hint() {
    local query="" notes=""
    [[ "$PROTOCOL" != PLAINTEXT ]] && query="?security_protocol=$PROTOCOL"
    [[ -n "$TLS" ]] && query+="&ssl_cafile=$TLS_DIR/ca.pem"
    if [[ -n "$TLS" && "$TLS_CLIENT_AUTH" != none ]]; then
        query+="&ssl_certfile=...&ssl_keyfile=..."
        notes+=" (client certificates: scripts/kafka.sh tls-client NAME)"
    fi
    if [[ -n "$SASL_USERS" ]]; then
        query+="&sasl_mechanism=SCRAM-SHA-512&sasl_username=USER"
        notes+=" (password: STREAMRL_KAFKA_PASSWORD; SCRAM-SHA-256 and PLAIN work too)"
    fi
    echo "kafka://127.0.0.1:$PORT$query$notes"
}

# -Xms small: the broker rarely needs its whole heap, and CI runs the tests on the same 2 cores.
# Exit on OOM: a dead broker fails tests clearly, a thrashing one makes them time out. Crash
# reports go to the data dir, not into whatever directory the script was started from.
JAVA_OPTS=(-Xmx"$HEAP" -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
    -XX:ErrorFile="$DATA/hs_err_pid%p.log" -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$DATA/log4j2.properties" -cp "$LIBS/*")

cmd_start() {
    if pid="$(broker_pid)"; then
        say "already running (pid $pid) on 127.0.0.1:$PORT"
        return 0
    fi
    if answers; then
        say "a broker not started from $DATA already answers on 127.0.0.1:$PORT; leaving it be"
        return 0
    fi
    installed || cmd_install
    check_java
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; the readiness check needs Python 3 (set PYTHON=...)"
    mkdir -p "$DATA"
    [[ -n "$TLS" ]] && tls_setup
    write_config
    # One log per run: the previous one is kept beside it for post-mortems.
    [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"
    if [[ ! -f "$DATA/kraft/meta.properties" ]]; then
        # A KRaft cluster id is 16 random bytes, base64url without padding. It may start with
        # "-", hence --cluster-id=ID (a separate argument would read as an option).
        local cluster_id
        cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
        local scram=()
        [[ -n "$SASL_USERS" ]] && mapfile -t scram < <(scram_args)
        java "${JAVA_OPTS[@]}" kafka.tools.StorageTool format --cluster-id="$cluster_id" -c "$DATA/server.properties" \
            "${scram[@]}" >"$DATA/format.log" 2>&1 || { cat "$DATA/format.log" >&2; die "formatting $DATA/kraft failed"; }
    fi
    local t0=$SECONDS
    # setsid + nohup: the broker must outlive this shell and ignore the terminal's hangup.
    # (setsid execs in place here, not being a group leader, so $! is the JVM's pid.)
    setsid nohup java "${JAVA_OPTS[@]}" kafka.Kafka "$DATA/server.properties" \
        </dev/null >>"$LOG_FILE" 2>&1 &
    echo $! >"$PID_FILE"
    echo "$VERSION" >"$DATA/broker.version"
    # Polls until the broker lists itself in metadata; gives up early if the JVM dies.
    while ! answers 1; do
        if ! broker_pid >/dev/null; then
            tail -n 40 "$LOG_FILE" >&2
            die "broker exited during start (log: $LOG_FILE)"
        fi
        if ((SECONDS - t0 >= START_TIMEOUT)); then
            tail -n 40 "$LOG_FILE" >&2
            die "broker not ready after ${START_TIMEOUT}s (still running as pid $(cat "$PID_FILE"); log: $LOG_FILE)"
        fi
    done
    say "started Kafka $VERSION (pid $(cat "$PID_FILE")) on 127.0.0.1:$PORT in $((SECONDS - t0))s; data in $DATA"
    [[ "$PROTOCOL" == PLAINTEXT ]] || say "clients: $(client_hint)"
}

cmd_stop() {
    local pid
    if ! pid="$(broker_pid)"; then
        say "not running"
        rm -f "$PID_FILE"
        return 0
    fi
    kill -TERM "$pid"
    local t0=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS - t0 >= STOP_TIMEOUT)); then
            say "no clean stop after ${STOP_TIMEOUT}s; killing pid $pid"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$PID_FILE"
    say "stopped (pid $pid)"
}

cmd_status() {
    local pid
    if pid="$(broker_pid)"; then
        if answers; then
            say "running (pid $pid) on 127.0.0.1:$PORT, Kafka $(cat "$DATA/broker.version" 2>/dev/null || echo '?'), data in $DATA"
            [[ "$PROTOCOL" == PLAINTEXT ]] || say "clients: $(client_hint)"
        else
            say "running (pid $pid) but not answering on 127.0.0.1:$PORT yet"
        fi
        return 0
    fi
    say "not running"
    return 3
}

cmd_logs() {
    [[ -f "$LOG_FILE" ]] || die "no broker log at $LOG_FILE"
    if [[ "${1:-}" == "-f" ]]; then
        exec tail -n 50 -f "$LOG_FILE"
    fi
    tail -n "${1:-50}" "$LOG_FILE"
}

cmd_acl() {
    [[ -n "$SASL_USERS" ]] || die "acl needs a SASL broker (STREAMRL_KAFKA_SASL_USERS)"
    broker_pid >/dev/null || die "no broker running from $DATA"
    java "${JAVA_OPTS[@]}" -Dlog4j2.configurationFile="$HERE/kafka/tools-log4j2.properties" \
        org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$PORT" \
        --command-config "$DATA/admin.properties" "$@"
}

cmd_wipe() {
    cmd_stop
    rm -rf "$DATA"
    say "wiped $DATA"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    logs) cmd_logs "${2:-50}" ;;
    wipe) cmd_wipe ;;
    acl) shift; cmd_acl "$@" ;;
    tls-client) cmd_tls_client "${2:-}" ;;
    cluster) cmd_cluster "${2:-3}" ;;
    cluster-status) cmd_cluster_status ;;
    cluster-stop) cmd_cluster_stop ;;
    cluster-node-start) cmd_cluster_node_start "${2:-}" ;;
    cluster-node-stop) cmd_cluster_node_stop "${2:-}" ;;
    cluster-wipe) cmd_cluster_wipe ;;
    *)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac

# shellcheck shell=bash
# The replicated loopback cluster of scripts/kafka.sh (sourced there; uses its helpers):
#
#   scripts/kafka.sh cluster [N]          start N KRaft nodes (broker + controller each) [3]
#   scripts/kafka.sh cluster-status       each node's state; exit 3 when none runs
#   scripts/kafka.sh cluster-stop         graceful stop of every node
#   scripts/kafka.sh cluster-node-start I start node I again (after a kill or a stop)
#   scripts/kafka.sh cluster-node-stop I  graceful stop of node I (e.g. a rolling restart)
#   scripts/kafka.sh cluster-wipe         stop and delete the cluster's data
#
# Node I (1-based) serves clients on 127.0.0.1:$((CLUSTER_PORT + I - 1)) and its controller on
# $((CLUSTER_CONTROLLER_PORT + I - 1)); its data, config, pid and log are in $CLUSTER_DATA/nodeI.
# Away from the single broker's 9092/9093 (never touched) and docker compose's 19092.
#
#   STREAMRL_KAFKA_CLUSTER_DATA             [$STREAMRL_CACHE/kafka-cluster]
#   STREAMRL_KAFKA_CLUSTER_PORT             node 1's client port [29092]
#   STREAMRL_KAFKA_CLUSTER_CONTROLLER_PORT  node 1's controller port [client port + 100]
#   STREAMRL_KAFKA_CLUSTER_HEAP             each JVM's max heap [512m]

CLUSTER_DATA="${STREAMRL_KAFKA_CLUSTER_DATA:-$CACHE/kafka-cluster}"
CLUSTER_PORT="${STREAMRL_KAFKA_CLUSTER_PORT:-29092}"
CLUSTER_CONTROLLER_PORT="${STREAMRL_KAFKA_CLUSTER_CONTROLLER_PORT:-$((CLUSTER_PORT + 100))}"
CLUSTER_HEAP="${STREAMRL_KAFKA_CLUSTER_HEAP:-512m}"
MAX_CLUSTER_SIZE=9

node_dir() { echo "$CLUSTER_DATA/node$1"; }
node_port() { echo $((CLUSTER_PORT + $1 - 1)); }
node_controller_port() { echo $((CLUSTER_CONTROLLER_PORT + $1 - 1)); }

cluster_size() {
    [[ -f "$CLUSTER_DATA/size" ]] || die "no cluster in $CLUSTER_DATA (start one: scripts/kafka.sh cluster 3)"
    cat "$CLUSTER_DATA/size"
}

cluster_bootstrap() {
    local n="$1" i hosts=()
    for ((i = 1; i <= n; i++)); do hosts+=("127.0.0.1:$(node_port "$i")"); done
    (IFS=,; echo "${hosts[*]}")
}

# The pid of node I's JVM, if alive and ours (pids get reused).
node_pid() {
    local pid_file pid
    pid_file="$(node_dir "$1")/broker.pid"
    [[ -f "$pid_file" ]] || return 1
    pid="$(cat "$pid_file")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' \
        && echo "$pid"
}

node_java_opts() {
    local dir
    dir="$(node_dir "$1")"
    NODE_JAVA_OPTS=(-Xmx"$CLUSTER_HEAP" -Xms64m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:+ExitOnOutOfMemoryError -XX:ErrorFile="$dir/hs_err_pid%p.log" -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$LIBS/*")
}

node_write_config() {
    local i="$1" n="$2" dir voters="" j rf min_isr
    dir="$(node_dir "$i")"
    for ((j = 1; j <= n; j++)); do voters+="${voters:+,}$j@127.0.0.1:$(node_controller_port "$j")"; done
    rf=$((n < 3 ? n : 3))
    min_isr=$((rf < 2 ? rf : 2))
    mkdir -p "$dir"
    sed -e "s#@NODE_ID@#$i#g" -e "s#@VOTERS@#$voters#g" -e "s#@PORT@#$(node_port "$i")#g" \
        -e "s#@CONTROLLER_PORT@#$(node_controller_port "$i")#g" -e "s#@DATA@#$dir#g" \
        -e "s#@RF@#$rf#g" -e "s#@MIN_ISR@#$min_isr#g" \
        "$HERE/kafka/cluster.properties" >"$dir/server.properties"
    cp "$HERE/kafka/log4j2.properties" "$dir/log4j2.properties"
}

# Launch node I's JVM in the background (configured and formatted already); no waiting.
node_launch() {
    local i="$1" dir
    dir="$(node_dir "$i")"
    if node_pid "$i" >/dev/null; then return 0; fi
    if "$PYTHON" "$HERE/kafka/ready.py" 127.0.0.1 "$(node_port "$i")" 0 2>/dev/null; then
        die "something not started from $dir already answers on 127.0.0.1:$(node_port "$i") (set STREAMRL_KAFKA_CLUSTER_PORT)"
    fi
    node_java_opts "$i"
    [[ -f "$dir/broker.log" ]] && mv -f "$dir/broker.log" "$dir/broker.log.1"
    setsid nohup java "${NODE_JAVA_OPTS[@]}" kafka.Kafka "$dir/server.properties" \
        </dev/null >>"$dir/broker.log" 2>&1 &
    echo $! >"$dir/broker.pid"
}

# Wait until node I serves metadata listing at least MIN brokers.
node_wait() {
    local i="$1" min="$2" t0=$SECONDS dir
    dir="$(node_dir "$i")"
    while ! "$PYTHON" "$HERE/kafka/ready.py" 127.0.0.1 "$(node_port "$i")" 1 "$min"; do
        if ! node_pid "$i" >/dev/null; then
            tail -n 40 "$dir/broker.log" >&2
            die "node $i exited during start (log: $dir/broker.log)"
        fi
        if ((SECONDS - t0 >= START_TIMEOUT)); then
            tail -n 40 "$dir/broker.log" >&2
            die "node $i not ready after ${START_TIMEOUT}s (log: $dir/broker.log)"
        fi
    done
}

cmd_cluster() {
    local n="${1:-3}" i cluster_id t0=$SECONDS
    [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= MAX_CLUSTER_SIZE)) \
        || die "cluster size is 1..$MAX_CLUSTER_SIZE, got '$n'"
    if [[ -f "$CLUSTER_DATA/size" && "$(cat "$CLUSTER_DATA/size")" != "$n" ]]; then
        die "$CLUSTER_DATA holds a cluster of $(cat "$CLUSTER_DATA/size") nodes; stop and wipe it (scripts/kafka.sh cluster-wipe) or set STREAMRL_KAFKA_CLUSTER_DATA"
    fi
    installed || cmd_install
    check_java
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; the readiness check needs Python 3 (set PYTHON=...)"
    mkdir -p "$CLUSTER_DATA"
    echo "$n" >"$CLUSTER_DATA/size"
    [[ -f "$CLUSTER_DATA/cluster.id" ]] \
        || head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' >"$CLUSTER_DATA/cluster.id"
    cluster_id="$(cat "$CLUSTER_DATA/cluster.id")"
    local formats=()
    for ((i = 1; i <= n; i++)); do
        node_write_config "$i" "$n"
        [[ -f "$(node_dir "$i")/kraft/meta.properties" ]] && continue
        node_java_opts "$i"
        # Every node formatted with the same cluster id (--cluster-id=ID: it may start with
        # "-"); in parallel, each is a JVM start.
        java "${NODE_JAVA_OPTS[@]}" kafka.tools.StorageTool format --cluster-id="$cluster_id" \
            -c "$(node_dir "$i")/server.properties" >"$(node_dir "$i")/format.log" 2>&1 &
        formats+=("$i:$!")
    done
    local f
    for f in "${formats[@]}"; do
        wait "${f#*:}" || { cat "$(node_dir "${f%%:*}")/format.log" >&2; die "formatting node ${f%%:*} failed"; }
    done
    # All at once: a KRaft quorum elects a controller only once a majority of voters runs.
    for ((i = 1; i <= n; i++)); do node_launch "$i"; done
    for ((i = 1; i <= n; i++)); do node_wait "$i" "$n"; done
    echo "$VERSION" >"$CLUSTER_DATA/broker.version"
    say "cluster of $n started in $((SECONDS - t0))s (Kafka $VERSION, data in $CLUSTER_DATA)"
    say "clients: kafka://$(cluster_bootstrap "$n")"
}

cmd_cluster_node_start() {
    local i="$1" n t0=$SECONDS
    n="$(cluster_size)"
    [[ "$i" =~ ^[0-9]+$ ]] && ((i >= 1 && i <= n)) || die "node is 1..$n, got '$i'"
    node_launch "$i"
    node_wait "$i" 1
    say "node $i (pid $(node_pid "$i")) started on 127.0.0.1:$(node_port "$i") in $((SECONDS - t0))s"
}

cmd_cluster_node_stop() {
    local i="$1" n pid t0=$SECONDS
    n="$(cluster_size)"
    [[ "$i" =~ ^[0-9]+$ ]] && ((i >= 1 && i <= n)) || die "node is 1..$n, got '$i'"
    if ! pid="$(node_pid "$i")"; then
        say "node $i not running"
        return 0
    fi
    # SIGTERM is a controlled shutdown: the node hands its partition leadership to others first.
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS - t0 >= STOP_TIMEOUT)); then
            say "node $i: no clean stop after ${STOP_TIMEOUT}s; killing pid $pid"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$(node_dir "$i")/broker.pid"
    say "node $i stopped (pid $pid)"
}

cmd_cluster_stop() {
    local n i pid pids=()
    [[ -f "$CLUSTER_DATA/size" ]] || { say "no cluster in $CLUSTER_DATA"; return 0; }
    n="$(cluster_size)"
    # In parallel: stopped one by one, the last nodes would wait for a quorum that is gone.
    for ((i = 1; i <= n; i++)); do cmd_cluster_node_stop "$i" & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid" || true; done
}

cmd_cluster_status() {
    local n i pid running=0
    [[ -f "$CLUSTER_DATA/size" ]] || { say "no cluster in $CLUSTER_DATA"; return 3; }
    n="$(cluster_size)"
    for ((i = 1; i <= n; i++)); do
        if pid="$(node_pid "$i")"; then
            running=$((running + 1))
            if "$PYTHON" "$HERE/kafka/ready.py" 127.0.0.1 "$(node_port "$i")" 0; then
                say "node $i running (pid $pid) on 127.0.0.1:$(node_port "$i")"
            else
                say "node $i running (pid $pid) but not answering on 127.0.0.1:$(node_port "$i")"
            fi
        else
            say "node $i not running"
        fi
    done
    say "$running of $n nodes running; clients: kafka://$(cluster_bootstrap "$n")"
    ((running > 0)) || return 3
}

cmd_cluster_wipe() {
    cmd_cluster_stop
    rm -rf "$CLUSTER_DATA"
    say "wiped $CLUSTER_DATA"
}
